#!/usr/bin/env python3
"""REST serving benchmark (issue 2): in-process ONNX Runtime vs shipyard vs Seldon MLServer 1.7.

Every server serves the same .onnx file with an ONNX Runtime session of the same settings
(CPU provider, 2 intra-op threads, 1 inter-op thread, all graph optimizations) and gets the same
KServe V2 JSON body (`POST /v2/models/{name}/infer`). One client process (asyncio + httpx,
keep-alive, one AsyncClient) drives each cell for a fixed duration at a fixed concurrency.

Models (built into bench/.work/ on first use):
  digits      the shipyard demo CNN (`shipyard demo --no-serve`), input pixels FP32 [-1,1,8,8]
  bert-small  BertForSequenceClassification, random weights, 4 layers, hidden 256, seq 128
  bert-base   BertForSequenceClassification, random weights, 12 layers, hidden 768, seq 128

Cells per model: in-process batch 1 and batch 16 (the ceiling), shipyard batching off/on, MLServer
adaptive batching off/on, each server at every concurrency in --concurrency.

The client shares the machine with the server (2 cores here): its CPU use is reported per cell.

Usage:
  .venv/bin/python bench/serve_rest.py                       # full run, 30 s per cell
  .venv/bin/python bench/serve_rest.py --duration 2          # smoke run
  .venv/bin/python bench/serve_rest.py --models bert-small --skip-mlserver
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# httpcore runs `import sniffio` on every request (4 times) and falls back to asyncio when it is
# missing; anyio 4.16 no longer installs sniffio, so each of those failing imports scans sys.path
# (~0.2 ms each here). A None entry makes the import fail at once; installed sniffio is left alone.
try:
    import sniffio  # noqa: F401
except ImportError:
    sys.modules["sniffio"] = None  # type: ignore[assignment]

import httpx  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
RUNTIME_DIR = BENCH / "mlserver_runtime"
DEFAULT_WORK = BENCH / ".work"
DEFAULT_RESULTS = BENCH / "results"
MLSERVER_VENV = BENCH / ".venv-mlserver"
MLSERVER_PACKAGES = ["mlserver==1.7.1", "onnxruntime", "uvloop==0.21.0"]  # uvloop 0.21: MLServer #2286

MODEL_NAMES = ["digits", "bert-small", "bert-base"]
BERT_CONFIGS = {
    "bert-small": dict(num_hidden_layers=4, hidden_size=256, num_attention_heads=4, intermediate_size=1024),
    "bert-base": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072),
}
SEQ_LEN = 128
VOCAB = 30522
CEILING_BATCH = 16
DISTURBED_PCT = 25.0  # other work above this CPU % (100 = one core) during a cell marks it disturbed

V2_DATATYPES = {"tensor(float)": ("FP32", np.float32), "tensor(int64)": ("INT64", np.int64),
                "tensor(int32)": ("INT32", np.int32), "tensor(double)": ("FP64", np.float64)}


def log(msg: str) -> None:
    print(f"[serve_rest {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------------------------
# Model building
# ------------------------------------------------------------------------------------------------


def shipyard_bin() -> str:
    for candidate in (ROOT / ".venv" / "bin" / "shipyard", Path(sys.executable).parent / "shipyard"):
        if candidate.exists():
            return str(candidate)
    found = shutil.which("shipyard")
    if not found:
        raise SystemExit("the `shipyard` command was not found (run `make setup`)")
    return found


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run_checked(cmd: list[str], what: str, **kw: Any) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n"
            f"--- stdout ---\n{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-3000:]}"
        )
    return proc


def build_digits(work: Path, rebuild: bool) -> tuple[Path, dict[str, Any]]:
    demo_repo = work / "repo"
    onnx_path = demo_repo / "digits" / "2" / "model.onnx"
    if rebuild or not onnx_path.exists():
        if demo_repo.exists():
            shutil.rmtree(demo_repo)
        log("building digits with `shipyard demo --no-serve` ...")
        run_checked([shipyard_bin(), "demo", "--no-serve", "--repository", str(demo_repo)], "shipyard demo")
    if not onnx_path.exists():
        raise RuntimeError(f"`shipyard demo` did not publish {onnx_path}")
    manifest = json.loads((onnx_path.parent / "manifest.json").read_text())
    return onnx_path, {"source": "shipyard demo --no-serve (digits version 2, ONNX)",
                       "signature": manifest.get("signature")}


def build_bert(work: Path, name: str, rebuild: bool) -> tuple[Path, dict[str, Any]]:
    out = work / "models" / f"{name}.onnx"
    info_path = out.with_suffix(".json")
    if rebuild or not out.exists() or not info_path.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        log(f"exporting {name} to ONNX (random weights, torch.onnx.export dynamo=False) ...")
        # A child process keeps torch out of the load generator's process.
        run_checked([sys.executable, __file__, "--_export-bert", name, str(out)], f"export {name}")
    return out, json.loads(info_path.read_text())


def export_bert(name: str, out: Path) -> None:
    """Child-process entry: export, then check ONNX Runtime against torch at batch 1 and 4."""
    import onnxruntime as ort
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=VOCAB, num_labels=2, max_position_embeddings=512,
                     attn_implementation="eager", **BERT_CONFIGS[name])
    model = BertForSequenceClassification(cfg).eval()

    class Logits(torch.nn.Module):
        def __init__(self, m: torch.nn.Module) -> None:
            super().__init__()
            self.m = m

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.m(input_ids=input_ids, attention_mask=attention_mask).logits

    wrapped = Logits(model).eval()
    ids = torch.randint(1000, VOCAB, (2, SEQ_LEN))
    tmp = out.with_suffix(".tmp.onnx")
    t0 = time.perf_counter()
    with torch.no_grad():
        torch.onnx.export(
            wrapped, (ids, torch.ones_like(ids)), str(tmp),
            input_names=["input_ids", "attention_mask"], output_names=["logits"],
            dynamic_axes={"input_ids": {0: "batch"}, "attention_mask": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17, dynamo=False,
        )
    export_s = time.perf_counter() - t0
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(tmp), so, providers=["CPUExecutionProvider"])
    diffs = {}
    for batch in (1, 4):
        ids = torch.randint(1000, VOCAB, (batch, SEQ_LEN))
        mask = torch.ones_like(ids)
        mask[:, SEQ_LEN - 20:] = 0  # some padding, so the mask path is exercised
        with torch.no_grad():
            ref = wrapped(ids, mask).numpy()
        got = sess.run(["logits"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
        diffs[str(batch)] = float(np.abs(ref - got).max())
    worst = max(diffs.values())
    if worst > 1e-4:
        raise SystemExit(f"{name}: ONNX Runtime differs from torch by {worst:g} (max abs), export is wrong")
    del sess
    os.replace(tmp, out)
    info = {
        "source": "transformers BertForSequenceClassification, random weights (seed 0), "
                  "torch.onnx.export(dynamo=False, opset 17), dynamic batch axis",
        "config": {**BERT_CONFIGS[name], "seq_len": SEQ_LEN, "vocab_size": VOCAB, "num_labels": 2},
        "parameters": sum(p.numel() for p in model.parameters()),
        "parity_max_abs_diff_vs_torch": diffs,
        "export_s": round(export_s, 1),
        "transformers": importlib.metadata.version("transformers"),
    }
    out.with_suffix(".json").write_text(json.dumps(info, indent=2))
    print(json.dumps(info))


def publish_for_shipyard(serve_repo: Path, name: str, onnx_path: Path) -> None:
    """Every model is version 1 of NAME in one serving repository (imported from the same file)."""
    marker = serve_repo / f".{name}.source-sha256"
    digest = sha256(onnx_path)
    if (serve_repo / name).exists() and marker.exists() and marker.read_text() == digest:
        return
    if (serve_repo / name).exists():
        shutil.rmtree(serve_repo / name)
    serve_repo.mkdir(parents=True, exist_ok=True)
    log(f"shipyard models import {onnx_path.name} --name {name}")
    run_checked([shipyard_bin(), "models", "import", str(onnx_path), "--name", name,
                 "--repository", str(serve_repo)], f"shipyard models import {name}")
    marker.write_text(digest)


# ------------------------------------------------------------------------------------------------
# Payloads and the in-process ceiling
# ------------------------------------------------------------------------------------------------


def ort_session(onnx_path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])


def make_inputs(sess: Any, batch: int, seed: int) -> dict[str, tuple[str, np.ndarray]]:
    """{input name: (V2 datatype, array)} with leading dimension `batch`."""
    rng = np.random.default_rng(seed)
    out = {}
    for inp in sess.get_inputs():
        datatype, dtype = V2_DATATYPES[inp.type]
        dims = [d if isinstance(d, int) and d > 0 else None for d in inp.shape]
        shape = [batch] + [d if d is not None else SEQ_LEN for d in dims[1:]]
        if dtype == np.float32:
            # Multiples of 1/16: short, exact decimal text in JSON (the digits data set is 0..16).
            arr = (rng.integers(0, 17, size=shape) / 16.0).astype(np.float32)
        elif inp.name == "attention_mask":
            arr = np.ones(shape, dtype=dtype)
        elif inp.name == "token_type_ids":
            arr = np.zeros(shape, dtype=dtype)
        else:
            arr = rng.integers(1000, VOCAB, size=shape).astype(dtype)
        out[inp.name] = (datatype, arr)
    return out


def v2_body(inputs: dict[str, tuple[str, np.ndarray]]) -> bytes:
    return json.dumps(
        {"inputs": [{"name": n, "shape": list(a.shape), "datatype": dt, "data": a.ravel().tolist()}
                    for n, (dt, a) in inputs.items()]},
        separators=(",", ":"),
    ).encode()


def pct(lat_s: list[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(lat_s), q) * 1000.0) if lat_s else None


@dataclass
class Row:
    model: str
    system: str          # "in-process", "shipyard", "mlserver"
    config: str          # "batch 1", "batching off", ...
    concurrency: int
    duration_s: float
    requests: int
    errors: int
    rps: float | None
    p50_ms: float | None
    p99_ms: float | None
    settings: str = ""   # the exact server settings behind `config`
    mean_ms: float | None = None
    batch_sizes: dict[str, int] | None = None
    mean_batch: float | None = None
    client_cpu_pct: float | None = None
    server_cpu_pct: float | None = None
    other_cpu_pct: float | None = None   # everything else on the machine during the cell (noise)
    check: str = ""
    error_samples: list[str] = field(default_factory=list)
    note: str = ""


def run_inprocess(model: str, onnx_path: Path, threads: int, warmup: float, duration: float) -> list[Row]:
    sess = ort_session(onnx_path, threads)
    outputs = [o.name for o in sess.get_outputs()]
    rows = []
    for batch in (1, CEILING_BATCH):
        feed = {n: a for n, (_, a) in make_inputs(sess, batch, seed=1).items()}
        end = time.perf_counter() + warmup
        while time.perf_counter() < end:
            sess.run(outputs, feed)
        lat: list[float] = []
        cpu0, busy0 = time.process_time(), machine_busy_s()
        start = time.perf_counter()
        deadline = start + duration
        while True:
            t0 = time.perf_counter()
            if t0 >= deadline and len(lat) >= 3:
                break
            sess.run(outputs, feed)
            lat.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - start
        cpu, busy = time.process_time() - cpu0, machine_busy_s() - busy0
        rows.append(Row(
            model=model, system="in-process", config=f"batch {batch}", concurrency=1,
            duration_s=round(elapsed, 2), requests=len(lat) * batch, errors=0,
            rps=len(lat) * batch / elapsed, p50_ms=pct(lat, 50), p99_ms=pct(lat, 99),
            mean_ms=float(np.mean(lat) * 1000), server_cpu_pct=100.0 * cpu / elapsed,
            other_cpu_pct=100.0 * (busy - cpu) / elapsed, settings=f"ORT session, {threads} intra-op threads",
            note="latency is per session.run call" + (f" of {batch} rows" if batch > 1 else ""),
        ))
    return rows


# ------------------------------------------------------------------------------------------------
# Server processes
# ------------------------------------------------------------------------------------------------

_LIVE: list[ServerProcess] = []
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def group_cpu_s(pgid: int) -> float:
    """CPU seconds (user + system) of the live processes in a process group."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def machine_busy_s() -> float:
    """CPU seconds the whole machine has spent busy (all cores), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            vals = [int(x) for x in f.readline().split()[1:9]]
    except OSError:
        return float("nan")
    user, nice, system, idle, iowait, irq, softirq, steal = vals
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


class ServerProcess:
    """A server we start in its own session (so its group holds only our process and its
    children); stopped with SIGTERM to its PID, then SIGKILL to that group after a timeout."""

    def __init__(self, label: str, cmd: list[str], log_path: Path, cwd: Path | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.label = label
        self.cmd = cmd
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=cwd,
                                     env=env, start_new_session=True)
        self.pgid = self.proc.pid
        self.exit_code: int | None = None
        self.stop_note = ""
        _LIVE.append(self)

    def log_tail(self, chars: int = 2500) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def wait_ready(self, urls: list[str], timeout: float) -> float:
        start = time.perf_counter()
        with httpx.Client(timeout=2.0) as client:
            pending = list(urls)
            while pending:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.label} exited with code {self.proc.returncode} before it was "
                                       f"ready; log tail:\n{self.log_tail()}")
                if time.perf_counter() - start > timeout:
                    raise RuntimeError(f"{self.label} not ready after {timeout:.0f} s ({pending[0]}); "
                                       f"log tail:\n{self.log_tail()}")
                try:
                    if client.get(pending[0]).status_code == 200:
                        pending.pop(0)
                        continue
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
        return time.perf_counter() - start

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.stop_note = f"did not exit {timeout:.0f} s after SIGTERM; killed"
                os.killpg(self.pgid, signal.SIGKILL)
                self.proc.wait(5)
        self.exit_code = self.proc.returncode
        # Children it left behind (e.g. MLServer inference workers) are still in our group.
        if group_alive(self.pgid):
            os.killpg(self.pgid, signal.SIGTERM)
            end = time.time() + 5
            while group_alive(self.pgid) and time.time() < end:
                time.sleep(0.1)
            if group_alive(self.pgid):
                os.killpg(self.pgid, signal.SIGKILL)
            self.stop_note = (self.stop_note + "; " if self.stop_note else "") + "left children behind"
        self._log.close()
        if self in _LIVE:
            _LIVE.remove(self)


@atexit.register
def _stop_all() -> None:
    for server in list(_LIVE):
        try:
            server.stop(timeout=10)
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


# ------------------------------------------------------------------------------------------------
# Load generator
# ------------------------------------------------------------------------------------------------


@dataclass
class Phase:
    latencies: list[float]
    errors: Counter
    elapsed: float
    client_cpu_s: float


async def load_phase(clients: list[httpx.AsyncClient], url: str, body: bytes, concurrency: int,
                     seconds: float) -> Phase:
    latencies: list[float] = []
    errors: Counter = Counter()
    start = time.perf_counter()
    deadline = start + seconds

    async def worker(client: httpx.AsyncClient) -> None:
        while True:
            t0 = time.perf_counter()
            if t0 >= deadline:
                return
            try:
                r = await client.post(url, content=body)
                t1 = time.perf_counter()
                if r.status_code == 200:
                    latencies.append(t1 - t0)
                else:
                    errors[f"HTTP {r.status_code}: {r.text[:300]}"] += 1
            except httpx.HTTPError as e:
                errors[f"{type(e).__name__}: {e}"[:300]] += 1
                await asyncio.sleep(0.01)

    cpu0 = time.process_time()
    await asyncio.gather(*(worker(clients[i % len(clients)]) for i in range(concurrency)))
    return Phase(latencies, errors, time.perf_counter() - start, time.process_time() - cpu0)


def check_response(payload: dict[str, Any], output: str, ref: np.ndarray) -> str:
    outs = {o.get("name"): o for o in payload.get("outputs", [])}
    if output not in outs:
        return f"mismatch: no output '{output}' in response (got {sorted(map(str, outs))})"
    o = outs[output]
    got = np.asarray(o.get("data", []), dtype=np.float64).reshape(-1)
    want = ref.astype(np.float64).reshape(-1)
    if list(o.get("shape", [])) != list(ref.shape):
        return f"mismatch: shape {o.get('shape')} != {list(ref.shape)}"
    if got.shape != want.shape or not np.allclose(got, want, rtol=1e-3, atol=1e-4):
        return f"mismatch: max abs diff {np.abs(got - want).max() if got.shape == want.shape else 'n/a'}"
    return "ok"


def diff_hist(after: dict[str, int] | None, before: dict[str, int] | None) -> dict[str, int] | None:
    if after is None:
        return None
    before = before or {}
    d = {k: int(v) - int(before.get(k, 0)) for k, v in after.items()}
    return {k: v for k, v in sorted(d.items(), key=lambda kv: int(kv[0])) if v > 0}


def mean_batch(hist: dict[str, int] | None) -> float | None:
    if not hist:
        return None
    n = sum(hist.values())
    return sum(int(k) * v for k, v in hist.items()) / n if n else None


async def run_cell(
    *, model: str, system: str, config: str, url: str, body: bytes, output: str, ref: np.ndarray,
    concurrency: int, warmup: float, duration: float, server: ServerProcess,
    batch_stats: Callable[[httpx.AsyncClient], Awaitable[dict[str, int] | None]], client_mode: str,
) -> Row:
    headers = {"content-type": "application/json"}
    n_clients, per_client = (concurrency, 1) if client_mode == "per-worker" else (1, concurrency)
    limits = httpx.Limits(max_connections=per_client, max_keepalive_connections=per_client)
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(httpx.AsyncClient(limits=limits, timeout=60.0, headers=headers))
                   for _ in range(n_clients)]
        client = clients[0]
        check = "not checked"
        try:
            r = await client.post(url, content=body)
            check = check_response(r.json(), output, ref) if r.status_code == 200 else \
                f"HTTP {r.status_code}: {r.text[:300]}"
        except Exception as e:  # noqa: BLE001 - reported in the row
            check = f"{type(e).__name__}: {e}"[:300]
        if warmup > 0:
            await load_phase(clients, url, body, concurrency, warmup)
        stats0 = await batch_stats(client)
        cpu0, busy0 = group_cpu_s(server.pgid), machine_busy_s()
        ph = await load_phase(clients, url, body, concurrency, duration)
        server_cpu, busy = group_cpu_s(server.pgid) - cpu0, machine_busy_s() - busy0
        stats1 = await batch_stats(client)
    hist = diff_hist(stats1, stats0)
    n_err = sum(ph.errors.values())
    return Row(
        model=model, system=system, config=config, concurrency=concurrency,
        duration_s=round(ph.elapsed, 2), requests=len(ph.latencies), errors=n_err,
        rps=len(ph.latencies) / ph.elapsed if ph.elapsed else None,
        p50_ms=pct(ph.latencies, 50), p99_ms=pct(ph.latencies, 99),
        mean_ms=float(np.mean(ph.latencies) * 1000) if ph.latencies else None,
        batch_sizes=hist, mean_batch=mean_batch(hist),
        client_cpu_pct=100.0 * ph.client_cpu_s / ph.elapsed,
        server_cpu_pct=100.0 * server_cpu / ph.elapsed,
        other_cpu_pct=100.0 * (busy - server_cpu - ph.client_cpu_s) / ph.elapsed,
        check=check,
        error_samples=[f"{count}x {text}" for text, count in ph.errors.most_common(3)],
    )


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


def run_async(coro: Awaitable[Any]) -> Any:
    with asyncio.Runner(loop_factory=new_loop) as runner:
        return runner.run(coro)


# ------------------------------------------------------------------------------------------------
# shipyard and MLServer cells
# ------------------------------------------------------------------------------------------------


def _hist_from_stats(payload: Any) -> dict[str, int] | None:
    """`batch_sizes` at the top level, or summed over `model_stats[*].batch_sizes`."""
    if not isinstance(payload, dict):
        return None
    if isinstance(payload.get("batch_sizes"), dict):
        return {str(k): int(v) for k, v in payload["batch_sizes"].items()}
    entries = payload.get("model_stats")
    if isinstance(entries, list):
        total: Counter = Counter()
        found = False
        for e in entries:
            if isinstance(e, dict) and isinstance(e.get("batch_sizes"), dict):
                found = True
                for k, v in e["batch_sizes"].items():
                    total[str(k)] += int(v)
        return dict(total) if found else None
    return None


@dataclass
class Ctx:
    args: argparse.Namespace
    work: Path
    issues: list[str]


def serve_cells(ctx: Ctx, system: str, config: str, server: ServerProcess, base: str, model: str,
                body: bytes, output: str, ref: np.ndarray,
                batch_stats: Callable[[httpx.AsyncClient], Awaitable[dict[str, int] | None]]) -> list[Row]:
    rows = []
    for c in ctx.args.concurrency:
        log(f"  {system} {config} c={c} ...")
        row = run_async(run_cell(
            model=model, system=system, config=config, url=f"{base}/v2/models/{model}/infer", body=body,
            output=output, ref=ref, concurrency=c, warmup=ctx.args.warmup, duration=ctx.args.duration,
            server=server, batch_stats=batch_stats, client_mode=ctx.args.client,
        ))
        if row.check != "ok":
            ctx.issues.append(f"{model} {system} {config} c={c}: response check: {row.check}")
        if row.errors:
            ctx.issues.append(f"{model} {system} {config} c={c}: {row.errors} errors, e.g. {row.error_samples[0]}")
        rows.append(row)
    return rows


def failed_rows(ctx: Ctx, model: str, system: str, config: str, err: Exception) -> list[Row]:
    text = str(err)
    ctx.issues.append(f"{model} {system} {config}: {text}")
    log(f"  FAILED: {text.splitlines()[0] if text else type(err).__name__}")
    return [Row(model=model, system=system, config=config, concurrency=c, duration_s=0, requests=0, errors=0,
                rps=None, p50_ms=None, p99_ms=None, check="failed", error_samples=[text[:500]])
            for c in ctx.args.concurrency]


def shipyard_rows(ctx: Ctx, model: str, serve_repo: Path, body: bytes, output: str, ref: np.ndarray) -> list[Row]:
    a = ctx.args
    rows = []
    for config, mbs in (("batching off", 1), ("batching on", a.shipyard_batch)):
        label = f"--max-batch-size {mbs} --max-queue-delay-us {a.shipyard_delay_us} --threads {a.threads}"
        port = free_port()
        cmd = [shipyard_bin(), "serve", "--repository", str(serve_repo), "--host", "127.0.0.1",
               "--port", str(port), "--models", model, "--max-batch-size", str(mbs),
               "--max-queue-delay-us", str(a.shipyard_delay_us), "--threads", str(a.threads)]
        base = f"http://127.0.0.1:{port}"
        server = None
        try:
            server = ServerProcess(f"shipyard {model} {config}", cmd,
                                   ctx.work / "logs" / f"shipyard-{model}-{config.replace(' ', '-')}.log")
            ready_s = server.wait_ready([f"{base}/v2/health/ready", f"{base}/v2/models/{model}/ready"],
                                        a.ready_timeout)
            log(f"shipyard {model} {config} ready in {ready_s:.1f} s (pid {server.proc.pid}, port {port})")

            async def stats(client: httpx.AsyncClient) -> dict[str, int] | None:
                try:
                    r = await client.get(f"{base}/v2/models/{model}/stats")
                    return _hist_from_stats(r.json()) if r.status_code == 200 else None
                except (httpx.HTTPError, ValueError):
                    return None

            rows += [_with_settings(r, label) for r in
                     serve_cells(ctx, "shipyard", config, server, base, model, body, output, ref, stats)]
        except Exception as e:  # noqa: BLE001 - one failed server must not stop the others
            rows += [_with_settings(r, label) for r in failed_rows(ctx, model, "shipyard", config, e)]
        finally:
            if server is not None:
                server.stop()
                if server.exit_code not in (0, None) or server.stop_note:
                    ctx.issues.append(f"shipyard {model} {config}: exit code {server.exit_code} after SIGTERM "
                                      f"{server.stop_note}; log tail: {server.log_tail(800)!r}")
    return rows


def _with_settings(row: Row, settings: str) -> Row:
    row.settings = settings
    return row


def ensure_mlserver_venv() -> dict[str, str]:
    py = MLSERVER_VENV / "bin" / "python"
    if not (MLSERVER_VENV / "bin" / "mlserver").exists():
        log(f"creating {MLSERVER_VENV.relative_to(ROOT)} and installing {' '.join(MLSERVER_PACKAGES)} ...")
        base_python = shutil.which("python3") or sys.executable
        run_checked([base_python, "-m", "venv", str(MLSERVER_VENV)], "python3 -m venv")
        run_checked([str(py), "-m", "pip", "install", "--quiet", *MLSERVER_PACKAGES], "pip install mlserver")
    probe = run_checked([str(py), "-c", "import json, mlserver, onnxruntime, uvloop; print(json.dumps("
                         "{'mlserver': mlserver.__version__, 'onnxruntime': onnxruntime.__version__, "
                         "'uvloop': uvloop.__version__}))"], "MLServer venv check")
    versions = json.loads(probe.stdout.strip().splitlines()[-1])
    if versions["uvloop"] != "0.21.0":
        log(f"warning: MLServer venv has uvloop {versions['uvloop']}; MLServer 1.7.1 workers need 0.21.0")
    return versions


def mlserver_rows(ctx: Ctx, model: str, onnx_path: Path, body: bytes, output: str, ref: np.ndarray) -> list[Row]:
    a = ctx.args
    rows = []
    configs = (("batching off", 0, 0.0), ("batching on", a.mlserver_batch, a.mlserver_batch_time))
    for config, mbs, mbt in configs:
        label = (f"max_batch_size {mbs}, max_batch_time {mbt:g} s" if mbs > 1 else "max_batch_size 0") + \
            f", parallel_workers {a.mlserver_workers}, ORT {'inline' if a.mlserver_inline else 'on 1 thread'}" + \
            (", ORT spinning off" if a.mlserver_no_spin else "")
        folder = ctx.work / "mlserver" / f"{model}-{config.replace(' ', '-')}"
        if folder.exists():
            shutil.rmtree(folder)
        (folder / model).mkdir(parents=True)
        stats_path = folder / "batch_stats.json"
        http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
        settings = {
            "debug": False, "host": "127.0.0.1", "http_port": http_port, "grpc_port": grpc_port,
            "metrics_port": metrics_port, "parallel_workers": a.mlserver_workers,
            "model_repository_root": str(folder), "load_models_at_startup": True,
        }
        model_settings = {
            "name": model,
            "implementation": "shipyard_bench_runtime.OnnxRuntimeModel",
            "max_batch_size": mbs, "max_batch_time": mbt,
            "parameters": {"uri": str(onnx_path), "extra": {
                "intra_op_threads": a.threads, "offload": not a.mlserver_inline, "stats_path": str(stats_path),
                **({"allow_spinning": False} if a.mlserver_no_spin else {})}},
        }
        (folder / "settings.json").write_text(json.dumps(settings, indent=2))
        (folder / model / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
        env["PYTHONPATH"] = str(RUNTIME_DIR)
        env["PATH"] = f"{MLSERVER_VENV / 'bin'}:{env.get('PATH', '')}"
        base = f"http://127.0.0.1:{http_port}"
        server = None
        try:
            server = ServerProcess(f"mlserver {model} {config}",
                                   [str(MLSERVER_VENV / "bin" / "mlserver"), "start", str(folder)],
                                   ctx.work / "logs" / f"mlserver-{model}-{config.replace(' ', '-')}.log",
                                   cwd=folder, env=env)
            ready_s = server.wait_ready([f"{base}/v2/health/ready", f"{base}/v2/models/{model}/ready"],
                                        a.ready_timeout)
            log(f"mlserver {model} {config} ready in {ready_s:.1f} s (pid {server.proc.pid}, port {http_port})")

            async def stats(client: httpx.AsyncClient) -> dict[str, int] | None:
                await asyncio.sleep(0.4)  # the runtime flushes its counts every 0.25 s
                try:
                    return _hist_from_stats(json.loads(stats_path.read_text()))
                except (OSError, ValueError):
                    return {}

            rows += [_with_settings(r, label) for r in
                     serve_cells(ctx, "mlserver", config, server, base, model, body, output, ref, stats)]
        except Exception as e:  # noqa: BLE001
            rows += [_with_settings(r, label) for r in failed_rows(ctx, model, "mlserver", config, e)]
        finally:
            if server is not None:
                server.stop()
    return rows


# ------------------------------------------------------------------------------------------------
# Targets and reports
# ------------------------------------------------------------------------------------------------


def _find(rows: list[Row], model: str, system: str, config_prefix: str, c: int | None) -> Row | None:
    for r in rows:
        if r.model == model and r.system == system and r.config.startswith(config_prefix) and \
                (c is None or r.concurrency == c) and r.rps is not None:
            return r
    return None


def _best(rows: list[Row], model: str, system: str, c: int) -> Row | None:
    cands = [r for r in rows if r.model == model and r.system == system and r.concurrency == c and r.rps]
    return max(cands, key=lambda r: r.rps) if cands else None


def _fmt(x: float | None, nd: int = 1) -> str:
    return "-" if x is None else f"{x:,.{nd}f}"


def targets(rows: list[Row], models: list[str], hi_c: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def add(name: str, ok: bool | None, detail: str, *used: Row | None) -> None:
        noisy = [r for r in used if r is not None and (r.other_cpu_pct or 0) > DISTURBED_PCT]
        if noisy:
            detail += " [DISTURBED: other work used " + ", ".join(
                f"{r.other_cpu_pct:.0f}% CPU during {r.system} {r.config}" + (
                    f" c={r.concurrency}" if r.system != "in-process" else "") for r in noisy) + "]"
        out.append({"target": name, "status": "n/a" if ok is None else ("PASS" if ok else "FAIL"), "detail": detail,
                    "disturbed": bool(noisy)})

    if "bert-small" in models:
        sy, ip = _find(rows, "bert-small", "shipyard", "batching off", 1), _find(rows, "bert-small", "in-process", "batch 1", None)
        if sy and ip and sy.p50_ms is not None and ip.p50_ms is not None:
            d = sy.p50_ms - ip.p50_ms
            add("bert-small: per-request overhead over in-process at c=1 <= 1.5 ms", d <= 1.5,
                f"shipyard batching-off p50 {sy.p50_ms:.2f} ms - in-process b1 p50 {ip.p50_ms:.2f} ms = {d:.2f} ms",
                sy, ip)
        else:
            add("bert-small: per-request overhead over in-process at c=1 <= 1.5 ms", None, "cells missing")
    for m in models:
        off, on = _find(rows, m, "shipyard", "batching off", 1), _find(rows, m, "shipyard", "batching on", 1)
        name = f"{m}: batching on costs <= 10% of p50 at c=1"
        if off and on and off.p50_ms and on.p50_ms is not None:
            cost = (on.p50_ms - off.p50_ms) / off.p50_ms
            add(name, cost <= 0.10, f"p50 on {on.p50_ms:.2f} ms vs off {off.p50_ms:.2f} ms: {cost * 100:+.1f}%", on, off)
        else:
            add(name, None, "cells missing")
    for m in ("bert-small", "bert-base"):
        if m not in models:
            continue
        name = f"{m}: c={hi_c} >= 90% of the batched in-process ceiling"
        best, ceil = _best(rows, m, "shipyard", hi_c), _find(rows, m, "in-process", f"batch {CEILING_BATCH}", None)
        if best and ceil and ceil.rps:
            ratio = best.rps / ceil.rps
            add(name, ratio >= 0.90, f"shipyard best ({best.config}) {best.rps:.1f} req/s vs ceiling "
                                     f"{ceil.rps:.1f} req/s (batch {CEILING_BATCH}): {ratio * 100:.0f}%", best, ceil)
        else:
            add(name, None, "cells missing")
    if "digits" in models:
        name = f"digits: c={hi_c} >= 2x MLServer's best req/s, with a lower p99"
        sy, ml = _best(rows, "digits", "shipyard", hi_c), _best(rows, "digits", "mlserver", hi_c)
        if sy and ml and ml.rps and sy.p99_ms is not None and ml.p99_ms is not None:
            ratio = sy.rps / ml.rps
            add(name, ratio >= 2.0 and sy.p99_ms < ml.p99_ms,
                f"shipyard best ({sy.config}) {sy.rps:.0f} req/s p99 {sy.p99_ms:.1f} ms vs MLServer best "
                f"({ml.config}) {ml.rps:.0f} req/s p99 {ml.p99_ms:.1f} ms: {ratio:.2f}x (the client used "
                f"{_fmt(sy.client_cpu_pct, 0)}% / {_fmt(ml.client_cpu_pct, 0)}% CPU of {meta_cores()} cores)", sy, ml)
        else:
            add(name, None, "cells missing (MLServer skipped or failed?)")
    return out


def meta_cores() -> int:
    return len(os.sched_getaffinity(0))


def hist_text(hist: dict[str, int] | None, limit: int = 6) -> str:
    if hist is None:
        return ""
    if not hist:
        return "-"
    top = sorted(hist.items(), key=lambda kv: -kv[1])[:limit]
    return " ".join(f"{k}:{v}" for k, v in sorted(top, key=lambda kv: int(kv[0])))


COLUMNS = ["system", "config", "c", "req/s", "p50 ms", "p99 ms", "errors", "mean batch", "batch sizes (size:count)",
           "client CPU %", "server CPU %", "other CPU %"]


def row_cells(r: Row) -> list[str]:
    is_ip = r.system == "in-process"
    return [r.system, r.config, "-" if is_ip else str(r.concurrency), _fmt(r.rps), _fmt(r.p50_ms, 2),
            _fmt(r.p99_ms, 2), str(r.errors) if r.check != "failed" else "FAILED",
            _fmt(r.mean_batch, 2) if r.mean_batch is not None else ("" if is_ip else ""),
            hist_text(r.batch_sizes), _fmt(r.client_cpu_pct, 0), _fmt(r.server_cpu_pct, 0),
            _fmt(None if r.other_cpu_pct is None else max(0.0, r.other_cpu_pct), 0)]


def print_tables(rows: list[Row], models: list[str], tgt: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(width=max(Console().width, 150))
    for m in models:
        t = Table(caption="; ".join(f"{sy} {cf}: {st}" for sy, cf, st in dict.fromkeys(
                      (r.system, r.config, r.settings) for r in rows if r.model == m and r.settings)),
                  caption_justify="left",title=f"{m}: {meta['duration_s']:g} s per cell, one client process on the same machine "
                        f"({meta['cpu']['cores']} cores)")
        for col in COLUMNS:
            t.add_column(col, justify="left" if col in ("system", "config", "batch sizes (size:count)") else "right")
        for r in rows:
            if r.model == m:
                t.add_row(*row_cells(r))
        console.print(t)
    for x in tgt:
        style = {"PASS": "green", "FAIL": "red"}.get(x["status"], "yellow")
        console.print(f"[{style}]{x['status']:4}[/{style}] " + escape(f"{x['target']}: {x['detail']}"))


def markdown(rows: list[Row], models: list[str], tgt: list[dict[str, Any]], meta: dict[str, Any],
             issues: list[str]) -> str:
    cpu = meta["cpu"]
    lines = [
        "# REST serving benchmark (bench/serve_rest.py)",
        "",
        f"- Machine: {cpu['model']}, {cpu['cores']} cores usable; Python {meta['python']}; "
        f"torch {meta['versions'].get('torch')}; onnxruntime {meta['versions'].get('onnxruntime')}; "
        f"httpx {meta['versions'].get('httpx')}"
        + (f"; MLServer {meta['mlserver']['mlserver']} (its onnxruntime {meta['mlserver']['onnxruntime']}, "
           f"uvloop {meta['mlserver']['uvloop']})" if meta.get("mlserver") else ""),
        f"- {meta['duration_s']:g} s per cell after {meta['warmup_s']:g} s of warm-up; concurrency "
        f"{', '.join(map(str, meta['concurrency']))}; run {meta['started']}.",
        "- Every server runs one ONNX Runtime session (CPU, 2 intra-op threads, 1 inter-op thread, all graph "
        "optimizations) on the same .onnx file and gets the same KServe V2 JSON body.",
        "- The load generator is ONE client process (asyncio + httpx, keep-alive) on the same machine as the "
        "server: it competes for the same cores (its CPU use is the `client CPU %` column; 100% = one core). "
        f"Client: {meta['client']}.",
        "- `server CPU %` is the server's process group (for in-process rows: the benchmark process running ORT); "
        "`other CPU %` is everything else busy on the machine during the cell: anything well above 0 means the "
        "figures in that row were disturbed by other work.",
        f"- MLServer: {meta['mlserver_config']}",
        f"- In-process rows: latency is per `session.run` call; batch {CEILING_BATCH} req/s = "
        f"{CEILING_BATCH} x calls/s (the ceiling).",
        "",
    ]
    for m in models:
        lines += [f"## {m}", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        for r in rows:
            if r.model == m:
                lines.append("| " + " | ".join(c.replace("|", "/") for c in row_cells(r)) + " |")
        seen = dict.fromkeys((r.system, r.config, r.settings) for r in rows if r.model == m and r.settings)
        lines += [""] + [f"- {sy} {cf}: `{st}`" for sy, cf, st in seen] + [""]
    lines += ["## Targets (issue 2)", ""]
    lines += [f"- **{x['status']}** {x['target']}: {x['detail']}" for x in tgt]
    lines += ["", f"A target marked DISTURBED used a row during which other work took more than {DISTURBED_PCT:.0f}% "
              "CPU: rerun it on an idle machine before trusting it."]
    if issues:
        lines += ["", "## Problems seen", ""] + [f"- {i.splitlines()[0][:400]}" for i in issues]
    return "\n".join(lines) + "\n"


def machine_info() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return {"model": model, "cores": len(os.sched_getaffinity(0)), "logical_cpus": os.cpu_count(),
            "isa": [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile") if f in flags],
            "platform": platform.platform()}


def versions() -> dict[str, str]:
    out = {}
    for pkg in ("torch", "onnxruntime", "transformers", "httpx", "numpy", "shipyard", "uvloop"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=30.0, help="measured seconds per cell (default 30)")
    p.add_argument("--warmup", type=float, default=None, help="warm-up seconds per cell (default min(3, duration))")
    p.add_argument("--concurrency", default="1,16", help="comma-separated client concurrencies (default 1,16)")
    p.add_argument("--models", default=",".join(MODEL_NAMES), help=f"comma-separated subset of {MODEL_NAMES}")
    p.add_argument("--skip-mlserver", action="store_true", help="do not set up or run MLServer")
    p.add_argument("--skip-shipyard", action="store_true", help="do not run shipyard's server")
    p.add_argument("--skip-inprocess", action="store_true", help="do not measure the in-process ceiling")
    p.add_argument("--threads", type=int, default=2, help="ORT intra-op threads everywhere (default 2)")
    p.add_argument("--shipyard-batch", type=int, default=32, help="shipyard max_batch_size when batching is on")
    p.add_argument("--shipyard-delay-us", type=int, default=0, help="shipyard max_queue_delay_us (default 0)")
    p.add_argument("--mlserver-batch", type=int, default=16, help="MLServer max_batch_size when batching is on")
    p.add_argument("--mlserver-batch-time", type=float, default=0.005,
                   help="MLServer max_batch_time in seconds when batching is on (default 0.005)")
    p.add_argument("--mlserver-workers", type=int, default=0,
                   help="MLServer parallel_workers: 0 = infer in the server process (default), 1 = one worker "
                        "process behind the HTTP process")
    p.add_argument("--mlserver-inline", action="store_true",
                   help="run ORT inline in the runtime's async predict() instead of on one dedicated thread")
    p.add_argument("--client", choices=["per-worker", "shared"], default="per-worker",
                   help="per-worker (default): each of the C concurrent workers has its own keep-alive AsyncClient "
                        "with one connection; shared: one AsyncClient with max_connections C for all workers (httpx's "
                        "shared pool costs ~2x client CPU per request at c=16 and inflates p99 several-fold here)")
    p.add_argument("--mlserver-no-spin", action="store_true",
                   help="turn off ORT's intra-op spin-wait in the MLServer runtime (session.intra_op.allow_spinning=0); "
                        "use it when shipyard turns spinning off, so both run the same session settings")
    p.add_argument("--ready-timeout", type=float, default=180.0, help="seconds to wait for a server to be ready")
    p.add_argument("--work-dir", type=Path, default=DEFAULT_WORK)
    p.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS)
    p.add_argument("--rebuild", action="store_true", help="rebuild the models even if present")
    p.add_argument("--_export-bert", nargs=2, metavar=("NAME", "OUT"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.concurrency = [int(x) for x in str(a.concurrency).split(",") if x.strip()]
    a.models = [m.strip() for m in a.models.split(",") if m.strip()]
    unknown = set(a.models) - set(MODEL_NAMES)
    if unknown:
        p.error(f"unknown models {sorted(unknown)}; choose from {MODEL_NAMES}")
    if a.warmup is None:
        a.warmup = min(3.0, a.duration)
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a._export_bert:
        export_bert(a._export_bert[0], Path(a._export_bert[1]))
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run atexit: stop our servers

    work = a.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    ctx = Ctx(a, work, issues=[])
    meta: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "duration_s": a.duration, "warmup_s": a.warmup,
        "concurrency": a.concurrency, "cpu": machine_info(), "python": platform.python_version(),
        "versions": versions(), "threads": a.threads,
        "client": ("one process, asyncio + httpx, keep-alive; "
                   + ("one AsyncClient (1 connection) per concurrent worker" if a.client == "per-worker"
                      else "one shared AsyncClient, max_connections = concurrency")
                   + (", uvloop event loop" if versions().get("uvloop") != "not installed" else "")),
        "shipyard_config": {"off": "--max-batch-size 1", "on": f"--max-batch-size {a.shipyard_batch} "
                            f"--max-queue-delay-us {a.shipyard_delay_us}", "threads": a.threads},
        "mlserver_config": (f"custom runtime bench/mlserver_runtime/shipyard_bench_runtime.py, parallel_workers="
                            f"{a.mlserver_workers}, ORT {'inline in predict()' if a.mlserver_inline else 'on one dedicated thread'}"
                            f"{', ORT intra-op spinning off' if a.mlserver_no_spin else ', ORT intra-op spinning at its default (on)'}"
                            f", debug false, metrics on (default); batching on = max_batch_size {a.mlserver_batch}, "
                            f"max_batch_time {a.mlserver_batch_time:g} s; off = max_batch_size 0"),
    }
    log(f"machine: {meta['cpu']['model']}, {meta['cpu']['cores']} cores; models {a.models}; "
        f"{a.duration:g} s per cell, warm-up {a.warmup:g} s, concurrency {a.concurrency}")

    busy0 = machine_busy_s()
    time.sleep(1.0)
    meta["busy_before_start_pct"] = round(100.0 * (machine_busy_s() - busy0), 1)
    if meta["busy_before_start_pct"] > DISTURBED_PCT:
        log(f"WARNING: the machine is not idle ({meta['busy_before_start_pct']:.0f}% CPU busy before the start; "
            "100 = one core): figures will be disturbed; see the `other CPU %` column")

    if not a.skip_mlserver:
        try:
            meta["mlserver"] = ensure_mlserver_venv()
        except Exception as e:  # noqa: BLE001
            ctx.issues.append(f"MLServer setup failed, its cells are skipped: {e}")
            log(f"MLServer setup failed, skipping it: {str(e).splitlines()[0]}")
            a.skip_mlserver = True

    serve_repo = work / "serve-repo"
    model_info: dict[str, Any] = {}
    rows: list[Row] = []
    for m in a.models:
        log(f"=== {m} ===")
        try:
            onnx_path, info = build_digits(work, a.rebuild) if m == "digits" else build_bert(work, m, a.rebuild)
            if not a.skip_shipyard:
                publish_for_shipyard(serve_repo, m, onnx_path)
        except Exception as e:  # noqa: BLE001
            ctx.issues.append(f"{m}: build failed: {e}")
            log(f"{m}: build failed: {e}")
            continue
        info = {**info, "onnx": str(onnx_path.relative_to(ROOT)) if onnx_path.is_relative_to(ROOT) else str(onnx_path),
                "size_bytes": onnx_path.stat().st_size}
        model_info[m] = info

        sess = ort_session(onnx_path, a.threads)
        inputs = make_inputs(sess, 1, seed=0)
        body = v2_body(inputs)
        output = sess.get_outputs()[0].name
        ref = sess.run([output], {n: arr for n, (_, arr) in inputs.items()})[0]
        info["payload_bytes"] = len(body)
        del sess

        if not a.skip_inprocess:
            log("  in-process ORT batch 1 and batch 16 ...")
            rows += run_inprocess(m, onnx_path, a.threads, a.warmup, a.duration)
        if not a.skip_shipyard:
            rows += shipyard_rows(ctx, m, serve_repo, body, output, ref)
        if not a.skip_mlserver:
            rows += mlserver_rows(ctx, m, onnx_path, body, output, ref)

    built = [m for m in a.models if m in model_info]
    hi_c = max(a.concurrency)
    tgt = targets(rows, built, hi_c)
    meta["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    print_tables(rows, built, tgt, meta)
    for i in ctx.issues:
        log(f"problem: {i}")

    a.results_dir.mkdir(parents=True, exist_ok=True)
    (a.results_dir / "serve_rest.json").write_text(json.dumps(
        {"meta": meta, "models": model_info, "rows": [asdict(r) for r in rows], "targets": tgt,
         "problems": ctx.issues}, indent=2))
    (a.results_dir / "serve_rest.md").write_text(markdown(rows, built, tgt, meta, ctx.issues))
    log(f"wrote {a.results_dir / 'serve_rest.json'} and {a.results_dir / 'serve_rest.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

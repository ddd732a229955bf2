#!/usr/bin/env python3
"""Fault benchmark (issue 13): what hostile and careless clients do to one `shipyard serve`.

One server (subprocess, 1 intra-op thread per model) holds three models, built into
bench/.work/faults/ on first use:
  digits  the demo CNN (ONNX version 2), cheap
  heavy   x FP32 [-1, 1024] -> one 1024x1024 layer applied 96 times (~200 MFLOP a row): slow enough
          that the server, not this client, is what saturates
  lm      a random GPT-2 (4 layers, hidden 256, context 512) served over the OpenAI API

Phases (each prints a table; all figures go to bench/results/faults.json and .md):
  overload     measure capacity closed-loop, then offer 4x that rate open-loop: answered / shed (503
               or 429 with Retry-After) / other 4xx / 5xx / timed-out counts (REST V2 on heavy, OpenAI on lm)
  connections  1,000 idle TCP connections and 100 slow clients (slow headers, slow bodies) held open
               while a probe calls GET /v2/health/live: its p50/p99/max and how many hostile
               connections the server closed by the end
  bigbody      100 MB bodies to /v2 infer and /v1/completions and a 4 MB prompt, while REST health,
               gRPC ServerLive and a small V2 infer are probed: their p99
  soak         a mixed load (REST JSON and binary, gRPC, OpenAI streaming and not, bad requests) for
               --soak-minutes: server RSS start (after warm-up) / max / end, errors, hangs

Targets: 0 hangs, 0 5xx other than shedding, health p99 under 50 ms throughout, RSS at the end within
5% of the start after warm-up.

Usage:
  .venv/bin/python bench/faults.py                        # every phase, 30-minute soak
  .venv/bin/python bench/faults.py --quick                # short phases, 2-minute soak
  .venv/bin/python bench/faults.py --phases overload,bigbody
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import json
import multiprocessing
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

try:  # see bench/serve_rest.py: a missing sniffio costs a sys.path scan per request
    import sniffio  # noqa: F401
except ImportError:
    sys.modules["sniffio"] = None  # type: ignore[assignment]

import httpx  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / ".work" / "faults"
RESULTS = ROOT / "bench" / "results"
HEAVY_WIDTH, HEAVY_DEPTH = 1024, 96
PHASES = ("overload", "connections", "bigbody", "soak")


def log(msg: str) -> None:
    print(f"[faults {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- models (built in a child process, so torch stays out of the load generator) ---------------
def build(repo_root: Path) -> None:
    import torch

    from shipyard.cli.demo import build as build_digits
    from shipyard.repository import Repository
    from shipyard.runtimes.importer import import_model
    from shipyard.zoo import lm

    repo = Repository(repo_root)
    build_digits(repo, threads=1)

    class Heavy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(HEAVY_WIDTH, HEAVY_WIDTH, bias=False)
            torch.nn.init.orthogonal_(self.layer.weight)  # keeps values finite through the depth

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for _ in range(HEAVY_DEPTH):
                x = self.layer(x)
            return x

    files = repo_root.parent / "files"
    files.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(Heavy(), (torch.zeros(2, HEAVY_WIDTH),), str(files / "heavy.onnx"), input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, dynamo=False)
    import_model(repo, files / "heavy.onnx", "heavy")
    texts = [p.read_text(errors="ignore") for p in sorted(Path(json.__file__).parent.glob("*.py"))]
    tokenizer = lm.train_tokenizer(texts, 2048)
    torch.manual_seed(0)
    model = lm.build_model("gpt2", len(tokenizer), layers=4, hidden=256, heads=4, context=512)
    import_model(repo, lm.save(model, tokenizer, files / "lm"), "lm")


def ensure_models(rebuild: bool) -> Path:
    repo = WORK / "repo"
    if rebuild and WORK.exists():
        shutil.rmtree(WORK)
    if not (repo / "lm").is_dir():
        if repo.exists():
            shutil.rmtree(repo)
        log("building digits, heavy and lm (once) ...")
        done = subprocess.run([sys.executable, __file__, "--_build", str(repo)], capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"building the models failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return repo


# -- the server ---------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, repo: Path, extra: list[str]) -> None:
        self.port, self.grpc_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        exe = Path(sys.executable).parent / "shipyard"
        self.log_path = WORK / f"server-{self.port}.log"
        self.log_file = open(self.log_path, "w")
        cmd = [str(exe), "serve", "--repository", str(repo), "--port", str(self.port), "--grpc-port",
               str(self.grpc_port), "--threads", "1", *extra]
        self.proc = subprocess.Popen(cmd, stdout=self.log_file, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited {self.proc.returncode}: {self.log_path.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/v2/health/ready", timeout=1).status_code == 200:
                    return
            time.sleep(0.2)
        self.stop()
        raise SystemExit("server not ready after 120 s")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def open_files(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_file.close()
        return int(self.proc.returncode)


# -- requests -------------------------------------------------------------------------------------
DIGITS = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": [0.25] * 64}]}
HEAVY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, HEAVY_WIDTH],
                     "data": np.random.default_rng(0).standard_normal(HEAVY_WIDTH).round(3).tolist()}]}
JSON = {"Content-Type": "application/json"}
COMPLETION = {"model": "lm", "prompt": "def parse(text):\n    ", "max_tokens": 16, "temperature": 0}


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


class Probe:
    """Calls one cheap endpoint every `every` seconds and keeps each call's latency (ms)."""

    def __init__(self, call: Any, every: float = 0.02) -> None:
        self.call, self.every = call, every
        self.latencies: list[float] = []
        self.failures = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            t0 = time.perf_counter()
            try:
                await self.call()
                self.latencies.append((time.perf_counter() - t0) * 1000)
            except Exception:  # noqa: BLE001 - a failed probe is what is measured
                self.failures += 1
            await asyncio.sleep(max(0.0, self.every - (time.perf_counter() - t0)))

    def __enter__(self) -> Probe:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()

    def summary(self) -> dict[str, Any]:
        return {"calls": len(self.latencies) + self.failures, "failures": self.failures,
                "p50_ms": round(percentile(self.latencies, 50), 2), "p99_ms": round(percentile(self.latencies, 99), 2),
                "max_ms": round(max(self.latencies, default=float("nan")), 2)}


def health_probe(server: Server) -> Probe:
    client = httpx.AsyncClient(timeout=5)  # keep-alive, as a load balancer's prober

    async def call() -> None:
        r = await client.get(f"{server.url}/v2/health/live")
        if r.status_code != 200:
            raise RuntimeError(r.status_code)
    return Probe(call)


# -- overload -------------------------------------------------------------------------------------
# The load runs in a process of its own, at a lower priority than the server and the probe, and speaks
# raw HTTP/1.1 over asyncio streams with each request's bytes built once: httpx on these 2 cores tops
# out near 150 requests/s, below the rates this phase must offer, and a generator sharing the probe's
# event loop would count its own lag against the server.
def _request_bytes(port: int, path: str, body: dict[str, Any]) -> bytes:
    payload = json.dumps(body).encode()
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n").encode() + payload


class _RawPool:
    """Keep-alive connections to one server, opened on demand; answers are read by Content-Length."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []

    async def post(self, request: bytes) -> tuple[int, bool]:
        """(status, has Retry-After) of one request; raises OSError, TimeoutError, IncompleteReadError."""
        conn = None
        while self.idle and conn is None:
            r, w, t = self.idle.pop()
            if time.perf_counter() - t < 1.0 and not r.at_eof():  # well inside the server's keep-alive
                conn = (r, w)
            else:
                w.close()
        if conn is None:
            conn = await asyncio.open_connection("127.0.0.1", self.port)
        reader, writer = conn
        try:
            writer.write(request)
            head = (await reader.readuntil(b"\r\n\r\n")).lower()
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
        except BaseException:
            writer.close()
            raise
        if b"\r\nconnection: close" in head:
            writer.close()
        else:
            self.idle.append((reader, writer, time.perf_counter()))
        return status, b"\r\nretry-after:" in head


async def _closed_loop(port: int, request: bytes, concurrency: int, seconds: float) -> float:
    pool, done = _RawPool(port), 0
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            status, _ = await asyncio.wait_for(pool.post(request), 60)
            done += status == 200
    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.perf_counter() - t0)


async def _open_loop(port: int, request: bytes, rate: float, seconds: float, timeout: float) -> dict[str, Any]:
    pool, counts, latencies = _RawPool(port), Counter[str](), []

    async def one() -> None:
        t0 = time.perf_counter()
        try:
            status, retry_after = await asyncio.wait_for(pool.post(request), timeout)
            if status == 200:
                kind = "answered"
                latencies.append(time.perf_counter() - t0)
            elif status in (429, 503) and retry_after:
                kind = "shed"
            else:
                kind = "other_4xx" if 400 <= status < 500 else "5xx"
        except TimeoutError:
            kind = "timed_out"
        except (OSError, asyncio.IncompleteReadError, ValueError):
            kind = "connection_error"
        counts[kind] += 1

    tasks = []
    start = time.perf_counter()
    n = int(rate * seconds)
    for i in range(n):
        await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
        tasks.append(asyncio.create_task(one()))
    offered_s = time.perf_counter() - start
    await asyncio.gather(*tasks)
    return {"offered": n, "offered_rate": round(n / offered_s, 1), **dict(counts),
            "answered_p50_s": round(percentile(latencies, 50), 3)}


def _generator(kind: str, port: int, path: str, body: dict[str, Any], *args: float) -> Any:
    """Runs in the load process: `closed` -> capacity in req/s, `open` -> the counts of _open_loop."""
    with contextlib.suppress(OSError):
        os.nice(10)
    request = _request_bytes(port, path, body)
    if kind == "closed":
        return asyncio.run(_closed_loop(port, request, int(args[0]), args[1]))
    return asyncio.run(_open_loop(port, request, *args))


async def phase_overload(server: Server, seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    spawn = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as load:
        for label, path, body, conc, timeout in (("rest_v2 heavy", "/v2/models/heavy/infer", HEAVY, 16, 30.0),
                                                 ("openai lm", "/v1/completions", COMPLETION, 16, 60.0)):
            cap = await asyncio.wrap_future(load.submit(_generator, "closed", server.port, path, body, conc, seconds))
            log(f"{label}: capacity {cap:.1f} req/s at concurrency {conc}; offering {4 * cap:.1f} req/s")
            with health_probe(server) as probe:
                result = await asyncio.wrap_future(load.submit(_generator, "open", server.port, path, body,
                                                               4 * cap, seconds, timeout))
            out[label] = {"capacity_rps": round(cap, 1), **result, "health": probe.summary()}
            await asyncio.sleep(2)
    return out


# -- idle and slow connections --------------------------------------------------------------------
async def phase_connections(server: Server, seconds: float, idle: int = 1000, slow: int = 100) -> dict[str, Any]:
    writers: list[tuple[str, asyncio.StreamReader, asyncio.StreamWriter]] = []
    files_before = server.open_files()
    opened: Counter[str] = Counter()
    for _ in range(idle):
        try:
            r, w = await asyncio.open_connection("127.0.0.1", server.port)
            writers.append(("idle", r, w))
            opened["idle"] += 1
        except OSError:
            opened["idle_refused"] += 1
    head = "POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    for i in range(slow):
        try:
            r, w = await asyncio.open_connection("127.0.0.1", server.port)
            writers.append(("slow_header" if i % 2 == 0 else "slow_body", r, w))
            opened["slow"] += 1
        except OSError:
            opened["slow_refused"] += 1

    async def trickle(kind: str, w: asyncio.StreamWriter) -> None:
        data = head.encode() if kind == "slow_header" else (head + "Content-Length: 100000\r\n\r\n").encode()
        if kind == "slow_body":
            w.write(data)
            data = json.dumps(DIGITS).encode() * 300
        with contextlib.suppress(OSError, ConnectionError):
            for byte in data:
                w.write(bytes([byte]))
                await w.drain()
                await asyncio.sleep(0.5)

    tricklers = [asyncio.create_task(trickle(k, w)) for k, _, w in writers if k != "idle"]
    with health_probe(server) as probe:
        files_during = server.open_files()
        await asyncio.sleep(seconds)
    files_at_end = server.open_files()
    closed: Counter[str] = Counter()
    for kind, r, _w in writers:
        # A connection the server closed reads EOF (or an error) at once; an open one times out.
        try:
            data = await asyncio.wait_for(r.read(65536), 0.01)
            closed[kind] += 1 if data == b"" or data.startswith(b"HTTP/1.1 408") or b"HTTP/1.1" in data else 0
        except TimeoutError:
            pass
        except OSError:
            closed[kind] += 1
    for t in tricklers:
        t.cancel()
    for _, _, w in writers:
        w.close()
    return {"held_s": seconds, "opened": dict(opened), "closed_by_server": dict(closed),
            "server_open_files": {"before": files_before, "during": files_during, "end": files_at_end},
            "health": probe.summary()}


# -- large bodies ---------------------------------------------------------------------------------
def _send_body(url: str, path: str, kind: str) -> Any:
    """One large request from the sender process: its status, or the error's name."""
    if kind == "big":
        body = b"{" + b" " * (100 << 20) + b"}"
    elif kind == "prompt":
        body = json.dumps({"model": "lm", "max_tokens": 1, "prompt": "a" * (4 << 20)}).encode()
    else:
        return httpx.get(url + path, timeout=30).status_code
    try:
        return httpx.post(url + path, content=body, headers={"Content-Type": "application/json"},
                          timeout=120).status_code
    except httpx.HTTPError as e:
        return type(e).__name__


async def phase_bigbody(server: Server) -> dict[str, Any]:
    import grpc

    from shipyard.protocol import messages_pb2 as pb
    from shipyard.protocol import service_pb2_grpc as pbg

    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    stub = pbg.GRPCInferenceServiceStub(channel)
    small = httpx.AsyncClient(timeout=10)

    async def grpc_live() -> None:
        await stub.ServerLive(pb.ServerLiveRequest(), timeout=5)

    async def small_infer() -> None:
        r = await small.post(f"{server.url}/v2/models/digits/infer", json=DIGITS)
        if r.status_code != 200:
            raise RuntimeError(r.status_code)

    answers: dict[str, Any] = {}
    probes = [health_probe(server), Probe(grpc_live), Probe(small_infer)]
    # The sender is a process of its own: a client copying 100 MB under its GIL (h11 joins the
    # body) would otherwise stall the probes' loop and be counted against the server.
    spawn = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as sender:
        await asyncio.wrap_future(sender.submit(_send_body, server.url, "/v2/health/live", "none"))  # started
        with probes[0], probes[1], probes[2]:
            await asyncio.sleep(1)
            for label, path, body in (("100 MB to /v2 infer", "/v2/models/digits/infer", "big"),
                                      ("100 MB to /v1/completions", "/v1/completions", "big"),
                                      ("4 MB prompt", "/v1/completions", "prompt")):
                t0 = time.perf_counter()
                status = await asyncio.wrap_future(sender.submit(_send_body, server.url, path, body))
                answers[label] = {"status": status, "seconds": round(time.perf_counter() - t0, 2)}
            await asyncio.sleep(1)
    await small.aclose()
    await channel.close()
    return {"answers": answers, "rest_health": probes[0].summary(), "grpc_live": probes[1].summary(),
            "small_infer": probes[2].summary()}


# -- soak -----------------------------------------------------------------------------------------
async def phase_soak(server: Server, minutes: float, warmup_s: float) -> dict[str, Any]:
    import grpc

    from shipyard.protocol import messages_pb2 as pb
    from shipyard.protocol import service_pb2_grpc as pbg

    counts: Counter[str] = Counter()
    stop_at = time.perf_counter() + warmup_s + minutes * 60
    rss: list[tuple[float, float]] = []
    t_start = time.perf_counter()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    stub = pbg.GRPCInferenceServiceStub(channel)
    pixels = np.full((1, 1, 8, 8), 0.25, np.float32)
    grpc_request = pb.ModelInferRequest(model_name="digits", inputs=[pb.ModelInferRequest.InferInputTensor(
        name="pixels", datatype="FP32", shape=[1, 1, 8, 8])], raw_input_contents=[pixels.tobytes()])
    header = json.dumps({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 1, 8, 8],
                                     "parameters": {"binary_data_size": 256}}]}).encode()

    async with httpx.AsyncClient(timeout=60) as client:
        async def record(kind: str, call: Any) -> None:
            try:
                status = await call()
                counts[f"{kind} {status}"] += 1
            except (httpx.TimeoutException, TimeoutError):
                counts[f"{kind} timed_out"] += 1
            except grpc.aio.AioRpcError as e:
                counts[f"{kind} {e.code().name}"] += 1

        async def rest_json() -> int:
            return (await client.post(f"{server.url}/v2/models/digits/infer", json=DIGITS)).status_code

        async def rest_binary() -> int:
            r = await client.post(f"{server.url}/v2/models/digits/infer", content=header + pixels.tobytes(),
                                  headers={"Inference-Header-Content-Length": str(len(header)),
                                           "Content-Type": "application/octet-stream"})
            return r.status_code

        async def grpc_infer() -> str:
            await stub.ModelInfer(grpc_request, timeout=30)
            return "OK"

        async def completion() -> int:
            return (await client.post(f"{server.url}/v1/completions", json=COMPLETION)).status_code

        async def stream() -> int:
            async with client.stream("POST", f"{server.url}/v1/chat/completions", json={
                    "model": "lm", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 24,
                    "stream": True}) as r:
                async for _ in r.aiter_lines():
                    pass
                return r.status_code

        async def bad() -> int:
            bodies = [(f"{server.url}/v2/models/nope/infer", b"{}"), (f"{server.url}/v2/models/digits/infer", b"{"),
                      (f"{server.url}/v1/completions", b'{"model": "lm", "max_tokens": -1, "prompt": "x"}')]
            url, body = bodies[counts.total() % len(bodies)]
            return (await client.post(url, content=body, headers={"Content-Type": "application/json"})).status_code

        async def loop(kind: str, call: Any, pause: float) -> None:
            while time.perf_counter() < stop_at:
                await record(kind, call)
                await asyncio.sleep(pause)

        async def sample() -> None:
            while time.perf_counter() < stop_at:
                rss.append((time.perf_counter() - t_start, server.rss_mb()))
                await asyncio.sleep(5)

        with health_probe(server) as probe:
            await asyncio.gather(loop("rest_json", rest_json, 0.0), loop("rest_json", rest_json, 0.0),
                                 loop("rest_binary", rest_binary, 0.0), loop("grpc", grpc_infer, 0.0),
                                 loop("completion", completion, 0.2), loop("stream", stream, 0.2),
                                 loop("bad", bad, 0.05), sample())
    await channel.close()
    after = [mb for t, mb in rss if t >= warmup_s]
    start, end = (after[0], after[-1]) if after else (float("nan"), float("nan"))
    return {"minutes": minutes, "warmup_s": warmup_s, "requests": dict(sorted(counts.items())),
            "rss_mb": {"start": round(start, 1), "max": round(max(after, default=float("nan")), 1),
                       "end": round(end, 1), "end_vs_start_pct": round(100 * (end / start - 1), 2)},
            "rss_samples": [(round(t), round(mb, 1)) for t, mb in rss], "health": probe.summary()}


# -- report ---------------------------------------------------------------------------------------
def markdown(results: dict[str, Any]) -> str:
    lines = [f"# Fault benchmark ({results['when']})", "", f"Machine: {results['machine']}", "",
             f"Command: `{results['command']}`", ""]
    if "overload" in results:
        lines += ["## Overload at 4x capacity (open loop)", "",
                  "| channel | capacity req/s | offered | rate | answered | shed | other 4xx | 5xx | timed out "
                  "| health p99 ms |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for label, r in results["overload"].items():
            lines.append(f"| {label} | {r['capacity_rps']} | {r['offered']} | {r['offered_rate']} | "
                         f"{r.get('answered', 0)} | {r.get('shed', 0)} | {r.get('other_4xx', 0)} | {r.get('5xx', 0)} | "
                         f"{r.get('timed_out', 0) + r.get('connection_error', 0)} | {r['health']['p99_ms']} |")
        lines.append("")
    if "connections" in results:
        c = results["connections"]
        lines += [f"## Idle and slow connections, held {c['held_s']} s", "",
                  "| connections | opened | closed by the server |", "| --- | ---: | ---: |",
                  f"| idle | {c['opened'].get('idle', 0)} | {c['closed_by_server'].get('idle', 0)} |",
                  f"| slow headers + slow bodies | {c['opened'].get('slow', 0)} | "
                  f"{c['closed_by_server'].get('slow_header', 0)} + {c['closed_by_server'].get('slow_body', 0)} |",
                  "", f"Refused at connect: {c['opened'].get('idle_refused', 0) + c['opened'].get('slow_refused', 0)}. "
                  f"Server open files before / during / end: {c['server_open_files']['before']} / "
                  f"{c['server_open_files']['during']} / {c['server_open_files']['end']}. "
                  f"Health probe meanwhile: {c['health']['calls']} calls, {c['health']['failures']} failed, "
                  f"p50 {c['health']['p50_ms']} ms, p99 {c['health']['p99_ms']} ms, max {c['health']['max_ms']} ms.", ""]
    if "bigbody" in results:
        b = results["bigbody"]
        lines += ["## Large bodies", "", "| request | answer | seconds |", "| --- | --- | ---: |"]
        lines += [f"| {k} | {v['status']} | {v['seconds']} |" for k, v in b["answers"].items()]
        lines += ["", "| probe meanwhile | calls | failures | p50 ms | p99 ms | max ms |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for k in ("rest_health", "grpc_live", "small_infer"):
            p = b[k]
            lines.append(f"| {k} | {p['calls']} | {p['failures']} | {p['p50_ms']} | {p['p99_ms']} | {p['max_ms']} |")
        lines.append("")
    if "soak" in results:
        s = results["soak"]
        lines += [f"## Mixed soak, {s['minutes']} minutes after {s['warmup_s']} s warm-up", "",
                  f"RSS MB start {s['rss_mb']['start']}, max {s['rss_mb']['max']}, end {s['rss_mb']['end']} "
                  f"({s['rss_mb']['end_vs_start_pct']:+}%); health p99 {s['health']['p99_ms']} ms, "
                  f"max {s['health']['max_ms']} ms, failures {s['health']['failures']}", "",
                  "| requests | count |", "| --- | ---: |"]
        lines += [f"| {k} | {v} |" for k, v in s["requests"].items()]
        lines.append("")
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    repo = ensure_models(args.rebuild)
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    results: dict[str, Any] = {}
    for phase in phases:
        server = Server(repo, [])
        try:
            log(f"{phase}: server pid {server.proc.pid}, RSS {server.rss_mb():.0f} MB")
            if phase == "overload":
                results[phase] = await phase_overload(server, args.seconds)
            elif phase == "connections":
                results[phase] = await phase_connections(server, args.hold_s)
            elif phase == "bigbody":
                results[phase] = await phase_bigbody(server)
            elif phase == "soak":
                results[phase] = await phase_soak(server, args.soak_minutes, args.warmup_s)
            results.setdefault("server_exit", {})[phase] = server.stop()
        finally:
            server.stop()
        log(f"{phase}: {json.dumps(results[phase])[:1500]}")
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phases", default=",".join(PHASES), help="Comma-separated phases to run.")
    ap.add_argument("--seconds", type=float, default=20.0, help="Seconds of capacity and of overload per channel.")
    ap.add_argument("--hold-s", type=float, default=40.0, help="Seconds the idle and slow connections are held.")
    ap.add_argument("--soak-minutes", type=float, default=30.0)
    ap.add_argument("--warmup-s", type=float, default=120.0, help="Soak warm-up not counted in the RSS start.")
    ap.add_argument("--quick", action="store_true", help="5 s phases, 15 s holds, a 2-minute soak.")
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--out", default=str(RESULTS / "faults"), help="Results path without suffix.")
    ap.add_argument("--_build", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._build:
        build(Path(args._build))
        return
    if args.quick:
        args.seconds, args.hold_s, args.soak_minutes, args.warmup_s = 5.0, 15.0, 2.0, 20.0
    WORK.mkdir(parents=True, exist_ok=True)
    results = asyncio.run(main_async(args))
    results = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                          f"Python {platform.python_version()}",
               "command": " ".join(["python", "bench/faults.py", *sys.argv[1:]]), **results}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()

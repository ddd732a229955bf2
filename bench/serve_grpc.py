#!/usr/bin/env python3
"""gRPC serving benchmark (issue 4): shipyard gRPC vs shipyard REST (JSON and binary) vs MLServer gRPC,
and the cost of API keys + metrics, in one run.

Models and their builds come from bench/serve_rest.py (digits: the demo CNN; bert-small: 4 layers,
hidden 256, seq 128, random weights), served from the same .onnx file with ONNX Runtime at the
same thread count. The MLServer side is the same custom ORT runtime and venv as serve_rest.py
(mlserver 1.7.1, uvloop 0.21.0), here with adaptive batching on (its best gRPC setting in ANCHORS).

Cells per model, each at every --concurrency:
  shipyard  grpc            raw_input_contents, one grpc.aio channel, calls multiplexed
  shipyard  rest-json       V2 JSON body (httpx, keep-alive)
  shipyard  rest-binary     V2 binary tensor extension
  shipyard+auth grpc / rest-binary   the same server started with --auth (a key on each request)
  mlserver  grpc            the same raw gRPC request
Metrics are always on in shipyard; their per-request cost is also timed in-process (--micro).

The client shares the 2 cores with the server: client CPU, server CPU and everything else on the
machine (other_cpu_pct) are recorded for each cell, plus the load average.

Usage:
  .venv/bin/python bench/serve_grpc.py                         # full run, 20 s cells
  .venv/bin/python bench/serve_grpc.py --duration 2 --warmup 1 # smoke run
  .venv/bin/python bench/serve_grpc.py --models digits --skip-mlserver
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import grpc  # noqa: E402
import serve_rest as sr  # noqa: E402 - model building, MLServer venv, process handling

from shipyard.protocol import messages_pb2 as pb  # noqa: E402

INFER = "/inference.GRPCInferenceService/ModelInfer"


def binary_body(inputs: dict[str, tuple[str, np.ndarray]]) -> tuple[bytes, dict[str, str]]:
    chunks = [np.ascontiguousarray(a).tobytes() for _, a in inputs.values()]
    head = json.dumps({"inputs": [{"name": n, "shape": list(a.shape), "datatype": dt,
                                   "parameters": {"binary_data_size": len(c)}}
                                  for (n, (dt, a)), c in zip(inputs.items(), chunks, strict=True)],
                       "parameters": {"binary_data_output": True}}).encode()
    return head + b"".join(chunks), {"inference-header-content-length": str(len(head)),
                                     "content-type": "application/octet-stream"}


def grpc_request(model: str, inputs: dict[str, tuple[str, np.ndarray]]) -> bytes:
    msg = pb.ModelInferRequest(model_name=model)
    for n, (dt, a) in inputs.items():
        msg.inputs.add(name=n, datatype=dt, shape=list(a.shape))
        msg.raw_input_contents.append(np.ascontiguousarray(a).tobytes())
    return bytes(msg.SerializeToString())


def check_grpc(reply: bytes, output: str, ref: np.ndarray) -> str:
    msg = pb.ModelInferResponse.FromString(reply)
    names = [o.name for o in msg.outputs]
    if output not in names:
        return f"mismatch: no output {output!r} (got {names})"
    i = names.index(output)
    o = msg.outputs[i]
    got = (np.frombuffer(msg.raw_output_contents[i], "<f4") if msg.raw_output_contents
           else np.asarray(o.contents.fp32_contents, np.float32))
    if list(o.shape) != list(ref.shape) or not np.allclose(got, ref.reshape(-1), rtol=1e-3, atol=1e-4):
        return f"mismatch: shape {list(o.shape)} vs {list(ref.shape)}"
    return "ok"


def check_binary(body: bytes, headers: Any, output: str, ref: np.ndarray) -> str:
    n = int(headers.get("inference-header-content-length", len(body)))
    doc = json.loads(body[:n])
    offset = n
    for o in doc["outputs"]:
        size = o.get("parameters", {}).get("binary_data_size", 0)
        if o["name"] == output:
            got = np.frombuffer(body[offset:offset + size], "<f4")
            return "ok" if np.allclose(got, ref.reshape(-1), rtol=1e-3, atol=1e-4) else "mismatch"
        offset += size
    return f"mismatch: no output {output!r}"


async def grpc_phase(call: Any, request: bytes, metadata: Any, concurrency: int, seconds: float) -> sr.Phase:
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    start = time.perf_counter()
    deadline = start + seconds

    async def worker() -> None:
        while True:
            t0 = time.perf_counter()
            if t0 >= deadline:
                return
            try:
                await call(request, metadata=metadata, timeout=60)
                latencies.append(time.perf_counter() - t0)
            except grpc.RpcError as e:
                errors[f"{e.code().name}: {e.details()}"[:300]] += 1
                await asyncio.sleep(0.01)

    cpu0 = time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return sr.Phase(latencies, errors, time.perf_counter() - start, time.process_time() - cpu0)


async def grpc_cell(model: str, system: str, config: str, target: str, request: bytes, output: str,
                    ref: np.ndarray, concurrency: int, args: argparse.Namespace, server: sr.ServerProcess,
                    key: str | None) -> sr.Row:
    metadata = (("authorization", f"Bearer {key}"),) if key else None
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(INFER)  # bytes in, bytes out: the client does no protobuf work
        try:
            check = check_grpc(await call(request, metadata=metadata, timeout=60), output, ref)
        except grpc.RpcError as e:
            check = f"{e.code().name}: {e.details()}"[:300]
        if args.warmup > 0:
            await grpc_phase(call, request, metadata, concurrency, args.warmup)
        cpu0, busy0 = sr.group_cpu_s(server.pgid), sr.machine_busy_s()
        ph = await grpc_phase(call, request, metadata, concurrency, args.duration)
        server_cpu, busy = sr.group_cpu_s(server.pgid) - cpu0, sr.machine_busy_s() - busy0
    return _row(model, system, config, concurrency, ph, server_cpu, busy, check)


async def http_cell(model: str, system: str, config: str, url: str, body: bytes, headers: dict[str, str],
                    output: str, ref: np.ndarray, concurrency: int, args: argparse.Namespace,
                    server: sr.ServerProcess) -> sr.Row:
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60.0, headers=headers) as client:
        r = await client.post(url, content=body)
        if r.status_code != 200:
            check = f"HTTP {r.status_code}: {r.text[:200]}"
        elif "inference-header-content-length" in r.headers:
            check = check_binary(r.content, r.headers, output, ref)
        else:
            check = sr.check_response(r.json(), output, ref)
        if args.warmup > 0:
            await sr.load_phase([client], url, body, concurrency, args.warmup)
        cpu0, busy0 = sr.group_cpu_s(server.pgid), sr.machine_busy_s()
        ph = await sr.load_phase([client], url, body, concurrency, args.duration)
        server_cpu, busy = sr.group_cpu_s(server.pgid) - cpu0, sr.machine_busy_s() - busy0
    return _row(model, system, config, concurrency, ph, server_cpu, busy, check)


def _row(model: str, system: str, config: str, c: int, ph: sr.Phase, server_cpu: float, busy: float,
         check: str) -> sr.Row:
    lat = ph.latencies
    return sr.Row(model=model, system=system, config=config, concurrency=c, duration_s=round(ph.elapsed, 2),
                  requests=len(lat), errors=sum(ph.errors.values()),
                  rps=len(lat) / ph.elapsed if ph.elapsed else None, p50_ms=sr.pct(lat, 50), p99_ms=sr.pct(lat, 99),
                  mean_ms=float(np.mean(lat) * 1000) if lat else None,
                  client_cpu_pct=100.0 * ph.client_cpu_s / ph.elapsed, server_cpu_pct=100.0 * server_cpu / ph.elapsed,
                  other_cpu_pct=100.0 * (busy - server_cpu - ph.client_cpu_s) / ph.elapsed, check=check,
                  error_samples=[f"{n}x {t}" for t, n in ph.errors.most_common(3)])


def run(coro: Any) -> Any:
    return asyncio.run(coro)  # plain asyncio loop: grpc.aio's own integration, same for every cell


def shipyard_server(serve_repo: Path, model: str, args: argparse.Namespace, work: Path,
                    extra: list[str], label: str) -> tuple[sr.ServerProcess, str, str]:
    port, gport = sr.free_port(), sr.free_port()
    cmd = [sr.shipyard_bin(), "serve", "--repository", str(serve_repo), "--port", str(port), "--grpc-port",
           str(gport), "--models", model, "--threads", str(args.threads), "--max-batch-size", str(args.batch), *extra]
    server = sr.ServerProcess(label, cmd, work / "logs" / f"{label.replace(' ', '-')}.log")
    base = f"http://127.0.0.1:{port}"
    # Health needs no key; the server reports ready only after its models have loaded.
    server.wait_ready([f"{base}/v2/health/ready"], args.ready_timeout)
    return server, base, f"127.0.0.1:{gport}"


def shipyard_cells(model: str, serve_repo: Path, payload: dict[str, Any], args: argparse.Namespace,
                   work: Path) -> list[sr.Row]:
    rows: list[sr.Row] = []
    key_file = work / "keys.yaml"
    if key_file.exists():
        key_file.unlink()
    key = subprocess.run([sr.shipyard_bin(), "keys", "create", "--file", str(key_file), "--name", "bench"],
                         capture_output=True, text=True, check=True).stdout.strip()
    for system, extra, token in (("shipyard", [], None), ("shipyard+auth", ["--auth", str(key_file)], key)):
        server = None
        try:
            server, base, target = shipyard_server(serve_repo, model, args, work, extra, f"{system} {model}")
            auth = {"authorization": f"Bearer {token}"} if token else {}
            url = f"{base}/v2/models/{model}/infer"
            for c in args.concurrency:
                sr.log(f"  {system} {model} c={c} ...")
                rows.append(run(grpc_cell(model, system, "grpc", target, payload["grpc"], payload["output"],
                                          payload["ref"], c, args, server, token)))
                rows.append(run(http_cell(model, system, "rest-binary", url, payload["binary"],
                                          {**payload["binary_headers"], **auth}, payload["output"], payload["ref"],
                                          c, args, server)))
                if token is None:
                    rows.append(run(http_cell(model, system, "rest-json", url, payload["json"],
                                              {"content-type": "application/json"}, payload["output"],
                                              payload["ref"], c, args, server)))
        except Exception as e:  # noqa: BLE001 - one failed server must not stop the run
            sr.log(f"  FAILED {system} {model}: {e}")
        finally:
            if server is not None:
                server.stop()
    return rows


def mlserver_cells(model: str, onnx_path: Path, payload: dict[str, Any], args: argparse.Namespace,
                   work: Path) -> list[sr.Row]:
    sr.ensure_mlserver_venv()
    folder = work / "mlserver" / model
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    (folder / model).mkdir(parents=True)
    http_port, grpc_port, metrics_port = sr.free_port(), sr.free_port(), sr.free_port()
    (folder / "settings.json").write_text(json.dumps({
        "debug": False, "host": "127.0.0.1", "http_port": http_port, "grpc_port": grpc_port,
        "metrics_port": metrics_port, "parallel_workers": 1, "model_repository_root": str(folder),
        "load_models_at_startup": True}))
    (folder / model / "model-settings.json").write_text(json.dumps({
        "name": model, "implementation": "shipyard_bench_runtime.OnnxRuntimeModel",
        "max_batch_size": args.batch, "max_batch_time": args.mlserver_batch_time,
        "parameters": {"uri": str(onnx_path), "extra": {"intra_op_threads": args.threads, "offload": True,
                                                        "stats_path": str(folder / "batch_stats.json")}}}))
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    env["PYTHONPATH"] = str(sr.RUNTIME_DIR)
    env["PATH"] = f"{sr.MLSERVER_VENV / 'bin'}:{env.get('PATH', '')}"
    rows = []
    server = None
    try:
        server = sr.ServerProcess(f"mlserver {model}", [str(sr.MLSERVER_VENV / "bin" / "mlserver"), "start", str(folder)],
                                  work / "logs" / f"mlserver-grpc-{model}.log", cwd=folder, env=env)
        base = f"http://127.0.0.1:{http_port}"
        server.wait_ready([f"{base}/v2/health/ready", f"{base}/v2/models/{model}/ready"], args.ready_timeout)
        for c in args.concurrency:
            sr.log(f"  mlserver {model} c={c} ...")
            rows.append(run(grpc_cell(model, "mlserver", "grpc", f"127.0.0.1:{grpc_port}", payload["grpc"],
                                      payload["output"], payload["ref"], c, args, server, None)))
    except Exception as e:  # noqa: BLE001
        sr.log(f"  FAILED mlserver {model}: {e}")
    finally:
        if server is not None:
            server.stop()
    return rows


def ab_auth(model: str, serve_repo: Path, payload: dict[str, Any], args: argparse.Namespace,
            work: Path) -> list[dict[str, Any]]:
    """Auth off vs on, interleaved: the servers up at once, taking turns in --ab-seconds blocks for
    --ab-rounds rounds, so the noise of other work on the machine hits each alike. A second
    server without auth ("control") measures what the same setup reports for no change at all."""
    key_file = work / "keys-ab.yaml"
    if key_file.exists():
        key_file.unlink()
    key = subprocess.run([sr.shipyard_bin(), "keys", "create", "--file", str(key_file)],
                         capture_output=True, text=True, check=True).stdout.strip()
    servers = []
    try:
        for label, extra in (("off", []), ("on", ["--auth", str(key_file)]), ("control", [])):
            servers.append((label, *shipyard_server(serve_repo, model, args, work, extra, f"ab-{label} {model}")))
        c = max(args.concurrency)
        out = []
        for channel in ("grpc", "rest-binary"):
            rps: dict[str, list[float]] = {"off": [], "on": [], "control": []}
            for r in range(args.ab_rounds):
                order = servers[r % 3:] + servers[:r % 3]
                for label, _server, base, target in order:
                    token = key if label == "on" else None
                    if channel == "grpc":
                        async def go() -> sr.Phase:
                            async with grpc.aio.insecure_channel(target) as ch:
                                call = ch.unary_unary(INFER)
                                md = (("authorization", f"Bearer {token}"),) if token else None
                                await grpc_phase(call, payload["grpc"], md, c, 1.0)
                                return await grpc_phase(call, payload["grpc"], md, c, args.ab_seconds)
                    else:
                        async def go() -> sr.Phase:
                            import httpx

                            headers = {**payload["binary_headers"],
                                       **({"authorization": f"Bearer {token}"} if token else {})}
                            limits = httpx.Limits(max_connections=c, max_keepalive_connections=c)
                            async with httpx.AsyncClient(limits=limits, timeout=60, headers=headers) as cl:
                                url = f"{base}/v2/models/{model}/infer"
                                await sr.load_phase([cl], url, payload["binary"], c, 1.0)
                                return await sr.load_phase([cl], url, payload["binary"], c, args.ab_seconds)
                    ph = run(go())
                    if ph.errors:
                        raise RuntimeError(f"A/B {channel} auth {label}: {ph.errors.most_common(1)}")
                    rps[label].append(len(ph.latencies) / ph.elapsed)
            def change(a: str) -> float:
                return round(100 * (float(np.median([x / y for x, y in zip(rps[a], rps["off"], strict=True)])) - 1), 1)

            out.append({"model": model, "channel": channel, "c": c, "rps_off": rps["off"], "rps_on": rps["on"],
                        "rps_control": rps["control"], "median_change_pct": change("on"),
                        "control_change_pct": change("control")})
            sr.log(f"  A/B {model} {channel} c={c}: auth on/off median {out[-1]['median_change_pct']:+.1f}%, "
                   f"control (no change) {out[-1]['control_change_pct']:+.1f}%")
        return out
    finally:
        for _, server, _, _ in servers:
            server.stop()


def micro_costs(n: int = 20000) -> dict[str, float]:
    """Microseconds per request of what auth + metrics add on the hot path, timed in-process."""
    import tempfile

    from shipyard.serve.auth import Guard, create_key
    from shipyard.serve.metrics import Metrics

    class _Manager:
        models = {"digits": object()}

    metrics = Metrics(_Manager())  # type: ignore[arg-type]
    with tempfile.TemporaryDirectory() as d:
        key, _ = create_key(Path(d) / "k.yaml")
        guard = Guard(Path(d) / "k.yaml")
        observe = metrics.batch_observer("digits", 2)

        def timed(fn: Callable[[], None]) -> float:
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            return (time.perf_counter() - t0) / n * 1e6

        return {
            "guard.authorize (key check + channel + model)": timed(lambda: guard.authorize(key, "grpc_v2", "digits")),
            "metrics.record (counter + latency histogram)": timed(
                lambda: metrics.record("digits", 2, "grpc_v2", "success", time.perf_counter())),
            "batch observer (batch, inference, 1 queue wait)": timed(lambda: observe(1, 0.001, [0.0001])),
        }


def build(model: str, work: Path, serve_repo: Path) -> tuple[Path, dict[str, Any]]:
    onnx_path = sr.build_digits(work, False)[0] if model == "digits" else sr.build_bert(work, model, False)[0]
    sr.publish_for_shipyard(serve_repo, model, onnx_path)
    sess = sr.ort_session(onnx_path, 1)
    inputs = sr.make_inputs(sess, 1, seed=0)
    output = sess.get_outputs()[0].name
    ref = sess.run([output], {n: a for n, (_, a) in inputs.items()})[0]
    body, headers = binary_body(inputs)
    return onnx_path, {"json": sr.v2_body(inputs), "binary": body, "binary_headers": headers,
                       "grpc": grpc_request(model, inputs), "output": output, "ref": ref}


COLUMNS = ["model", "system", "channel", "c", "req/s", "p50 ms", "p99 ms", "errors", "check", "client %", "server %", "other %"]


def table_rows(rows: list[sr.Row]) -> list[list[str]]:
    f = sr._fmt  # noqa: SLF001 - same number format as the REST benchmark
    return [[r.model, r.system, r.config, str(r.concurrency), f(r.rps), f(r.p50_ms, 2), f(r.p99_ms, 2), str(r.errors),
             r.check[:30], f(r.client_cpu_pct, 0), f(r.server_cpu_pct, 0), f(r.other_cpu_pct, 0)] for r in rows]


def summary(rows: list[sr.Row], models: list[str], hi: int) -> list[str]:
    def rps(model: str, system: str, channel: str, c: int) -> float | None:
        return next((r.rps for r in rows if (r.model, r.system, r.config, r.concurrency) == (model, system, channel, c)), None)

    lines = []
    for m in models:
        ours, theirs = rps(m, "shipyard", "grpc", hi), rps(m, "mlserver", "grpc", hi)
        if ours and theirs:
            lines.append(f"{m} c={hi}: shipyard gRPC / MLServer gRPC = {ours / theirs:.2f}x (target >= 2x on digits)")
        for ch in ("grpc", "rest-binary"):
            base, auth = rps(m, "shipyard", ch, hi), rps(m, "shipyard+auth", ch, hi)
            if base and auth:
                lines.append(f"{m} c={hi} {ch}: with --auth {100 * (auth / base - 1):+.1f}% req/s (target: cost < 5%)")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["digits", "bert-small"], choices=["digits", "bert-small"])
    p.add_argument("--concurrency", nargs="+", type=int, default=[1, 16])
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=16, help="max batch size of both servers")
    p.add_argument("--mlserver-batch-time", type=float, default=0.002)
    p.add_argument("--ready-timeout", type=float, default=180.0)
    p.add_argument("--skip-mlserver", action="store_true")
    p.add_argument("--ab-rounds", type=int, default=6, help="interleaved auth off/on rounds (0: skip)")
    p.add_argument("--ab-seconds", type=float, default=4.0)
    p.add_argument("--work", type=Path, default=sr.DEFAULT_WORK)
    p.add_argument("--results", type=Path, default=sr.DEFAULT_RESULTS)
    args = p.parse_args(argv)
    work, serve_repo = args.work, args.work / "serve-repo"
    load0 = os.getloadavg()
    rows: list[sr.Row] = []
    ab: list[dict[str, Any]] = []
    lines: list[str] = []
    for model in args.models:
        sr.log(f"== {model}")
        onnx_path, payload = build(model, work, serve_repo)
        rows += shipyard_cells(model, serve_repo, payload, args, work)
        if not args.skip_mlserver:
            rows += mlserver_cells(model, onnx_path, payload, args, work)
        if args.ab_rounds > 0 and model == "digits":  # the cheapest model shows the overhead most
            ab += ab_auth(model, serve_repo, payload, args, work)
    micro = micro_costs()
    lines += [f"{a['model']} c={a['c']} {a['channel']}: auth on vs off, interleaved {args.ab_rounds} rounds: median "
              f"{a['median_change_pct']:+.1f}% req/s; an identical server without auth (control): "
              f"{a['control_change_pct']:+.1f}%" for a in ab]
    hi = max(args.concurrency)
    lines = summary(rows, args.models, hi) + lines
    meta = {"machine": sr.machine_info(), "versions": sr.versions(), "loadavg_before": load0,
            "loadavg_after": os.getloadavg(), "args": {k: str(v) for k, v in vars(args).items()},
            "command": " ".join([sys.executable, *sys.argv])}
    table = table_rows(rows)
    widths = [max(len(c), *(len(r[i]) for r in table)) if table else len(c) for i, c in enumerate(COLUMNS)]
    print("  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True)))
    for r in table:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    print("\nper-request cost of auth + metrics, in-process (us):")
    for k, v in micro.items():
        print(f"  {k}: {v:.2f}")
    print("\n" + "\n".join(lines))
    print(f"\nload average before {load0}, after {meta['loadavg_after']}")
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "serve_grpc.json").write_text(json.dumps(
        {"meta": meta, "rows": [asdict(r) for r in rows], "ab_auth": ab, "micro_us": micro, "summary": lines}, indent=2, default=str))
    md = ["# gRPC benchmark (bench/serve_grpc.py)", "", f"Command: `{meta['command']}`", "",
          f"Load average before/after: {load0} / {meta['loadavg_after']} (2 cores, shared with other work)", "",
          "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    md += ["| " + " | ".join(r) + " |" for r in table]
    md += ["", "Per-request cost of auth + metrics, timed in-process:", ""]
    md += [f"- {k}: {v:.2f} us" for k, v in micro.items()]
    md += ["", *[f"- {line}" for line in lines], ""]
    (args.results / "serve_grpc.md").write_text("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Interleaved A/B of shipyard server flag sets: on this noisy 2-core machine, figures from cells
run minutes apart differ by 10-30%, so this starts one server per flag set and alternates 5 s load
blocks between them (3 rounds after a 2 s warm-up), then prints each set's req/s and batch sizes.

Needs the models `bench/serve_rest.py` builds into bench/.work/serve-repo.

Usage:
  C=16 .venv/bin/python bench/ab_serve.py bert-small "--max-batch-size 32 --adaptive" "--max-batch-size 32 --no-adaptive"
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
import orjson

REPO = "bench/.work/serve-repo"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def body_for(model: str) -> bytes:
    if model == "digits":
        inputs = [{"name": "pixels", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": [0.5] * 64}]
    else:
        inputs = [{"name": "input_ids", "datatype": "INT64", "shape": [1, 128], "data": list(range(1000, 1128))},
                  {"name": "attention_mask", "datatype": "INT64", "shape": [1, 128], "data": [1] * 128}]
    return orjson.dumps({"inputs": inputs})


async def load(url: str, body: bytes, seconds: float, concurrency: int) -> float:
    clients = [httpx.AsyncClient(timeout=120) for _ in range(concurrency)]
    done = 0
    stop = time.perf_counter() + seconds

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal done
        while time.perf_counter() < stop:
            r = await client.post(url, content=body)
            r.raise_for_status()
            done += 1

    await asyncio.gather(*(worker(c) for c in clients))
    for c in clients:
        await c.aclose()
    return done / seconds


def main() -> None:
    model, flag_sets = sys.argv[1], [a.split() for a in sys.argv[2:]]
    concurrency = int(os.environ.get("C", "16"))
    servers = []
    for flags in flag_sets:
        port = free_port()
        proc = subprocess.Popen([".venv/bin/shipyard", "serve", "-r", REPO, "--port", str(port), "--models", model,
                                 "--threads", "2", *flags], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        servers.append((port, proc))
    try:
        for port, _ in servers:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "server not ready"
                time.sleep(0.2)
        body = body_for(model)
        urls = [f"http://127.0.0.1:{port}/v2/models/{model}/infer" for port, _ in servers]
        results: list[list[float]] = [[] for _ in servers]

        async def rounds() -> None:
            for url in urls:
                await load(url, body, 2, concurrency)
            for _ in range(3):
                for i, url in enumerate(urls):
                    results[i].append(await load(url, body, 5, concurrency))

        asyncio.run(rounds())
        for (port, _), flags, res in zip(servers, flag_sets, results, strict=True):
            stats = httpx.get(f"http://127.0.0.1:{port}/v2/models/{model}/stats").json()["model_stats"][0]
            print(f"{' '.join(flags):45s} c={concurrency} req/s {[round(x, 1) for x in res]} "
                  f"median {np.median(res):.1f}  batch sizes {stats['batch_sizes']}")
    finally:
        for _, proc in servers:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


if __name__ == "__main__":
    main()

"""Measuring a model version: size, parameters, latency, accuracy. The same code measures every
version, in the same process, after warm-up, so the numbers compare."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.repository import Manifest, Signature
from shipyard.runtimes import Runtime, RuntimeOptions, runtime_for


def open_runtime(path: Path, fmt: str, signature: Signature, threads: int) -> Runtime:
    """A runtime on files not (yet) in the repository, e.g. a staging folder."""
    manifest = Manifest(name="measure", version=1, format=fmt, files=[], signature=signature)
    runtime = runtime_for(manifest, path, RuntimeOptions(threads=threads))
    runtime.load()
    return runtime


def latency_ms(call: Callable[[], Any], warmup: int = 20, iterations: int = 200,
               budget_s: float = 2.0) -> dict[str, float]:
    """p50 and p99 of `call` in milliseconds, bounded by a time budget."""
    for _ in range(warmup):
        call()
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < iterations and (len(times) < 20 or time.perf_counter() < deadline):
        t = time.perf_counter()
        call()
        times.append((time.perf_counter() - t) * 1000)
    return {"p50": float(np.percentile(times, 50)), "p99": float(np.percentile(times, 99))}


def measure_classifier(runtime: Runtime, inputs: np.ndarray, labels: np.ndarray,
                       batch_sizes: tuple[int, ...] = (1, 32)) -> dict[str, Any]:
    """Accuracy on (inputs, labels) and latency at each batch size, for a one-input classifier."""
    name = runtime.signature.inputs[0].name
    out = runtime.signature.outputs[0].name
    logits = np.concatenate([
        runtime.infer({name: inputs[i : i + 256]}, [out])[out] for i in range(0, len(inputs), 256)
    ])
    metrics: dict[str, Any] = {"accuracy": float((logits.argmax(axis=1) == labels).mean())}
    for b in batch_sizes:
        batch = np.ascontiguousarray(np.resize(inputs, (b, *inputs.shape[1:])))
        lat = latency_ms(lambda batch=batch: runtime.infer({name: batch}, [out]))
        metrics[f"latency_b{b}_p50_ms"] = lat["p50"]
        metrics[f"latency_b{b}_p99_ms"] = lat["p99"]
    return metrics


def count_parameters_onnx(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return int(sum(int(np.prod(t.dims)) for t in model.graph.initializer))


def count_parameters_torch(module: Any) -> int:
    return int(sum(p.numel() for p in module.parameters()))

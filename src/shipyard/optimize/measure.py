"""Measuring a version folder (published or staged) the same way every time: size, parameters
(total and non-zero), latency p50/p99 at batch 1 and 32 after warm-up, and accuracy/loss on the eval
data. Without labels, accuracy is agreement with a reference's predictions (the parent's)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from shipyard import tasks
from shipyard.optimize import formats
from shipyard.optimize.data import Dataset
from shipyard.repository import Manifest, Signature
from shipyard.runtimes import RuntimeOptions, runtime_for
from shipyard.tasks import Task

REPORT_FILES = ("report.json", "report.html")
BATCHES = (1, 32)
SETTLE_S = 0.005  # longer than torch's OpenMP threads spin after their last parallel section


def _predict(runtime: Any, data: Dataset, out: str, batch: int = 256) -> np.ndarray:
    return np.concatenate([runtime.infer(b, [out])[out] for b in data.batches(batch)])


def _open(path: Path, fmt: str, signature: Signature, threads: int, extra: dict[str, Any] | None) -> Any:
    manifest = Manifest(name="measure", version=1, format=fmt, files=[], signature=signature, extra=extra or {})
    runtime = runtime_for(manifest, path, RuntimeOptions(threads=threads))
    runtime.load()
    return runtime


Versions = dict[str, tuple[Path, str, dict[str, Any]]]  # {key: (folder, format, manifest extra)}


@contextmanager
def _loaded_together(versions: Versions, signature: Signature, threads: int) -> Iterator[dict[str, Any]]:
    """The runtimes of `versions`, all loaded at once; every one that loaded is unloaded on the way
    out, also when a later one fails to load or timing fails."""
    runtimes: dict[str, Any] = {}
    try:
        for k, (path, fmt, extra) in versions.items():
            runtimes[k] = _open(path, fmt, signature, threads, extra)
        yield runtimes
    finally:
        for rt in runtimes.values():
            rt.unload()


ORIGINAL = "original"  # where an import keeps the file it converted (lineage, not size)


def _quality(runtime: Any, path: Path, fmt: str, signature: Signature, data: Dataset,
             reference: np.ndarray | None, task: Task | None = None,
             metric: Callable[..., Any] | None = None) -> tuple[dict[str, Any], np.ndarray]:
    """Size, parameters and the task's metrics (shipyard.tasks) of one version; its outputs."""
    out = signature.outputs[0].name
    outputs = _predict(runtime, data, out)
    metrics: dict[str, Any] = {}
    metrics["size_bytes"] = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()
                                and p.name not in REPORT_FILES and p.name != "manifest.json"
                                and ORIGINAL not in p.relative_to(path).parts)
    metrics["parameters"], metrics["nonzero_parameters"] = formats.count(path, fmt)
    task = task or tasks.get(tasks.infer(signature, data.labels, outputs)[0])
    metrics.update(task.evaluate(outputs, data.labels, reference))
    if metric is not None:
        metrics["metric"] = tasks.call_metric(metric, outputs, data.labels)
    return metrics, outputs


def _samples(call: Any, warmup: int, budget_s: float, least: int = 10, most: int = 200) -> list[float]:
    for _ in range(warmup):
        call()
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < most and (len(times) < least or time.perf_counter() < deadline):
        t = time.perf_counter()
        call()
        times.append((time.perf_counter() - t) * 1000)
    return times


def _latencies(runtimes: dict[str, Any], signature: Signature, data: Dataset, budget_s: float,
               rounds: int) -> dict[str, dict[str, float]]:
    """p50/p99 per runtime and batch size, timed in alternating rounds (A B C, B C A, ...) so that
    load from other processes that comes and goes weighs on every version alike: on a shared
    machine, versions timed one after the other were seen 5-50x apart from load alone."""
    out = signature.outputs[0].name
    result: dict[str, dict[str, float]] = {k: {} for k in runtimes}
    keys = list(runtimes)
    for b in BATCHES:
        batch = {k: np.ascontiguousarray(np.resize(v, (b, *v.shape[1:]))) for k, v in data.take(b).items()}
        times: dict[str, list[float]] = {k: [] for k in keys}
        for r in range(rounds):
            for k in keys[r % len(keys):] + keys[: r % len(keys)]:
                time.sleep(SETTLE_S)  # the last version's torch threads stop spinning (shipyard/__init__.py)
                call = lambda rt=runtimes[k], batch=batch: rt.infer(batch, [out])  # noqa: E731
                warmup = (5 if budget_s < 1 else 20) if r == 0 else 2
                times[k] += _samples(call, warmup, budget_s / rounds, least=max(3, 20 // rounds))
        for k in keys:
            result[k][f"latency_b{b}_p50_ms"] = float(np.percentile(times[k], 50))
            result[k][f"latency_b{b}_p99_ms"] = float(np.percentile(times[k], 99))
    return result


def measure(path: Path, fmt: str, signature: Signature, data: Dataset, threads: int,
            reference: np.ndarray | None = None, extra: dict[str, Any] | None = None,
            budget_s: float = 2.0, task: Task | None = None,
            metric: Callable[..., Any] | None = None) -> tuple[dict[str, Any], np.ndarray]:
    """Metrics of the version in `path` (the task's, agreement with `reference`'s outputs), and
    its outputs (the first output's, as the task reads them)."""
    runtime = _open(path, fmt, signature, threads, extra)
    try:
        metrics, preds = _quality(runtime, path, fmt, signature, data, reference, task, metric)
        metrics.update(_latencies({"v": runtime}, signature, data, budget_s, 1)["v"])
        return metrics, preds
    finally:
        runtime.unload()


def measure_side_by_side(versions: Versions, signature: Signature, data: Dataset, threads: int,
                         reference_key: str | None = None,
                         budget_s: float = 2.0, rounds: int = 4, task: Task | None = None,
                         metric: Callable[..., Any] | None = None) -> dict[str, dict[str, Any]]:
    """Metrics of several versions ({key: (folder, format, manifest extra)}) loaded together, their
    latencies timed in alternating rounds so their ratios hold on a machine whose load drifts.
    Agreement (and, without labels, accuracy and loss) is taken against `reference_key`'s outputs."""
    with _loaded_together(versions, signature, threads) as runtimes:
        metrics: dict[str, dict[str, Any]] = {}
        reference = None
        if reference_key is not None:
            out = signature.outputs[0].name
            reference = _predict(runtimes[reference_key], data, out)
            task = task or tasks.get(tasks.infer(signature, data.labels, reference)[0])
        for k, (path, fmt, _) in versions.items():
            metrics[k], _ = _quality(runtimes[k], path, fmt, signature, data, reference, task, metric)
        for k, lat in _latencies(runtimes, signature, data, budget_s, rounds).items():
            metrics[k].update(lat)
        return metrics


def latencies_side_by_side(versions: Versions, signature: Signature, data: Dataset, threads: int,
                           budget_s: float = 2.0, rounds: int = 4) -> dict[str, dict[str, float]]:
    """Latency p50/p99 at each batch size of several saved versions ({key: (folder, format, manifest
    extra)}), loaded together and timed in alternating rounds, then unloaded. Timed one after the
    other, versions a few microseconds apart are ranked by the machine's noise rather than by their
    speed; side by side, their ratios hold while the load drifts."""
    with _loaded_together(versions, signature, threads) as runtimes:
        return _latencies(runtimes, signature, data, budget_s, rounds)


DELTA_KEYS = ("size_bytes", "parameters", "nonzero_parameters", "latency_b1_p50_ms", "latency_b32_p50_ms",
              "accuracy", "loss", "agreement", "mse", "mae", "r2", "auc", "f1_macro", "top5", "perplexity",
              "cosine", "metric")


def deltas(new: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """new - base for each metric both have; 'speedup_*' and 'size_ratio' as ratios."""
    d: dict[str, Any] = {k: new[k] - base[k] for k in DELTA_KEYS
                         if isinstance(new.get(k), (int, float)) and isinstance(base.get(k), (int, float))}
    for b in BATCHES:
        k = f"latency_b{b}_p50_ms"
        if new.get(k) and base.get(k):
            d[f"speedup_b{b}"] = base[k] / new[k]
    if new.get("size_bytes") and base.get("size_bytes"):
        d["size_ratio"] = new["size_bytes"] / base["size_bytes"]
    return d

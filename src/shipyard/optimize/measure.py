"""Measuring a version folder (published or staged) the same way every time: size, parameters
(total and non-zero), latency p50/p99 at batch 1 and 32 after warm-up, and accuracy/loss on the eval
data. Without labels, accuracy is agreement with a reference's predictions (the parent's)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from shipyard.optimize.data import Dataset
from shipyard.optimize.evaluate import latency_ms
from shipyard.repository import Manifest, Signature
from shipyard.runtimes import RuntimeOptions, runtime_for

REPORT_FILES = ("report.json", "report.html")
BATCHES = (1, 32)


def count_parameters(path: Path, fmt: str) -> tuple[int, int]:
    """(total, non-zero) weight elements in the files of a version; quantization scales and
    zero points are not counted."""
    tensors: list[np.ndarray] = []
    if fmt == "onnx":
        import onnx
        from onnx import numpy_helper

        model = onnx.load(str(path / "model.onnx"))
        for t in model.graph.initializer:
            if t.name.endswith(("_scale", "_zero_point", "_quantized_scale")) or len(t.dims) == 0:
                continue
            tensors.append(numpy_helper.to_array(t))
        for s in model.graph.sparse_initializer:
            dense = int(np.prod(s.dims))
            nnz = int(np.prod(s.values.dims))
            tensors.append(np.concatenate([np.ones(nnz), np.zeros(dense - nnz)]))
    elif fmt == "torch-export":
        import torch

        program = torch.export.load(str(path / "model.pt2"))
        for name, t in program.state_dict.items():
            if name.endswith(("scales", "scales_zeros")):
                continue
            if name.endswith("qweight") and t.dtype == torch.uint8:  # int4 packed: two per byte
                tensors.append(np.ones(t.numel() * 2))
                continue
            tensors.append(t.detach().float().numpy())
        for t in program.constants.values():
            if hasattr(t, "numel"):
                tensors.append(t.detach().float().numpy())
    elif fmt == "hf-transformers":
        from safetensors.numpy import load_file

        for f in sorted(path.glob("*.safetensors")):
            tensors.extend(load_file(str(f)).values())
    total = int(sum(t.size for t in tensors))
    nonzero = int(sum(np.count_nonzero(t) for t in tensors))
    return total, nonzero


def _predict(runtime: Any, data: Dataset, out: str, batch: int = 256) -> np.ndarray:
    return np.concatenate([runtime.infer(b, [out])[out] for b in data.batches(batch)])


def _cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    z = logits.reshape(-1, logits.shape[-1]).astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(z)), labels.reshape(-1)].mean())


def measure(path: Path, fmt: str, signature: Signature, data: Dataset, threads: int,
            reference: np.ndarray | None = None, extra: dict[str, Any] | None = None,
            budget_s: float = 2.0) -> tuple[dict[str, Any], np.ndarray]:
    """Metrics of the version in `path`, and its predictions (argmax of the first output)."""
    manifest = Manifest(name="measure", version=1, format=fmt, files=[], signature=signature, extra=extra or {})
    runtime = runtime_for(manifest, path, RuntimeOptions(threads=threads))
    runtime.load()
    try:
        out = signature.outputs[0].name
        logits = _predict(runtime, data, out)
        preds = logits.argmax(axis=-1)
        metrics: dict[str, Any] = {}
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and p.name not in REPORT_FILES
                   and p.name != "manifest.json")
        metrics["size_bytes"] = size
        metrics["parameters"], metrics["nonzero_parameters"] = count_parameters(path, fmt)
        labels = data.labels if data.labels is not None else reference
        if labels is not None and logits.ndim >= 2 and labels.shape == preds.shape:
            metrics["accuracy"] = float((preds == labels).mean())
            metrics["loss"] = _cross_entropy(logits, labels)
        if reference is not None and reference.shape == preds.shape:
            metrics["agreement"] = float((preds == reference).mean())
        for b in BATCHES:
            batch = {k: np.ascontiguousarray(np.resize(v, (b, *v.shape[1:]))) for k, v in data.take(b).items()}
            lat = latency_ms(lambda batch=batch: runtime.infer(batch, [out]), budget_s=budget_s,
                             warmup=5 if budget_s < 1 else 20)
            metrics[f"latency_b{b}_p50_ms"] = lat["p50"]
            metrics[f"latency_b{b}_p99_ms"] = lat["p99"]
        return metrics, preds
    finally:
        runtime.unload()


DELTA_KEYS = ("size_bytes", "parameters", "nonzero_parameters", "latency_b1_p50_ms", "latency_b32_p50_ms",
              "accuracy", "loss")


def deltas(new: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """new - base for each metric both have; 'speedup_*' and 'size_ratio' as ratios."""
    d: dict[str, Any] = {k: new[k] - base[k] for k in DELTA_KEYS if k in new and k in base}
    for b in BATCHES:
        k = f"latency_b{b}_p50_ms"
        if new.get(k) and base.get(k):
            d[f"speedup_b{b}"] = base[k] / new[k]
    if new.get("size_bytes") and base.get("size_bytes"):
        d["size_ratio"] = new["size_bytes"] / base["size_bytes"]
    return d

"""Per-layer sensitivity: each weighted layer's ΔL (the task's loss, `shipyard.tasks`) when only
that layer is changed, for quantization (int8 per output channel, simulated on the weights) and
pruning (the `amount` of output channels of least importance zeroed, importance the L1 or L2 norm
of each channel's weights). Measured on a few eval samples, for at most `MAX_LAYERS` layers (the
largest), so it stays cheap; the report says when layers were left out. `--auto` orders its
fallback by it: the most sensitive layers go back to fp32 first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from shipyard import tasks
from shipyard.errors import InvalidInput
from shipyard.optimize.artifact import Artifact, quiet_session_options, torch_forward
from shipyard.optimize.data import Dataset
from shipyard.optimize.passes import Context, PassConfig
from shipyard.optimize.progress import Progress

MAX_LAYERS = 16
SAMPLES = 256
MAX_PARAMETERS = 20_000_000  # larger models are not measured (each layer costs a pass, or a new ORT session)
IMPORTANCE = ("l1", "l2")
WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")
_PRUNES = ("prune-structured", "prune-unstructured")


def check_importance(importance: str | None) -> str:
    if importance is None:
        return "l1"
    if importance not in IMPORTANCE:
        raise InvalidInput(f"--importance {importance!r}: use 'l1' or 'l2' (the norm of each channel's weights)")
    return importance


def with_importance(steps: list[PassConfig], importance: str | None) -> list[PassConfig]:
    """The recipe with `importance` set on its structured-pruning steps (when given)."""
    if importance is None:
        return steps
    check_importance(importance)
    return [s.model_copy(update={"importance": importance}) if s.name == "prune-structured" else s for s in steps]


def quantize_weight(w: np.ndarray, axis: int = 0) -> np.ndarray:
    """Symmetric int8 per output channel, back to float: what an int8 layer computes with."""
    moved = np.moveaxis(w, axis, 0)
    scale = np.abs(moved).reshape(len(moved), -1).max(axis=1) / 127.0
    scale = np.where(scale > 0, scale, 1.0).reshape(-1, *([1] * (moved.ndim - 1)))
    return np.moveaxis(np.clip(np.round(moved / scale), -127, 127) * scale, 0, axis).astype(w.dtype)


def channel_importance(w: np.ndarray, importance: str, axis: int = 0) -> np.ndarray:
    rows = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1).astype(np.float64)
    return np.abs(rows).sum(1) if importance == "l1" else np.sqrt((rows ** 2).sum(1))


def prune_weight(w: np.ndarray, amount: float, importance: str, axis: int = 0) -> np.ndarray:
    """The `amount` of output channels with the smallest norm set to zero."""
    scores = channel_importance(w, importance, axis)
    drop = np.argsort(scores, kind="stable")[: int(round(len(scores) * amount))]
    out = np.moveaxis(w.copy(), axis, 0)
    out[drop] = 0
    return np.moveaxis(out, 0, axis)


def _plan(steps: list[PassConfig]) -> dict[str, float]:
    """{'quantize': 0, 'prune': amount} for the kinds of change the recipe makes."""
    plan: dict[str, float] = {}
    for s in steps:
        if s.name == "quantize" and getattr(s, "mode", "") != "fp16":
            plan["quantize"] = 0.0
        elif s.name in _PRUNES:
            plan["prune"] = float(getattr(s, "amount", 0.5))
    return plan


def _loss(task: tasks.Task, out: np.ndarray, data: Dataset, base: np.ndarray) -> float:
    labels = data.labels[:len(out)] if data.labels is not None else None
    return task.loss(out, labels, soft=False) if labels is not None else task.loss(out, base, soft=True)


def measure_layers(layers: list[tuple[str, np.ndarray, int]], run: Callable[[str, np.ndarray | None], np.ndarray],
                   task: tasks.Task, data: Dataset, plan: dict[str, float], importance: str,
                   progress: Progress | None = None) -> dict[str, Any]:
    """ΔL of each layer ((name, weight, output axis), largest first, capped) changed alone;
    `run(name, weight)` gives the model's outputs with that weight (None: the original)."""
    total = len(layers)
    layers = sorted(layers, key=lambda layer: -layer[1].size)[:MAX_LAYERS]
    base = run("", None)
    base_loss = _loss(task, base, data, base)
    rows = []
    for name, w, axis in layers:
        if progress is not None:
            progress.update(f"sensitivity of {name}")
        row: dict[str, Any] = {"layer": name, "weights": int(w.size)}
        if "quantize" in plan:
            row["quantize"] = round(_loss(task, run(name, quantize_weight(w, axis)), data, base) - base_loss, 6)
        if "prune" in plan:
            row["prune"] = round(_loss(task, run(name, prune_weight(w, plan["prune"], importance, axis)), data, base)
                                 - base_loss, 6)
        rows.append(row)
    return {"criterion": importance, "changes": sorted(plan), "prune_amount": plan.get("prune"),
            "task": task.name, "samples": len(base), "layers": rows, "measured": len(rows), "total": total,
            "capped": total > len(rows)}


def torch_sensitivity(artifact: Artifact, task: tasks.Task, data: Dataset, plan: dict[str, float],
                      importance: str, progress: Progress | None = None) -> dict[str, Any]:
    import torch

    params = {n.removesuffix(".weight"): p for n, p in artifact.module.named_parameters()
              if n.endswith("weight") and p.ndim >= 2}
    call = torch_forward(artifact)
    feed = data.take(SAMPLES)
    args = [torch.from_numpy(feed[t.name]) for t in artifact.signature.inputs]

    def run(name: str, w: np.ndarray | None) -> np.ndarray:
        with torch.no_grad():
            if w is None:
                return np.asarray(call(*args)[0].float().numpy())
            p = params[name]
            saved = p.detach().clone()
            p.copy_(torch.from_numpy(w))
            try:
                return np.asarray(call(*args)[0].float().numpy())
            finally:
                p.copy_(saved)

    layers = [(n, p.detach().float().numpy().copy(), 0) for n, p in params.items()]
    return measure_layers(layers, run, task, data, plan, importance, progress)


def onnx_sensitivity(path: Any, task: tasks.Task, data: Dataset, plan: dict[str, float], importance: str,
                     threads: int = 1, progress: Progress | None = None) -> dict[str, Any]:
    """The same on an ONNX file: the weight initializer of each Conv/Gemm/MatMul node, by node name."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    layers, owner = [], {}
    for node in model.graph.node:
        if node.op_type in WEIGHTED_OPS and len(node.input) > 1 and node.input[1] in inits:
            w = numpy_helper.to_array(inits[node.input[1]])
            if w.ndim < 2 or w.dtype.kind != "f":
                continue
            trans_b = any(a.name == "transB" and a.i for a in node.attribute)
            axis = 0 if node.op_type == "Conv" or (node.op_type == "Gemm" and trans_b) else w.ndim - 1
            name = node.name or node.input[1]
            layers.append((name, w, axis))
            owner[name] = node.input[1]
    feed = data.take(SAMPLES)
    out_name = model.graph.output[0].name

    def run(name: str, w: np.ndarray | None) -> np.ndarray:
        tensor = inits[owner[name]] if w is not None else None
        saved = onnx.TensorProto()
        if tensor is not None:
            saved.CopyFrom(tensor)
            tensor.CopyFrom(numpy_helper.from_array(w, tensor.name))
        try:
            sess = ort.InferenceSession(model.SerializeToString(), quiet_session_options(threads),
                                        providers=["CPUExecutionProvider"])
            return np.asarray(sess.run([out_name], feed)[0])
        finally:
            if tensor is not None:
                tensor.CopyFrom(saved)

    return measure_layers(layers, run, task, data, plan, importance, progress)


def sensitivity_facts(artifact: Artifact, steps: list[PassConfig], ctx: Context, importance: str | None,
                      progress: Progress | None = None) -> None:
    """Measure the parent's per-layer sensitivity for the changes the recipe makes, into
    `ctx.facts['sensitivity']` and a note; nothing when the recipe neither quantizes nor prunes."""
    plan = _plan(steps)
    if not plan or ctx.eval_data is None or ctx.task is None or artifact.is_transformers:
        return
    task, criterion = tasks.get(ctx.task), check_importance(importance)
    size = (sum(p.numel() for p in artifact.module.parameters()) if artifact.kind == "torch"
            else artifact.onnx_path.stat().st_size // 4 if artifact.onnx_path is not None else 0)
    if size > MAX_PARAMETERS:
        ctx.note(f"per-layer sensitivity not measured: about {size:,} parameters, above the {MAX_PARAMETERS:,} "
                 "that keep it cheap")
        return
    if artifact.kind == "torch":
        facts = torch_sensitivity(artifact, task, ctx.eval_data, plan, criterion, progress)
    elif artifact.onnx_path is not None:
        facts = onnx_sensitivity(artifact.onnx_path, task, ctx.eval_data, plan, criterion, ctx.threads, progress)
    else:
        return
    ctx.facts["sensitivity"] = facts
    if facts["layers"]:
        key = "quantize" if "quantize" in plan else "prune"
        worst = max(facts["layers"], key=lambda r: r[key])
        ctx.note(f"sensitivity ({key}, {criterion} importance): {facts['measured']} of {facts['total']} layers measured "
                 + (f"(the largest; capped at {MAX_LAYERS}) " if facts["capped"] else "")
                 + f"on {facts['samples']} samples; most sensitive {worst['layer']} (ΔL {worst[key]:+.4g})")

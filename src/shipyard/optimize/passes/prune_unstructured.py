"""Unstructured magnitude pruning: zero the smallest weights (globally or per layer, L1). Zeros
alone save nothing, so ONNX results store mostly-zero weights as ONNX sparse initializers (values
plus int16/int32 flat indices; ONNX Runtime densifies them at load; the `sparse` mark set here is
read by `optimize/formats/onnx.py` when it saves): the file really shrinks. The
latency does not change: dense kernels still multiply the zeros (say so in the report)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from shipyard.errors import InvalidInput
from shipyard.optimize.artifact import Artifact
from shipyard.optimize.passes.base import TORCH, Context, PassConfig, register

WEIGHT_OPS = {"Conv", "Gemm", "MatMul", "ConvTranspose"}


class PruneUnstructured(PassConfig):
    """Zero the smallest-magnitude weights of conv/linear layers."""

    name: ClassVar[str] = "prune-unstructured"
    accepts: ClassVar[frozenset[str] | None] = TORCH | {"onnx"}
    amount: float = Field(0.5, ge=0.0, lt=1.0, description="Fraction of weights set to zero.")
    scope: Literal["global", "layer"] = Field("global", description="One threshold for all layers, or the same fraction in each.")
    fine_tune_epochs: int = Field(0, ge=0, le=1000, description="Epochs of fine-tuning on --train data, keeping zeros at zero (PyTorch models).")
    lr: float = Field(1e-3, gt=0, le=1.0, description="Fine-tuning learning rate.")
    batch_size: int = Field(64, ge=1, le=65536, description="Fine-tuning batch size.")


def _masks(weights: dict[str, np.ndarray], amount: float, scope: str) -> dict[str, np.ndarray]:
    if scope == "global":
        flat = np.concatenate([np.abs(w).reshape(-1) for w in weights.values()])
        k = int(len(flat) * amount)
        threshold = np.partition(flat, k)[k] if k else -1.0
        return {n: np.abs(w) > threshold if k else np.ones_like(w, bool) for n, w in weights.items()}
    out = {}
    for n, w in weights.items():
        k = int(w.size * amount)
        t = np.partition(np.abs(w).reshape(-1), k)[k] if k else -1.0
        out[n] = np.abs(w) > t if k else np.ones_like(w, bool)
    return out


def _torch(artifact: Artifact, config: PruneUnstructured, ctx: Context) -> dict[str, Any]:
    import torch

    params = {n: p for n, p in artifact.module.named_parameters() if p.dim() > 1 and "embed" not in n and "wte" not in n and "wpe" not in n}
    if not params:
        raise InvalidInput("pass 'prune-unstructured' found no weight matrices to prune")
    masks = _masks({n: p.detach().numpy() for n, p in params.items()}, config.amount, config.scope)
    tmasks = {n: torch.from_numpy(m) for n, m in masks.items()}
    with torch.no_grad():
        for n, p in params.items():
            p.mul_(tmasks[n])
    if config.fine_tune_epochs:
        from shipyard.optimize.passes.prune_structured import fine_tune

        hooks = [p.register_hook(lambda g, m=tmasks[n]: g * m) for n, p in params.items()]
        try:
            fine_tune(artifact, config, ctx)  # type: ignore[arg-type]
        finally:
            for h in hooks:
                h.remove()
        with torch.no_grad():  # AdamW's weight decay moves zeros by a hair: put them back
            for n, p in params.items():
                p.mul_(tmasks[n])
    return {n: float(1 - m.mean()) for n, m in masks.items()}


def _onnx(artifact: Artifact, config: PruneUnstructured, ctx: Context) -> tuple[Artifact, dict[str, Any]]:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(artifact.onnx_path))
    inits = {t.name: t for t in model.graph.initializer}
    names = {i for n in model.graph.node if n.op_type in WEIGHT_OPS for i in n.input[1:2] if i in inits}
    weights = {n: numpy_helper.to_array(inits[n]) for n in names if inits[n].data_type == onnx.TensorProto.FLOAT}
    if not weights:
        raise InvalidInput("pass 'prune-unstructured' found no fp32 Conv/Gemm/MatMul weights in the ONNX graph "
                           "(quantized graphs cannot be pruned: prune before quantizing)")
    masks = _masks(weights, config.amount, config.scope)
    for n, w in weights.items():
        inits[n].CopyFrom(numpy_helper.from_array((w * masks[n]).astype(np.float32), n))
    out = ctx.path("pruned", ".onnx")
    onnx.save(model, str(out))
    return artifact.evolve(onnx_path=out), {n: float(1 - m.mean()) for n, m in masks.items()}


@register(PruneUnstructured)
def prune_unstructured(artifact: Artifact, config: PruneUnstructured, ctx: Context) -> Artifact:
    if artifact.kind == "torch":
        sparsity = _torch(artifact, config, ctx)
        out = artifact
    else:
        if config.fine_tune_epochs:
            raise InvalidInput("pass 'prune-unstructured': fine-tuning needs a PyTorch model; prune before the export pass")
        out, sparsity = _onnx(artifact, config, ctx)
    ctx.facts["sparsity"] = sparsity
    ctx.note(f"unstructured pruning ({config.scope}, L1) zeroed {config.amount:.0%} of the weights; "
             "dense kernels still multiply zeros, so expect no speed-up. ONNX files store them sparsely; "
             "a torch.export file does not shrink (export to ONNX to get the smaller file)")
    return out.evolve(extra={"sparse": True})


"""Weight clipping: clamp each conv/linear weight to [-t, t], with t given or taken as a percentile
of the layer's |w| (PyTorch parameters, or the ONNX initializers of Conv/Gemm/MatMul nodes).
Mostly a preparation for quantization (outliers stretch int8 scales)."""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field, model_validator

from shipyard.optimize.artifact import Artifact
from shipyard.optimize.passes import onnx_weights
from shipyard.optimize.passes.base import TORCH, Context, PassConfig, register


class Clip(PassConfig):
    """Clamp weights to a threshold or a per-layer percentile of their magnitude."""

    name: ClassVar[str] = "clip"
    accepts: ClassVar[frozenset[str] | None] = TORCH | {"onnx"}
    threshold: float | None = Field(None, gt=0, description="Absolute bound t: weights are clamped to [-t, t].")
    percentile: float | None = Field(None, gt=50, le=100, description="Or: t is this percentile of each layer's |w|.")

    @model_validator(mode="after")
    def _one(self) -> Clip:
        if (self.threshold is None) == (self.percentile is None):
            raise ValueError("give exactly one of 'threshold' or 'percentile'")
        return self


@register(Clip)
def clip(artifact: Artifact, config: Clip, ctx: Context) -> Artifact:
    clipped: dict[str, float] = {}
    if artifact.kind == "onnx":  # the Conv/Gemm/MatMul initializers, in the graph itself
        artifact, clipped = onnx_weights.clip(artifact, config.threshold, config.percentile, ctx)
        _note(config, clipped, ctx)
        return artifact
    with torch.no_grad():
        for name, p in artifact.module.named_parameters():
            if p.dim() < 2:
                continue
            if config.threshold is not None:
                t = config.threshold
            else:
                t = float(torch.quantile(p.detach().abs().reshape(-1)[:16_000_000].float(), config.percentile / 100))
            clipped[name] = float((p.abs() > t).float().mean())
            p.clamp_(-t, t)
    _note(config, clipped, ctx)
    return artifact


def _note(config: Clip, clipped: dict[str, float], ctx: Context) -> None:
    ctx.facts["clip"] = clipped
    ctx.note(f"clipped weights of {len(clipped)} tensors to "
             + (f"±{config.threshold:g}" if config.threshold else f"their {config.percentile:g}th percentile of |w|")
             + f"; at most {max(clipped.values(), default=0):.2%} of a tensor's values moved")

"""Low-rank factorisation of Linear layers by truncated SVD: W (m x n) ~ U_r S_r V_r^T becomes two
Linears (n -> r -> m), or, in an ONNX graph, a MatMul/Gemm into two MatMuls (`onnx_weights.py`).
It only pays when r (m + n) < m n, i.e. r < mn/(m+n): below that both FLOPs and bytes drop; other
layers stay whole."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from pydantic import Field, model_validator
from torch import nn

from shipyard.errors import InvalidInput
from shipyard.optimize.artifact import Artifact
from shipyard.optimize.passes import onnx_weights
from shipyard.optimize.passes.base import TORCH, Context, PassConfig, register
from shipyard.optimize.passes.graph import linears_as_modules
from shipyard.quant.weight_only import conv1d_to_linear_


class LowRank(PassConfig):
    """Factor Linear weights by truncated SVD."""

    name: ClassVar[str] = "low-rank"
    accepts: ClassVar[frozenset[str] | None] = TORCH | {"onnx"}
    energy: float | None = Field(0.9, gt=0.0, le=1.0, description="Keep the smallest rank whose singular values hold this fraction of the squared-norm energy.")
    ratio: float | None = Field(None, gt=0.0, le=1.0, description="Or: keep this fraction of min(m, n) singular values.")
    exclude: list[str] = Field(default_factory=list, description="Linear layer names left whole.")

    @model_validator(mode="after")
    def _one(self) -> LowRank:
        if self.ratio is not None and "energy" not in self.model_fields_set:
            object.__setattr__(self, "energy", None)
        if (self.energy is None) == (self.ratio is None):
            raise ValueError("give exactly one of 'energy' or 'ratio'")
        return self


def rank_for(s: torch.Tensor, config: LowRank) -> int:
    if config.ratio is not None:
        return max(1, math.ceil(config.ratio * len(s)))
    e = torch.cumsum(s.double() ** 2, 0) / (s.double() ** 2).sum()
    return int(torch.searchsorted(e, torch.tensor(config.energy, dtype=e.dtype)).item()) + 1


def factor(lin: nn.Linear, r: int) -> nn.Sequential:
    u, s, vh = torch.linalg.svd(lin.weight.detach().double(), full_matrices=False)
    root = s[:r].sqrt()
    first = nn.Linear(lin.in_features, r, bias=False)
    second = nn.Linear(r, lin.out_features, bias=lin.bias is not None)
    first.weight = nn.Parameter((root[:, None] * vh[:r]).float())
    second.weight = nn.Parameter((u[:, :r] * root[None, :]).float())
    if lin.bias is not None:
        second.bias = nn.Parameter(lin.bias.detach().clone())
    return nn.Sequential(first, second)


@register(LowRank)
def low_rank(artifact: Artifact, config: LowRank, ctx: Context) -> Artifact:
    if artifact.kind == "onnx":
        return _onnx(artifact, config, ctx)
    module = linears_as_modules(artifact.module)
    conv1d_to_linear_(module)
    done: dict[str, Any] = {}
    skipped: list[str] = []
    uses: dict[int, int] = {}
    for _, p in module.named_parameters(remove_duplicate=False):
        uses[id(p)] = uses.get(id(p), 0) + 1
    tied: list[str] = []
    for name, lin in [(n, m) for n, m in module.named_modules() if isinstance(m, nn.Linear)]:
        if name in config.exclude:
            continue
        if uses.get(id(lin.weight), 0) > 1:  # GPT-2's lm_head is its token embedding
            tied.append(name)  # factoring it would store the factors beside the embedding
            continue
        m_, n_ = lin.out_features, lin.in_features
        s = torch.linalg.svdvals(lin.weight.detach().double())
        r = rank_for(s, config)
        if not onnx_weights.pays(r, m_, n_):  # factoring would add FLOPs and bytes
            skipped.append(name)
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, attr, factor(lin, r))
        done[name] = {"shape": [m_, n_], "rank": r, "params_before": m_ * n_, "params_after": r * (m_ + n_)}
    if not done:
        raise InvalidInput(f"pass 'low-rank' factored no layer: at {config.energy or config.ratio} every rank "
                           f"r stays above mn/(m+n) (layers: {skipped}" + (f"; tied, left whole: {tied}" if tied else "") +
                           "); lower 'energy' or set 'ratio'")
    ctx.facts["low_rank"] = {"factored": done, "kept": skipped, "tied": tied}
    ctx.note(f"low-rank SVD factored {len(done)} Linear layers (" +
             ", ".join(f"{k} r={v['rank']}" for k, v in done.items()) +
             f"); {len(skipped)} kept whole where r >= mn/(m+n)" +
             (f"; left whole as tied to another layer (factoring would add its factors beside the shared "
              f"weight): {tied}" if tied else ""))
    return artifact.evolve(module=module, extra={"save_as": "torch-export"})


def _onnx(artifact: Artifact, config: LowRank, ctx: Context) -> Artifact:
    out, done, kept, convs = onnx_weights.low_rank(artifact, config.energy, config.ratio, config.exclude, ctx)
    if not done:
        raise InvalidInput(f"pass 'low-rank' factored no layer: at {config.energy or config.ratio} every MatMul/Gemm "
                           f"rank r stays at or above mn/(m+n), where factoring would add FLOPs and bytes (layers: "
                           f"{kept}" + (f"; Conv layers are not factored: {convs}" if convs else "") +
                           "); lower 'energy' or set 'ratio'")
    ctx.facts["low_rank"] = {"factored": done, "kept": kept, "conv_kept": convs}
    ctx.note(f"low-rank SVD factored {len(done)} MatMul/Gemm layers of the ONNX graph (" +
             ", ".join(f"{k} r={v['rank']}" for k, v in done.items()) +
             f"); {len(kept)} kept whole where r >= mn/(m+n)" + (f"; Conv layers left whole: {convs}" if convs else ""))
    return out

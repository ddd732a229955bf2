"""GPT-2 (config.json model_type "gpt2"): a fused q/k/v projection (c_attn), learned position
embeddings added to the token embeddings, LayerNorms, a GELU MLP (c_fc, c_proj)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from shipyard.generate.families.base import Embed, Family, Layer, Shape
from shipyard.generate.lean import PackedLinear, Rows, direct

# transformers' names for GELU's tanh approximation. gelu_new (GPT-2's) writes it as eight elementwise
# ops; F.gelu(approximate="tanh") computes the same function in one, as transformers' own
# gelu_pytorch_tanh does.
GELU_TANH = ("gelu_new", "gelu_pytorch_tanh")


def fuse_gelu_(mlp: nn.Module) -> str:
    """Compute a GPT-2 MLP's tanh GELU in one op, or inside its first matmul when that is a
    `PackedLinear` (a oneDNN post-op: no extra pass over the activations). Returns what was done."""
    if isinstance(mlp.c_fc, PackedLinear):
        mlp.c_fc.activation = ("gelu", "tanh")
        mlp.act = nn.Identity()
        return "fused"
    mlp.act = nn.GELU(approximate="tanh")
    return "one op"


class GPT2(Family):
    name = "gpt2"

    def check(self, model: nn.Module) -> None:
        cfg = model.config
        if cfg.scale_attn_by_inverse_layer_idx or cfg.reorder_and_upcast_attn:
            raise ValueError("GPT-2 variants with scale_attn_by_inverse_layer_idx or "
                             "reorder_and_upcast_attn are not supported by shipyard.generate")

    def max_positions(self, config: Any) -> int:
        return int(config.n_positions)

    def scale(self, config: Any, shape: Shape) -> float:
        return float(shape.head_dim ** -0.5 if config.scale_attn_weights else 1.0)

    def prepare_(self, model: nn.Module) -> None:
        if model.config.activation_function in GELU_TANH:
            for block in model.transformer.h:
                fuse_gelu_(block.mlp)

    def blocks(self, model: nn.Module) -> Sequence[nn.Module]:
        return list(model.transformer.h)

    def layer(self, block: nn.Module, shape: Shape) -> Layer:
        heads, dim = shape.heads, shape.head_dim
        width = heads * dim
        c_attn = direct(block.attn.c_attn)

        def qkv(x: torch.Tensor, pos: None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            q, k, v = c_attn(x).split(width, dim=-1)
            t = x.shape[0]
            return q.view(t, heads, dim), k.view(t, heads, dim), v.view(t, heads, dim)

        fc, proj = direct(block.mlp.c_fc), direct(block.mlp.c_proj)
        act = None if isinstance(block.mlp.act, nn.Identity) else direct(block.mlp.act)
        mlp = (lambda x: proj(fc(x))) if act is None else (lambda x: proj(act(fc(x))))  # eval: no dropout
        return Layer(direct(block.ln_1), qkv, direct(block.attn.c_proj), direct(block.ln_2), mlp)

    def embed(self, model: nn.Module) -> Embed:
        wte, wpe = model.transformer.wte, model.transformer.wpe
        return lambda input_ids, positions: wte(input_ids) + wpe(positions)

    def final_norm(self, model: nn.Module) -> Rows:
        return direct(model.transformer.ln_f)


FAMILY = GPT2()

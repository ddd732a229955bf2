"""Llama (config.json model_type "llama"): separate q/k/v projections with grouped-query heads,
rotary positions (transformers' own rotary embedding and rotate_half), RMSNorms, a gated SiLU MLP
(gate_proj, up_proj, down_proj)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from shipyard.generate.families.base import Embed, Family, Layer, Shape, StepPositions
from shipyard.generate.lean import Rows, direct


class Llama(Family):
    name = "llama"

    def max_positions(self, config: Any) -> int:
        return int(config.max_position_embeddings)

    def blocks(self, model: nn.Module) -> Sequence[nn.Module]:
        return list(model.model.layers)

    def layer(self, block: nn.Module, shape: Shape) -> Layer:
        from transformers.models.llama.modeling_llama import rotate_half

        attn, heads, kv_heads, dim = block.self_attn, shape.heads, shape.kv_heads, shape.head_dim
        q_proj, k_proj, v_proj = direct(attn.q_proj), direct(attn.k_proj), direct(attn.v_proj)

        def qkv(x: torch.Tensor, pos: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor,
                                                                                  torch.Tensor]:
            t = x.shape[0]
            q, k, v = q_proj(x).view(t, heads, dim), k_proj(x).view(t, kv_heads, dim), v_proj(x).view(t, kv_heads, dim)
            cos, sin = pos
            return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin, v

        gate, up, down, act = (direct(block.mlp.gate_proj), direct(block.mlp.up_proj), direct(block.mlp.down_proj),
                               direct(block.mlp.act_fn))
        return Layer(direct(block.input_layernorm), qkv, direct(attn.o_proj), direct(block.post_attention_layernorm),
                     lambda x: down(act(gate(x)) * up(x)))

    def embed(self, model: nn.Module) -> Embed:
        embed_tokens = model.model.embed_tokens
        return lambda input_ids, positions: embed_tokens(input_ids)

    def positions(self, model: nn.Module) -> StepPositions:
        rotary = model.model.rotary_emb

        def rope(h: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            cos, sin = rotary(h, positions[None])
            return cos[0][:, None, :], sin[0][:, None, :]  # [T, 1, D]: broadcast over the heads

        return rope

    def final_norm(self, model: nn.Module) -> Rows:
        return direct(model.model.norm)


FAMILY = Llama()

"""Removing attention heads and FFN neurons from transformers models (BERT-style encoders and
GPT-2-style decoders) by slicing their Linear layers. Importance is weight magnitude (L1 of the
rows that produce a head or neuron plus the columns that read it), so no data is needed."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from shipyard.errors import InvalidInput
from shipyard.optimize.passes.base import Context
from shipyard.quant.weight_only import conv1d_to_linear_


def _rows(lin: nn.Linear, keep: torch.Tensor) -> None:
    lin.weight = nn.Parameter(lin.weight.detach()[keep].clone())
    if lin.bias is not None:
        lin.bias = nn.Parameter(lin.bias.detach()[keep].clone())
    lin.out_features = len(keep)


def _cols(lin: nn.Linear, keep: torch.Tensor) -> None:
    lin.weight = nn.Parameter(lin.weight.detach()[:, keep].clone())
    lin.in_features = len(keep)


def _top(scores: torch.Tensor, amount: float) -> torch.Tensor:
    n = max(1, round(len(scores) * (1 - amount)))
    return torch.sort(torch.topk(scores, n).indices).values


def _expand(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    return (heads[:, None] * head_dim + torch.arange(head_dim)[None, :]).reshape(-1)


def _bert_heads(attn: nn.Module, amount: float) -> tuple[int, int]:
    sa, out = attn.self, attn.output.dense
    d, h = sa.attention_head_size, sa.num_attention_heads
    score = sum(m.weight.detach().abs().reshape(h, d, -1).sum(dim=(1, 2)) for m in (sa.query, sa.key, sa.value))
    score = score + out.weight.detach().abs().reshape(out.out_features, h, d).sum(dim=(0, 2))
    heads = _top(score, amount)
    idx = _expand(heads, d)
    for m in (sa.query, sa.key, sa.value):
        _rows(m, idx)
    _cols(out, idx)
    sa.num_attention_heads, sa.all_head_size = len(heads), len(heads) * d
    return h, len(heads)


def _gpt2_heads(attn: nn.Module, amount: float) -> tuple[int, int]:
    d, h, e = attn.head_dim, attn.num_heads, attn.split_size
    w = attn.c_attn.weight.detach().abs().reshape(3, h, d, -1).sum(dim=(0, 2, 3))
    score = w + attn.c_proj.weight.detach().abs().reshape(-1, h, d).sum(dim=(0, 2))
    heads = _top(score, amount)
    idx = _expand(heads, d)
    _rows(attn.c_attn, torch.cat([idx + i * e for i in range(3)]))
    _cols(attn.c_proj, idx)
    attn.num_heads, attn.split_size = len(heads), len(heads) * d
    return h, len(heads)


def _ffn(up: nn.Linear, down: nn.Linear, amount: float) -> tuple[int, int]:
    score = up.weight.detach().abs().sum(dim=1) + down.weight.detach().abs().sum(dim=0)
    keep = _top(score, amount)
    n = up.out_features
    _rows(up, keep)
    _cols(down, keep)
    return n, len(keep)


def prune_transformer(model: nn.Module, heads: float, ffn: float, ctx: Context) -> dict[str, Any]:
    conv1d_to_linear_(model)
    done: dict[str, list[int]] = {}
    for name, m in list(model.named_modules()):
        if heads and hasattr(m, "self") and hasattr(m.self, "query") and hasattr(m, "output"):
            done[f"{name}.heads"] = list(_bert_heads(m, heads))
        elif heads and hasattr(m, "c_attn") and hasattr(m, "num_heads") and isinstance(m.c_attn, nn.Linear):
            done[f"{name}.heads"] = list(_gpt2_heads(m, heads))
        if ffn and hasattr(m, "intermediate") and hasattr(m, "output") and hasattr(m.output, "dense"):
            done[f"{name}.ffn"] = list(_ffn(m.intermediate.dense, m.output.dense, ffn))
        elif ffn and hasattr(m, "c_fc") and isinstance(m.c_fc, nn.Linear):
            done[f"{name}.ffn"] = list(_ffn(m.c_fc, m.c_proj, ffn))
    if not done:
        raise InvalidInput(
            f"pass 'prune-structured' knows no attention/FFN layout in {type(model).__name__}; it prunes "
            "BERT-style (attention.self.query/key/value, intermediate/output.dense) and GPT-2-style "
            "(attn.c_attn/c_proj, mlp.c_fc/c_proj) layers. Export to torch.export for channel pruning")
    h = [v for k, v in done.items() if k.endswith("heads")]
    f = [v for k, v in done.items() if k.endswith("ffn")]
    ctx.note(f"transformer pruning (L1 magnitude): {len(h)} attention layers"
             + (f" {h[0][0]}->{h[0][1]} heads" if h else "") + f", {len(f)} FFN layers"
             + (f" {f[0][0]}->{f[0][1]} neurons" if f else ""))
    return {"pruned": done}

"""Running a Hugging Face causal LM over the paged KV cache.

transformers' own caches grow one contiguous tensor per layer for a fixed batch: sequences cannot
join or leave between steps. So this module calls the model's own submodules (embeddings, norms,
projections, MLPs, rotary embedding: the weights and math stay transformers'), laid out by the
model's family (`shipyard.generate.families`), and does only the attention itself, over the block
table. One step runs every scheduled sequence as one flat batch of tokens: the projections and
MLPs see all rows at once; attention runs once for all decoders (one query each, keys gathered
from their blocks) and once per prefill chunk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from shipyard.generate.families.base import Family
from shipyard.generate.kv_cache import BlockPool
from shipyard.generate.lean import pack_linears_, packed_linears_available


@dataclass
class Segment:
    """One sequence's share of a step: `length` new tokens starting at position `start`."""

    tokens: list[int]
    start: int
    blocks: list[int]
    wants_logits: bool

    @property
    def length(self) -> int:
        return len(self.tokens)

    @property
    def is_decode(self) -> bool:
        """One new token after cached ones: batched with the other decoders' attention."""
        return self.length == 1 and self.start > 0


@dataclass
class StepBatch:
    input_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]
    write_slots: torch.Tensor  # [T] where each new token's key/value goes
    decodes: int  # the first `decodes` rows are single-token decoders
    decode_slots: torch.Tensor | None = None  # [B, L] cache slots each decoder attends to (torch path)
    decode_mask: torch.Tensor | None = None  # [B, 1, 1, L] True where the slot is part of the sequence
    decode_plan: Any = None  # native.DecodePlan, when the native kernel attends
    prefills: list[tuple[int, int, torch.Tensor, torch.Tensor | None]] = field(default_factory=list)
    logit_rows: torch.Tensor | None = None  # rows whose next-token logits are wanted


class PagedLM:
    """A loaded HF causal LM bound to a `BlockPool`, driven through its `family` (see
    `shipyard.generate.families`): the family's callables are resolved here, once."""

    def __init__(self, model: nn.Module, family: Family, pool_budget_bytes: int, block_size: int,
                 max_blocks: int, pack_linears: bool = False, attention: str = "torch") -> None:
        self.model = model
        self.packed = pack_linears_(model) if pack_linears and packed_linears_available() else 0
        self.family = family
        family.check(model)
        cfg = model.config
        shape = family.shape(cfg)
        self.heads, self.kv_heads, self.head_dim = shape.heads, shape.kv_heads, shape.head_dim
        self.vocab_size = int(cfg.vocab_size)
        self.max_positions = family.max_positions(cfg)
        self.scale = family.scale(cfg, shape)
        family.prepare_(model)
        self.embed = family.embed(model)
        self.step_positions = family.positions(model)
        self.layers = [family.layer(block, shape) for block in family.blocks(model)]
        self.final_norm = family.final_norm(model)
        self.lm_head = family.head(model)
        dtype = next(model.parameters()).dtype
        self.pool = BlockPool(len(self.layers), self.kv_heads, self.head_dim, block_size,
                              pool_budget_bytes, max_blocks, dtype)
        self.native_attention, self.attention_note = self._choose_attention(attention, dtype)

    @staticmethod
    def _choose_attention(asked: str, dtype: torch.dtype) -> tuple[bool, str]:
        """Decode attention by shipyard's kernel (reads keys and values in place in their blocks) or
        by gathering them for torch's scaled_dot_product_attention. 'auto' takes the kernel when it
        builds here and the cache is fp32; 'native' insists."""
        if asked == "torch":
            return False, "torch (as configured)"
        from shipyard.kernels import native

        why = native.available() if dtype == torch.float32 else f"the kernel is fp32 only (this cache is {dtype})"
        if why is None:
            return True, "native paged kernel"
        if asked == "native":
            from shipyard.errors import InvalidInput

            raise InvalidInput(f"attention_kernel 'native' is not available: {why}")
        return False, f"torch ({why})"

    # -- one step --------------------------------------------------------------------------
    def slot(self, blocks: list[int], position: int) -> int:
        bs = self.pool.block_size
        return blocks[position // bs] * bs + position % bs

    def prepare(self, segments: list[Segment]) -> StepBatch:
        """Flatten the step's segments (decoders first) into index tensors shared by all layers."""
        bs = self.pool.block_size
        ids: list[int] = []
        pos: list[int] = []
        write: list[int] = []
        logit_rows: list[int] = []
        decoders = [s for s in segments if s.is_decode]
        others = [s for s in segments if not s.is_decode]
        for s in decoders + others:
            for i, tok in enumerate(s.tokens):
                p = s.start + i
                ids.append(tok)
                pos.append(p)
                write.append(s.blocks[p // bs] * bs + p % bs)
            if s.wants_logits:
                logit_rows.append(len(ids) - 1)
        batch = StepBatch(torch.tensor(ids), torch.tensor(pos), torch.tensor(write), len(decoders))
        if decoders:
            longest = max(s.start + 1 for s in decoders)
            width = self.pool.blocks_for(longest)
            table = torch.tensor([(s.blocks + [0] * width)[:width] for s in decoders])
            lengths = torch.tensor([s.start + 1 for s in decoders])
            if self.native_attention:
                from shipyard.kernels import native

                batch.decode_plan = native.DecodePlan(table, lengths, bs, self.heads, self.kv_heads, self.head_dim,
                                                      self.scale)
            else:
                # Past its length a row re-reads its own last token: the mask hides it, and every
                # slot read holds a real value (an unwritten slot may hold NaN, and 0 * NaN is NaN).
                span = torch.arange(longest)
                pos = torch.minimum(span[None, :], lengths[:, None] - 1)
                batch.decode_slots = table.gather(1, pos // bs) * bs + pos % bs
                batch.decode_mask = (span[None, :] < lengths[:, None])[:, None, None, :]
        row = len(decoders)
        for s in others:
            ctx = s.start + s.length
            span = torch.arange(ctx)
            table = torch.tensor(s.blocks)
            slots = table[span // bs] * bs + span % bs
            mask = None
            if s.start > 0:  # a later chunk: its queries see every earlier token and their own past
                qpos = torch.arange(s.start, ctx)
                mask = span[None, :] <= qpos[:, None]
            batch.prefills.append((row, s.length, slots, mask))
            row += s.length
        batch.logit_rows = torch.tensor(logit_rows, dtype=torch.long)
        return batch

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                batch: StepBatch) -> torch.Tensor:
        """Write the step's new keys and values into this layer's cache, then attend: [T, H, D]."""
        out = torch.empty(q.shape, dtype=q.dtype)
        d = batch.decodes
        if batch.decode_plan is not None:  # one native call: the writes and the decoders' attention
            batch.decode_plan.write_and_run(q, k, v, batch.write_slots, keys, values, out)
        else:
            keys.index_copy_(0, batch.write_slots, k)
            values.index_copy_(0, batch.write_slots, v)
            if d:
                assert batch.decode_slots is not None
                # index_select copies whole rows: 2-3x faster here than advanced indexing (keys[slots]).
                b, span = batch.decode_slots.shape
                flat = batch.decode_slots.reshape(-1)
                k = keys.index_select(0, flat).view(b, span, *keys.shape[1:]).transpose(1, 2)  # [B, Hkv, L, D]
                v = values.index_select(0, flat).view(b, span, *values.shape[1:]).transpose(1, 2)
                o = F.scaled_dot_product_attention(q[:d].unsqueeze(2), k, v, attn_mask=batch.decode_mask,
                                                   scale=self.scale, enable_gqa=self.heads != self.kv_heads)
                out[:d] = o.squeeze(2)
        self._attend_prefills(q, keys, values, batch, out)
        return out

    def _attend_prefills(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, batch: StepBatch,
                         out: torch.Tensor) -> None:
        gqa = self.heads != self.kv_heads
        for row, length, slots, mask in batch.prefills:
            qs = q[row:row + length].transpose(0, 1).unsqueeze(0)
            k = keys.index_select(0, slots).transpose(0, 1).unsqueeze(0)
            v = values.index_select(0, slots).transpose(0, 1).unsqueeze(0)
            o = F.scaled_dot_product_attention(qs, k, v, attn_mask=mask, is_causal=mask is None,
                                               scale=self.scale, enable_gqa=gqa)
            out[row:row + length] = o[0].transpose(0, 1)

    @torch.inference_mode()
    def forward(self, batch: StepBatch) -> torch.Tensor:
        """Run one step; write the new keys/values into the pool; return logits [rows, vocab]."""
        h = self.embed(batch.input_ids, batch.positions)
        pos = self.step_positions(h, batch.positions)
        t, width = h.shape[0], self.heads * self.head_dim
        for i, layer in enumerate(self.layers):
            q, k, v = layer.qkv(layer.norm1(h), pos)
            a = self._attend(q, k, v, self.pool.keys[i], self.pool.values[i], batch).reshape(t, width)
            h = h + layer.out(a)
            h = h + layer.mlp(layer.norm2(h))
        assert batch.logit_rows is not None
        return self.lm_head(self.final_norm(h[batch.logit_rows])).float()

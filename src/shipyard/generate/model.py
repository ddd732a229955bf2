"""Running a Hugging Face causal LM over the paged KV cache.

transformers' own caches grow one contiguous tensor per layer for a fixed batch: sequences cannot
join or leave between steps. So this module calls the model's own submodules (embeddings, norms,
projections, MLPs, rotary embedding: the weights and math stay transformers') and does only the
attention itself, over the block table. One step runs every scheduled sequence as one flat batch
of tokens: the projections and MLPs see all rows at once; attention runs once for all decoders
(one query each, keys gathered from their blocks) and once per prefill chunk.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from shipyard.generate.kv_cache import BlockPool


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


class PackedLinear(nn.Module):
    """An fp32 Linear whose weight is reordered once into oneDNN's blocked layout.

    `F.linear` on a plain weight goes through a GEMM that repacks (part of) the weight on every call;
    for the few rows of a decode step that repacking costs more than the math, and a step re-reads
    every weight of the model. Reordered once, the same weight gave 2-3x faster matmuls at 4 and 16
    rows and ~2x at one row on the 50257 x 768 GPT-2 head here (same fp32 math, other summation order).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight.detach().float().contiguous(), 1)
        self.bias = None if bias is None else bias.detach().float().contiguous()
        self.activation = ("none", "")  # oneDNN post-op applied to the output in the same pass

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        op, algorithm = self.activation
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, op, [], algorithm)

    def direct(self) -> Callable[[torch.Tensor], torch.Tensor]:
        linear, weight, bias, (op, algorithm) = torch.ops.mkldnn._linear_pointwise, self.weight, self.bias, self.activation
        return lambda x: linear(x, weight, bias, op, [], algorithm)

    def extra_repr(self) -> str:
        post = f", then {self.activation[0]}" if self.activation[0] != "none" else ""
        return f"{self.in_features}, {self.out_features}, oneDNN packed{post}"


def packed_linears_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


def pack_linears_(model: nn.Module) -> int:
    """Swap every fp32 `nn.Linear` (and transformers' GPT-2 `Conv1D`, a transposed Linear) of `model`
    for a `PackedLinear`, in place; returns how many. A head tied to the input embedding keeps the
    embedding's own weight for lookups, so it costs one more copy of that matrix."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers is a dependency
        Conv1D = ()  # noqa: N806
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and child.weight.dtype == torch.float32:
                weight = child.weight
            elif Conv1D and isinstance(child, Conv1D) and child.weight.dtype == torch.float32:
                weight = child.weight.t()
            else:
                continue
            setattr(parent, name, PackedLinear(weight, child.bias))
            count += 1
    return count


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


Rows = Callable[[torch.Tensor], torch.Tensor]


def direct(module: nn.Module) -> Rows:
    """`module`'s computation on 2-D rows without nn.Module's call machinery (hook checks; the engine
    sets no hooks). A GPT-2-small decode step calls ~150 modules; going around the machinery, and
    through a module's own `direct()` where it has one (a lean path for contiguous fp32 rows), took
    the int8 single-stream step here from 8.9 to 8.1 ms (best of 30, A/B runs)."""
    lean = getattr(module, "direct", None)
    if callable(lean):
        return lean()
    if type(module) is nn.LayerNorm and len(module.normalized_shape) == 1:
        shape, weight, bias, eps = module.normalized_shape, module.weight, module.bias, module.eps
        return lambda x: torch.layer_norm(x, shape, weight, bias, eps)
    if type(module) is nn.GELU:
        gelu, approximate = F.gelu, module.approximate
        return lambda x: gelu(x, approximate=approximate)
    return module.forward


@dataclass
class Layer:
    norm1: Rows
    qkv: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    out: Rows
    norm2: Rows
    mlp: Rows


class PagedLM:
    """A loaded HF causal LM (`family` 'gpt2' or 'llama') bound to a `BlockPool`."""

    def __init__(self, model: nn.Module, family: str, pool_budget_bytes: int, block_size: int,
                 max_blocks: int, pack_linears: bool = False, attention: str = "torch") -> None:
        self.model = model
        self.packed = pack_linears_(model) if pack_linears and packed_linears_available() else 0
        self.family = family
        cfg = model.config
        self.heads = int(cfg.num_attention_heads)
        self.kv_heads = int(getattr(cfg, "num_key_value_heads", None) or self.heads)
        self.head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads)
        self.vocab_size = int(cfg.vocab_size)
        self.lm_head = direct(model.get_output_embeddings())
        if family == "gpt2":
            base = model.transformer
            self.max_positions = int(cfg.n_positions)
            if cfg.activation_function in GELU_TANH:
                for block in base.h:
                    fuse_gelu_(block.mlp)
            self.layers = [self._gpt2_layer(b) for b in base.h]
            self.final_norm = direct(base.ln_f)
            self.scale = (self.head_dim ** -0.5 if cfg.scale_attn_weights else 1.0)
            if cfg.scale_attn_by_inverse_layer_idx or cfg.reorder_and_upcast_attn:
                raise ValueError("GPT-2 variants with scale_attn_by_inverse_layer_idx or "
                                 "reorder_and_upcast_attn are not supported by shipyard.generate")
        else:
            base = model.model
            self.max_positions = int(cfg.max_position_embeddings)
            self.layers = [self._llama_layer(b) for b in base.layers]
            self.final_norm = direct(base.norm)
            self.scale = self.head_dim ** -0.5
        self.base = base
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

    # -- families --------------------------------------------------------------------------
    def _gpt2_layer(self, block: nn.Module) -> Layer:
        width, heads, dim = self.heads * self.head_dim, self.heads, self.head_dim
        c_attn = direct(block.attn.c_attn)

        def qkv(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            q, k, v = c_attn(x).split(width, dim=-1)
            t = x.shape[0]
            return q.view(t, heads, dim), k.view(t, heads, dim), v.view(t, heads, dim)

        fc, proj = direct(block.mlp.c_fc), direct(block.mlp.c_proj)
        act = None if isinstance(block.mlp.act, nn.Identity) else direct(block.mlp.act)
        mlp = (lambda x: proj(fc(x))) if act is None else (lambda x: proj(act(fc(x))))  # eval: no dropout
        return Layer(direct(block.ln_1), qkv, direct(block.attn.c_proj), direct(block.ln_2), mlp)

    def _llama_layer(self, block: nn.Module) -> Layer:
        attn, heads, kv_heads, dim = block.self_attn, self.heads, self.kv_heads, self.head_dim
        q_proj, k_proj, v_proj = direct(attn.q_proj), direct(attn.k_proj), direct(attn.v_proj)

        def qkv(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            t = x.shape[0]
            return q_proj(x).view(t, heads, dim), k_proj(x).view(t, kv_heads, dim), v_proj(x).view(t, kv_heads, dim)

        gate, up, down, act = (direct(block.mlp.gate_proj), direct(block.mlp.up_proj), direct(block.mlp.down_proj),
                               direct(block.mlp.act_fn))
        return Layer(direct(block.input_layernorm), qkv, direct(attn.o_proj), direct(block.post_attention_layernorm),
                     lambda x: down(act(gate(x)) * up(x)))

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

    def _embed(self, batch: StepBatch) -> torch.Tensor:
        if self.family == "gpt2":
            return self.base.wte(batch.input_ids) + self.base.wpe(batch.positions)
        return self.base.embed_tokens(batch.input_ids)

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
        h = self._embed(batch)
        rope = None
        if self.family == "llama":
            from transformers.models.llama.modeling_llama import rotate_half

            cos, sin = self.base.rotary_emb(h, batch.positions[None])
            cos, sin = cos[0][:, None, :], sin[0][:, None, :]
            rope = (cos, sin, rotate_half)
        t, width = h.shape[0], self.heads * self.head_dim
        for i, layer in enumerate(self.layers):
            q, k, v = layer.qkv(layer.norm1(h))
            if rope is not None:
                cos, sin, rot = rope
                q = q * cos + rot(q) * sin
                k = k * cos + rot(k) * sin
            a = self._attend(q, k, v, self.pool.keys[i], self.pool.values[i], batch).reshape(t, width)
            h = h + layer.out(a)
            h = h + layer.mlp(layer.norm2(h))
        assert batch.logit_rows is not None
        return self.lm_head(self.final_norm(h[batch.logit_rows])).float()

"""The interface between `PagedLM` and one family of Hugging Face causal LMs."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from shipyard.generate.lean import Rows, direct

# (input_ids [T], positions [T]) -> hidden states [T, hidden]
Embed = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# (hidden states [T, hidden], positions [T]) -> what every layer's qkv needs to place its tokens
StepPositions = Callable[[torch.Tensor, torch.Tensor], Any]
# (normed rows [T, hidden], the step's positions) -> q [T, heads, D], k and v [T, kv_heads, D]
QKV = Callable[[torch.Tensor, Any], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Shape:
    """The attention shape of a model, from its config."""

    heads: int
    kv_heads: int
    head_dim: int


@dataclass
class Layer:
    """One decoder layer as `PagedLM` runs it, on the step's rows [T, hidden]:

        q, k, v = qkv(norm1(h), pos)      # positions already applied (rope rotated in here)
        h = h + out(attention(q, k, v))   # out gets [T, heads * head_dim]
        h = h + mlp(norm2(h))

    PagedLM owns the attention (the paged KV cache, the native kernel) and the residual adds; every
    other computation of the layer is one of these callables."""

    norm1: Rows
    qkv: QKV
    out: Rows
    norm2: Rows
    mlp: Rows


def no_positions(h: torch.Tensor, positions: torch.Tensor) -> None:
    """The step's position state of a family whose positions are learned (added in `embed`)."""
    return None


class Family(ABC):
    """How `PagedLM` drives one family of Hugging Face causal LMs.

    Adding a family: write `families/<name>.py` with a subclass of this and `FAMILY = <Subclass>()`,
    add its config.json `model_type`(s) to `families.FAMILIES`, and its tiny config to `TINY` in
    tests/generate/test_families.py (which checks every registered family against transformers' own
    forward, and fails for a registered model_type without one).
    `PagedLM` itself is not edited.

    PagedLM calls each method ONCE, at load, and keeps what it returns: the step then runs plain
    callables (build them with `direct`, which goes around nn.Module's call machinery and takes a
    module's lean path: packed and int8 layers have one). Nothing here runs per token; put no
    per-call branching in the callables you return (decide at load, return different closures).
    The model's own submodules and their weights do the math; a family only says which to call:

        h = embed(input_ids, positions)              # [T, hidden]
        pos = positions(h, positions)                # once per step, shared by every layer
        for each layer: see `Layer`
        logits = head(final_norm(h[rows]))

    Where known variants plug in (only gpt2 and llama exist so far):
    - a fused q/k/v projection (GPT-2's c_attn, phi3's qkv_proj): `layer(...).qkv` splits it.
    - q/k norms (per head in qwen3 and gemma3, over the whole projection in olmo2): `layer(...).qkv`
      norms q and k before rotating them.
    - rope variants (scaled, partial rotary): `positions` computes them, `layer(...).qkv` rotates.
    - scaled embeddings (gemma: times sqrt(hidden)): `embed`.
    - final logit soft-capping (gemma2): `head`.
    - norms after the attention or the MLP (gemma2/3, olmo2): fold them into `out` and `mlp`;
      `norm1`/`norm2` may then be the identity.
    - an attention scale other than head_dim ** -0.5 (gemma's query_pre_attn_scalar): `scale`.
    - a mixture of experts: `layer(...).mlp` routes the rows to their experts.
    - a variant PagedLM cannot run yet: refuse it in `check`, naming the config field.
    Not expressible yet: per-layer attention options (a sliding window smaller than the context, as
    mistral, qwen2 and gemma2/3 may have; gemma2's attention-logit soft-capping). Those need an
    attention option on `Layer` that PagedLM's attention (and the native kernel) honours.
    """

    name: ClassVar[str]  # what logs and error messages call the family

    def check(self, model: nn.Module) -> None:
        """Raise ValueError, naming the config field, for a variant this family cannot run."""
        return None  # every variant by default

    def shape(self, config: Any) -> Shape:
        heads = int(config.num_attention_heads)
        kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
        return Shape(heads, kv_heads, int(getattr(config, "head_dim", None) or config.hidden_size // heads))

    @abstractmethod
    def max_positions(self, config: Any) -> int:
        """The longest context the model was built for."""

    def scale(self, config: Any, shape: Shape) -> float:
        """The factor attention applies to q.k."""
        return float(shape.head_dim ** -0.5)

    def prepare_(self, model: nn.Module) -> None:
        """Edit `model` in place before its layers are read, after its fp32 Linears were packed
        (when they are): fusions that keep the same math."""
        return None  # nothing to fuse by default

    @abstractmethod
    def blocks(self, model: nn.Module) -> Sequence[nn.Module]:
        """The decoder layers, in order; each is given to `layer`."""

    @abstractmethod
    def layer(self, block: nn.Module, shape: Shape) -> Layer:
        """The callables of one decoder layer (see `Layer`)."""

    @abstractmethod
    def embed(self, model: nn.Module) -> Embed:
        """Token ids (and positions, for learned position embeddings) to hidden states."""

    def positions(self, model: nn.Module) -> StepPositions:
        """What the step's layers need to place their tokens, computed once per step (rope's cos
        and sin); by default nothing, for positions learned and added in `embed`."""
        return no_positions

    @abstractmethod
    def final_norm(self, model: nn.Module) -> Rows:
        """The norm after the last layer."""

    def head(self, model: nn.Module) -> Rows:
        """Final hidden states to logits: the model's output embedding by default."""
        return direct(model.get_output_embeddings())

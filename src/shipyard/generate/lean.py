"""The lean calls a step makes into a model's own submodules: `direct` (around nn.Module's call
machinery) and fp32 Linears packed once for oneDNN. `PagedLM` and every family build on these."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


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

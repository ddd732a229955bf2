"""Weight-only int8 / int4 Linear layers and the kernels that run them.

`WeightOnlyLinear` holds a Linear's weight as int8 (one scale per output channel) or int4 (a scale
and zero per group of input columns) and runs its matmul through one of `KERNELS`, named by the
layer, so another kernel can be swapped in without touching the weights. Activations stay fp32.

This sits below runtimes and optimize alike: the optimize pass (`optimize/passes/weight_only.py`)
makes these layers, the causal-LM runtime rebuilds them from a saved folder (`quant/lm_folder.py`),
and the generation engine calls them. It knows nothing of either.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

INT4_TILES = 8  # inner_k_tiles of torch's CPU int4 packing


def _int8_packed(x: torch.Tensor, layer: WeightOnlyLinear) -> torch.Tensor:
    return torch.ops.aten._weight_int8pack_mm(x, layer.qweight, layer.scales)


def _int8_packed_bf16(x: torch.Tensor, layer: WeightOnlyLinear) -> torch.Tensor:
    # Same int8 weights, bf16 activations: torch 2.13's CPU `_weight_int8pack_mm` takes a fast
    # path for bf16 inputs and a slow one for fp32 (measured 3072x768 at 1 row: 163 us bf16 vs
    # 1,631 us fp32, fp32 F.linear 346 us). The price is bf16 rounding of activations in these layers.
    return torch.ops.aten._weight_int8pack_mm(x.to(torch.bfloat16), layer.qweight, layer.scales_bf16).float()


def _int8_dynamic(x: torch.Tensor, layer: WeightOnlyLinear) -> torch.Tensor:
    # The same int8 weights, prepacked for torch's x86 quantized GEMM (fbgemm / oneDNN), which also
    # quantizes each call's activations to uint8 on the fly (one scale per call): int8 x int8 dot
    # products (VNNI where the CPU has it) instead of converting weights. Measured 3072x768 at 1 row,
    # weights out of cache: ~2.4x faster than int8-packed-bf16. The price is 8-bit activations.
    return torch.ops.quantized.linear_dynamic(x, layer.packed, layer.reduce_range)


def _int4_packed(x: torch.Tensor, layer: WeightOnlyLinear) -> torch.Tensor:
    return torch.ops.aten._weight_int4pack_mm_for_cpu(x, layer.qweight, layer.group_size, layer.scales_zeros)


def _dequantized(x: torch.Tensor, layer: WeightOnlyLinear) -> torch.Tensor:
    # Reference kernel: rebuild the fp32 weight each call. Same numbers, no speed-up; used when the
    # packed kernel is missing or measured slower.
    return nn.functional.linear(x, layer.dequantize())


# torch 2.13's CPU `_weight_int8pack_mm` reads past its operands on the bf16 path when the inner
# dimension is not a multiple of 8 and more than one row comes in: SIGSEGV, or garbage where the
# memory beyond happens to be mapped (found as the `--auto` crash of issue 14: an 84-wide Linear;
# K = 4, 12, ..., 100 crash at 2+ rows, multiples of 8 never do, one row never did). Its fp32 path
# handles every width, so such layers run int8-packed instead.
BF16_INNER_MULTIPLE = 8


def kernel_for(kernel: str, in_features: int) -> str:
    """The kernel a layer `in_features` wide runs when `kernel` is asked for (see above)."""
    if kernel == "int8-packed-bf16" and in_features % BF16_INNER_MULTIPLE:
        return "int8-packed"
    return kernel


KERNELS: dict[str, Callable[[torch.Tensor, WeightOnlyLinear], torch.Tensor]] = {
    "int8-packed": _int8_packed, "int8-packed-bf16": _int8_packed_bf16, "int8-dynamic": _int8_dynamic,
    "int4-packed": _int4_packed,
    "dequantize": _dequantized,
}


def _prepack_int8(qweight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None) -> Any:
    import warnings

    engines = torch.backends.quantized.supported_engines
    if "x86" not in engines and "fbgemm" not in engines:
        raise RuntimeError(f"no x86 quantized engine in this torch build (engines: {engines})")
    with warnings.catch_warnings():  # quantized tensors are deprecated as a user API, not as an op input
        warnings.simplefilter("ignore")
        qw = torch._make_per_channel_quantized_tensor(
            qweight, scales.double(), torch.zeros(qweight.shape[0], dtype=torch.long), 0)
        return torch.ops.quantized.linear_prepack(qw, bias)


# Kernels whose layers torch.export cannot save: their prepacked weights are an opaque object of this torch build.
NOT_EXPORTABLE = frozenset({"int8-dynamic"})


class WeightOnlyLinear(nn.Module):
    """A Linear whose weight is int8 (per output channel) or int4 (per group of input columns)."""

    def __init__(self, linear: nn.Linear, bits: int, group_size: int, kernel: str) -> None:
        super().__init__()
        w = linear.weight.detach().float()
        self.in_features, self.out_features = w.shape[1], w.shape[0]
        self.bits, self.group_size, self.kernel = bits, group_size, kernel_for(kernel, w.shape[1])
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().float(), requires_grad=False)
        if bits == 8:
            scales = w.abs().amax(dim=1).clamp(min=1e-8) / 127
            self._set_int8(torch.round(w / scales[:, None]).clamp(-128, 127).to(torch.int8), scales)
        else:
            g = w.reshape(self.out_features, -1, group_size)
            lo, hi = g.amin(dim=2), g.amax(dim=2)
            scales = ((hi - lo) / 15).clamp(min=1e-8)
            q = torch.round((g - lo[..., None]) / scales[..., None]).clamp(0, 15).to(torch.int32)
            # torch's int4 format dequantizes as (q - 8) * scale + zero, so zero = lo + 8 * scale.
            zeros = lo + 8 * scales
            self.register_buffer("scales_zeros", torch.stack([scales.t(), zeros.t()], dim=2).contiguous())
            self._set_int4(q.reshape(self.out_features, -1).to(torch.uint8))

    def _set_int8(self, qweight: torch.Tensor, scales: torch.Tensor) -> None:
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales", scales)
        if self.kernel == "int8-packed-bf16":  # derived, not saved
            self.register_buffer("scales_bf16", scales.to(torch.bfloat16), persistent=False)
        if self.kernel == "int8-dynamic":  # derived, not saved: the packed layout is this build's
            # The bias goes in too: the kernel adds it as it writes the output (one op fewer).
            self.packed = _prepack_int8(qweight, scales, None if self.bias is None else self.bias.detach())
            # Without VNNI, u8 x s8 products can saturate 16-bit sums: use 7-bit activations there.
            from shipyard.quant.cpu import has_vnni

            self.reduce_range = not has_vnni()

    def _set_int4(self, q4: torch.Tensor) -> None:
        # `q4` (one value per byte) is the portable form: it is what gets saved (two per byte) and
        # what the dequantizing kernel reads. The packed kernel also needs torch's CPU tile layout,
        # derived from it and not saved (it is specific to this torch build).
        self.register_buffer("q4", q4)
        if self.kernel == "int4-packed":
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q4.to(torch.int32), INT4_TILES)
            self.register_buffer("qweight", packed, persistent=False)

    @classmethod
    def from_quantized(cls, in_features: int, out_features: int, bits: int, group_size: int, kernel: str,
                       tensors: dict[str, torch.Tensor]) -> WeightOnlyLinear:
        """Rebuild a layer from saved tensors (`qweight`+`scales` for int8, `q4`+`scales_zeros` for int4,
        optional `bias`) without re-quantizing anything."""
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer.in_features, layer.out_features = in_features, out_features
        layer.bits, layer.group_size, layer.kernel = bits, group_size, kernel_for(kernel, in_features)
        bias = tensors.get("bias")
        layer.bias = None if bias is None else nn.Parameter(bias.float(), requires_grad=False)
        if bits == 8:
            # Fresh copies: tensors read from a file may sit at any byte offset, and the packed
            # kernels were seen to crash (SIGSEGV) on such unaligned weights.
            layer._set_int8(tensors["qweight"].to(torch.int8).clone(), tensors["scales"].float().clone())
        else:
            layer.register_buffer("scales_zeros", tensors["scales_zeros"].float().clone())
            layer._set_int4(tensors["q4"].to(torch.uint8))
        return layer

    def dequantize(self) -> torch.Tensor:
        if self.bits == 8:
            return self.qweight.float() * self.scales[:, None]
        sz = self.scales_zeros  # [groups, out, 2]
        q = self.q4.float().reshape(self.out_features, -1, self.group_size)
        w = (q - 8) * sz[..., 0].t()[..., None] + sz[..., 1].t()[..., None]
        return w.reshape(self.out_features, self.in_features)

    @property
    def _adds_bias(self) -> bool:
        return self.bias is not None and self.kernel != "int8-dynamic"  # that kernel holds the bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = KERNELS[self.kernel](x.reshape(-1, shape[-1]).float().contiguous(), self)
        y = y.reshape(*shape[:-1], self.out_features)
        return y + self.bias if self._adds_bias else y

    def direct(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """This layer on 2-D contiguous fp32 rows, for callers that guarantee them (the generation
        engine): the kernel alone, without reshapes, copies or a module call."""
        if self.kernel == "int8-dynamic":
            linear_dynamic, packed, reduce_range = torch.ops.quantized.linear_dynamic, self.packed, self.reduce_range
            return lambda x: linear_dynamic(x, packed, reduce_range)
        kernel = KERNELS[self.kernel]
        if self._adds_bias:
            bias = self.bias
            return lambda x: kernel(x, self) + bias
        return lambda x: kernel(x, self)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, bits={self.bits}, group_size={self.group_size}, kernel={self.kernel}"


def conv1d_to_linear_(module: nn.Module) -> int:
    """Replace transformers' `Conv1D` (weight [in, out]) by an equivalent `nn.Linear`, in place."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers is a dependency
        return 0
    count = 0
    for _, child in list(module.named_modules()):
        for attr, sub in list(child.named_children()):
            if isinstance(sub, Conv1D):
                lin = nn.Linear(sub.weight.shape[0], sub.weight.shape[1])
                lin.weight = nn.Parameter(sub.weight.detach().t().contiguous())
                lin.bias = nn.Parameter(sub.bias.detach().clone())
                setattr(child, attr, lin)
                count += 1
    return count

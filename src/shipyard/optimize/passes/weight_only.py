"""Weight-only int8 / int4 quantization of Linear layers in PyTorch models.

The function API, for anyone holding a module (the generation engine uses it on causal LMs):

    from shipyard.optimize import quantize_weights_
    report = quantize_weights_(model, bits=8)                   # per-output-channel int8
    report = quantize_weights_(model, bits=4, group_size=128)   # group-wise int4, round to nearest

It replaces every `nn.Linear` (and transformers' GPT-2 `Conv1D`, turned into a Linear first: it is
a transposed Linear that quantizers keyed on `nn.Linear` silently skip) by a `WeightOnlyLinear`,
in place, and returns what it did. Activations stay fp32; weights are stored quantized and the
matmul runs in a kernel behind `WeightOnlyLinear.kernel`, so another kernel can be swapped in.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from shipyard.errors import InvalidInput
from shipyard.optimize.artifact import Artifact
from shipyard.optimize.passes.base import Context, PassConfig, register

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


NOT_EXPORTABLE = frozenset({"int8-dynamic"})


class WeightOnlyLinear(nn.Module):
    """A Linear whose weight is int8 (per output channel) or int4 (per group of input columns)."""

    def __init__(self, linear: nn.Linear, bits: int, group_size: int, kernel: str) -> None:
        super().__init__()
        w = linear.weight.detach().float()
        self.in_features, self.out_features = w.shape[1], w.shape[0]
        self.bits, self.group_size, self.kernel = bits, group_size, kernel
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
            from shipyard.optimize.cpu import has_vnni

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
        layer.bits, layer.group_size, layer.kernel = bits, group_size, kernel
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
    for name, child in list(module.named_modules()):
        for attr, sub in list(child.named_children()):
            if isinstance(sub, Conv1D):
                lin = nn.Linear(sub.weight.shape[0], sub.weight.shape[1])
                lin.weight = nn.Parameter(sub.weight.detach().t().contiguous())
                lin.bias = nn.Parameter(sub.bias.detach().clone())
                setattr(child, attr, lin)
                count += 1
    return count


def _time(fn: Callable[[], Any], calls: int = 60) -> float:
    """Median microseconds per call: robust to the odd call stalled by other processes."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2] * 1e6


def measure_kernels(out_features: int, in_features: int, bits: int, group_size: int, rows: int = 1) -> dict[str, float]:
    """Microseconds per layer of each usable kernel vs fp32 `F.linear`, on one layer's shape.

    Decoding reads every weight once per token from memory, so each call runs through enough
    copies of the layer (~64 MB of fp32 weights) that they cannot all sit in the caches: timing one
    cached layer would reward a kernel for speed it does not have in a real model.
    """
    copies = max(1, min(16, (64 << 20) // (out_features * in_features * 4)))
    lins = [nn.Linear(in_features, out_features, bias=False) for _ in range(copies)]
    x = torch.randn(rows, in_features)
    with torch.inference_mode():
        times = {"fp32": _time(lambda: [nn.functional.linear(x, lin.weight) for lin in lins], calls=15) / copies}
        kernels = (f"int{bits}-packed", "dequantize", *(("int8-packed-bf16", "int8-dynamic") if bits == 8 else ()))
        for name in kernels:
            try:
                layers = [WeightOnlyLinear(lin, bits, group_size, name) for lin in lins]
                times[name] = _time(lambda layers=layers: [layer(x) for layer in layers], calls=15) / copies
            except RuntimeError:  # kernel missing in this build or for this shape
                continue
    return times


def _eligible(lin: nn.Linear, bits: int, group_size: int) -> bool:
    if bits == 8:
        return True
    return lin.in_features % group_size == 0 and lin.out_features % 8 == 0


def quantize_weights_(module: nn.Module, bits: int = 8, group_size: int = 128, kernel: str = "auto",
                      filter_fn: Callable[[str, nn.Linear], bool] | None = None,
                      tied: Literal["copy", "keep"] = "copy", exportable: bool = False) -> dict[str, Any]:
    """Quantize the weights of every Linear in `module` (in place); returns a report dict.

    bits: 8 (per output channel, symmetric) or 4 (asymmetric, `group_size` input columns per scale,
    round to nearest). kernel: 'auto' measures the packed kernel against the dequantizing one on the
    largest layer at one row (decode) and keeps the faster; or name one of `KERNELS`.
    filter_fn(name, linear) -> bool picks layers (default: all that fit the format).
    tied: what to do with a Linear whose weight is also an embedding (GPT-2's and many small LMs'
    lm_head): 'copy' quantizes a copy and unties them (the embedding stays fp32 for its lookups; the
    head is the largest matmul of a decode step, so this is where weight-only saves the most time,
    at the cost of the copy's bytes in the file); 'keep' leaves it fp32 and tied.
    exportable: only kernels that torch.export can save (not int8-dynamic, whose prepacked weights
    are an opaque object of this torch build).
    """
    if bits not in (4, 8):
        raise InvalidInput(f"weight-only bits must be 4 or 8, not {bits}")
    converted = conv1d_to_linear_(module)
    if tied not in ("copy", "keep"):
        raise InvalidInput(f"tied must be 'copy' or 'keep', not {tied!r}")
    embedded = {m.weight.data_ptr() for m in module.modules() if isinstance(m, nn.Embedding)}
    tied_names = [n for n, m in module.named_modules() if isinstance(m, nn.Linear) and m.weight.data_ptr() in embedded]
    kept = tied_names if tied == "keep" else []
    targets = [(n, m) for n, m in module.named_modules() if isinstance(m, nn.Linear) and n not in kept
               and (filter_fn is None or filter_fn(n, m))]
    skipped = [n for n, m in targets if not _eligible(m, bits, group_size)]
    targets = [(n, m) for n, m in targets if _eligible(m, bits, group_size)]
    report: dict[str, Any] = {"bits": bits, "group_size": group_size if bits == 4 else None,
                              "conv1d_converted": converted, "skipped": skipped, "tied": kept,
                              "untied": [n for n, _ in targets if n in tied_names],
                              "layers": len(targets)}
    if not targets:
        return report
    if kernel == "auto":
        big = max(targets, key=lambda t: t[1].weight.numel())[1]
        times = measure_kernels(big.out_features, big.in_features, bits, group_size)
        quantized = {k: v for k, v in times.items() if k != "fp32" and not (exportable and k in NOT_EXPORTABLE)}
        kernel = min(quantized, key=lambda k: quantized[k])
        report["kernel_us"] = {k: round(v, 1) for k, v in times.items()}
        report["kernel_shape"] = [big.out_features, big.in_features]
    elif kernel not in KERNELS:
        raise InvalidInput(f"unknown weight-only kernel {kernel!r}; known: {', '.join(KERNELS)}")
    elif exportable and kernel in NOT_EXPORTABLE:
        raise InvalidInput(f"weight-only kernel {kernel!r} cannot be saved with torch.export (its prepacked weights "
                           "are an opaque object of this torch build); it serves hf-causal-lm versions. Use auto, "
                           "int8-packed or int8-packed-bf16 here")
    elif kernel.startswith("int") and not kernel.startswith(f"int{bits}"):
        raise InvalidInput(f"weight-only kernel {kernel!r} does not run int{bits} weights; use auto, dequantize "
                           f"or one of {', '.join(k for k in KERNELS if k.startswith(f'int{bits}'))}")
    report["kernel"] = kernel
    for name, lin in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, attr, WeightOnlyLinear(lin, bits, group_size, kernel))
    return report


class WeightOnly(PassConfig):
    """Weight-only int8/int4 quantization of Linear layers (PyTorch models)."""

    name: ClassVar[str] = "weight-only"
    bits: Literal[4, 8] = Field(8, description="8: per-channel symmetric; 4: group-wise asymmetric round-to-nearest.")
    group_size: int = Field(128, ge=16, le=4096, description="Input columns per int4 scale (a multiple of 16).")
    kernel: str = Field("auto", description="'auto' (measure and pick), 'int8-packed', 'int8-packed-bf16', "
                        "'int8-dynamic' (int8 activations too), 'int4-packed' or 'dequantize'.")
    exclude: list[str] = Field(default_factory=list, description="Linear layer names kept in fp32.")
    tied: Literal["copy", "keep"] = Field("copy", description="A Linear tied to an embedding (an LM head): "
                                          "'copy' quantizes an untied copy (faster decode, bigger file), 'keep' leaves it fp32.")

    @model_validator(mode="after")
    def _check(self) -> WeightOnly:
        if self.group_size % 16:
            raise ValueError(f"group_size {self.group_size} must be a multiple of 16")
        if self.kernel != "auto" and self.kernel not in KERNELS:
            raise ValueError(f"kernel {self.kernel!r} is unknown; use auto or one of {', '.join(KERNELS)}")
        return self


@register(WeightOnly)
def weight_only(artifact: Artifact, config: WeightOnly, ctx: Context) -> Artifact:
    artifact.require("torch", "weight-only")
    from shipyard.optimize.passes.graph import linears_as_modules

    module = linears_as_modules(artifact.module)
    names = {n for n, m in module.named_modules() if isinstance(m, nn.Linear)}
    unknown = sorted(set(config.exclude) - names)
    if unknown:
        raise InvalidInput(f"pass 'weight-only': exclude names {unknown}, which are not Linear layers; "
                           f"Linear layers: {sorted(names)[:10]}")
    report = quantize_weights_(module, config.bits, config.group_size, config.kernel,
                               filter_fn=lambda n, _m: n not in config.exclude, tied=config.tied,
                               exportable=artifact.extra.get("saved_as") != "safetensors")
    if not report["layers"]:
        raise InvalidInput("pass 'weight-only' found no Linear layer to quantize "
                           f"(skipped for shape: {report['skipped']}); it only handles Linear/Conv1D layers")
    ctx.facts["weight_only"] = report
    times = report.get("kernel_us")
    if times:
        ctx.note(f"weight-only int{config.bits}: kernel '{report['kernel']}' chosen by measuring a "
                 f"{report['kernel_shape']} layer at 1 row: " + ", ".join(f"{k} {v:.0f} us" for k, v in times.items()))
        if times[report["kernel"]] > times["fp32"]:
            ctx.note(f"on this CPU the int{config.bits} kernel is slower than fp32 matmul at that shape: "
                     "weight-only is a size (and memory-bandwidth) option here, not a compute speed-up")
    if report["tied"]:
        ctx.note(f"kept in fp32 because their weight is tied to an embedding: {report['tied']}")
    if report["untied"]:
        ctx.note(f"{report['untied']} shared its weight with an embedding: quantized as an untied copy (the "
                 "embedding stays fp32 for lookups; the file holds both). Set tied: keep to leave it fp32 and tied")
    if report.get("kernel") == "int8-dynamic":
        ctx.note("kernel int8-dynamic also quantizes each matmul's activations to 8 bits on the fly "
                 "(one scale per call); the accuracy figures include that")
    if report["conv1d_converted"]:
        ctx.note(f"{report['conv1d_converted']} transformers Conv1D layers turned into Linear before quantizing")
    if report["skipped"]:
        ctx.note(f"kept in fp32 (shape does not fit int{config.bits} groups of {config.group_size}): {report['skipped']}")
    return artifact.evolve(module=module, extra={"weight_only": config.bits})

"""The weight-only pass: int8 / int4 quantization of Linear layers in PyTorch models.

The function API, for anyone holding a module:

    from shipyard.optimize import quantize_weights_
    report = quantize_weights_(model, bits=8)                   # per-output-channel int8
    report = quantize_weights_(model, bits=4, group_size=128)   # group-wise int4, round to nearest

It replaces every `nn.Linear` (and transformers' GPT-2 `Conv1D`, turned into a Linear first: it is
a transposed Linear that quantizers keyed on `nn.Linear` silently skip) by a `WeightOnlyLinear`,
in place, and returns what it did. The layer and its kernels live in `shipyard.quant.weight_only`,
below the runtimes that load them; this module decides which layers to quantize and, with
`kernel='auto'`, which kernel is fastest on this machine.
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
from shipyard.optimize.passes.base import TORCH, Context, PassConfig, register
from shipyard.quant.weight_only import KERNELS, NOT_EXPORTABLE, WeightOnlyLinear, conv1d_to_linear_, kernel_for


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
    report["kernel_fallback"] = {n: kernel_for(kernel, m.in_features) for n, m in targets
                                 if kernel_for(kernel, m.in_features) != kernel}
    for name, lin in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, attr, WeightOnlyLinear(lin, bits, group_size, kernel))
    return report


class WeightOnly(PassConfig):
    """Weight-only int8/int4 quantization of Linear layers (PyTorch models)."""

    name: ClassVar[str] = "weight-only"
    accepts: ClassVar[frozenset[str] | None] = TORCH | {"hf-causal-lm"}
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
    if report.get("kernel_fallback"):
        ctx.note(f"run with int8-packed instead of int8-packed-bf16, whose torch kernel needs widths that are "
                 f"multiples of 8 (it crashes on others): {sorted(report['kernel_fallback'])}")
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

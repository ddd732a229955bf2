"""Quantization of ONNX models with ONNX Runtime: dynamic int8, static int8 QDQ with calibration,
and fp16 (a size option). Weight-only int8/int4 of PyTorch Linear layers is `weight_only.py`."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from shipyard.errors import InvalidInput
from shipyard.optimize.artifact import Artifact
from shipyard.optimize.passes.base import Context, PassConfig, register
from shipyard.optimize.tied import tied_pairs
from shipyard.quant import cpu


class Quantize(PassConfig):
    """ONNX Runtime quantization of an ONNX model."""

    name: ClassVar[str] = "quantize"
    accepts: ClassVar[frozenset[str] | None] = frozenset({"onnx"})
    mode: Literal["dynamic", "static", "fp16"] = Field("static", description="dynamic int8 (activations quantized at run time), static int8 QDQ (calibrated), or fp16 weights and math.")
    calibration: Literal["minmax", "entropy", "percentile"] = Field("minmax", description="How static mode picks activation ranges.")
    percentile: float = Field(99.999, gt=90, le=100, description="Percentile kept by 'percentile' calibration.")
    calibration_samples: int = Field(128, ge=1, le=100_000, description="Calibration samples used (static).")
    per_channel: bool = Field(True, description="One weight scale per output channel.")
    int8_format: Literal["auto", "u8s8", "u8s8-reduce-range", "u8u8", "s8s8"] = Field(
        "auto", description="Activation/weight int8 types. 'auto': u8s8 with VNNI; without VNNI, 7-bit weights (reduce_range) so u8s8 cannot saturate.")
    op_types: list[str] | None = Field(None, description="Op types to quantize (default: ORT's lists, without Conv for dynamic).")
    exclude: list[str] = Field(default_factory=list, description="Node names kept in fp32 (layer-by-layer fallback).")


def _int8_format(config: Quantize, ctx: Context) -> tuple[Any, Any, bool, str]:
    from onnxruntime.quantization import QuantType

    fmt = config.int8_format
    if fmt == "auto":
        vnni = cpu.has_vnni()
        fmt = "u8s8" if vnni else "u8s8-reduce-range"
        why = ("this CPU has VNNI, so u8s8 with full 8-bit weights runs without saturation" if vnni else
               "this CPU lacks VNNI: u8s8 on AVX2/AVX-512 can saturate, so weights use 7 bits (reduce_range)")
    else:
        why = "chosen in the recipe"
    ctx.note(f"int8 format {fmt}: {why}")
    table = {
        "u8s8": (QuantType.QUInt8, QuantType.QInt8, False),
        "u8s8-reduce-range": (QuantType.QUInt8, QuantType.QInt8, True),
        "u8u8": (QuantType.QUInt8, QuantType.QUInt8, False),
        "s8s8": (QuantType.QInt8, QuantType.QInt8, False),
    }
    act, weight, reduce = table[fmt]
    return act, weight, reduce, fmt


class _Reader:
    """ORT's CalibrationDataReader protocol: `get_next()` returns one feed dict, then None."""

    def __init__(self, batches: list[dict[str, np.ndarray]]) -> None:
        self._it: Iterator[dict[str, np.ndarray]] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def _graph_ops(path: Any) -> set[str]:
    import onnx

    return {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}


def _check_exclude(path: Any, exclude: list[str]) -> None:
    import onnx

    names = {n.name for n in onnx.load(str(path), load_external_data=False).graph.node}
    unknown = [e for e in exclude if e not in names]
    if unknown:
        raise InvalidInput(f"pass 'quantize': exclude names nodes {unknown} that the graph does not have; "
                           f"nodes are e.g. {sorted(names)[:8]}")


@register(Quantize)
def quantize(artifact: Artifact, config: Quantize, ctx: Context) -> Artifact:
    assert artifact.onnx_path is not None
    _check_exclude(artifact.onnx_path, config.exclude)
    out = ctx.path(f"quantize-{config.mode}", ".onnx")
    # ORT's quantizer logs advice to the root logger; what matters goes into the report's notes.
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if config.mode == "fp16":
                _fp16(artifact, out, ctx)
            elif config.mode == "dynamic":
                _dynamic(artifact, config, out, ctx)
            else:
                _static(artifact, config, out, ctx)
    finally:
        logging.disable(logging.NOTSET)
    return artifact.evolve(onnx_path=out)


def _fp16(artifact: Artifact, out: Any, ctx: Context) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(artifact.onnx_path)), keep_io_types=True)
    onnx.save(model, str(out))
    ctx.note("fp16 is a size option: ONNX Runtime's CPU provider has few fp16 kernels and inserts "
             "casts around the rest, so on a CPU expect it slower than fp32 (inputs/outputs stay fp32)")


def _dynamic(artifact: Artifact, config: Quantize, out: Any, ctx: Context) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.registry import IntegerOpsRegistry

    # ORT's own list (MatMul, Attention, Gather and EmbedLayerNormalization for embeddings, ...)
    # without Conv: embeddings are most of a small transformer's bytes, ConvInteger is slow.
    ops = config.op_types or [op for op in IntegerOpsRegistry if op != "Conv"]
    if "Conv" in _graph_ops(artifact.onnx_path) and "Conv" not in ops:
        ctx.note("dynamic int8 leaves Conv in fp32: ORT's ConvInteger was measured slower than fp32 "
                 "here; use mode 'static' (int8-static) for convolutions")
    _, _, reduce, fmt = _int8_format(config, ctx)
    ties = tied_embeddings(artifact.onnx_path) if "Gather" in ops and "MatMul" in ops else []
    quantize_dynamic(str(artifact.onnx_path), str(out), weight_type=QuantType.QInt8,
                     per_channel=config.per_channel, reduce_range=reduce,
                     op_types_to_quantize=ops, nodes_to_exclude=config.exclude,
                     extra_options={"DefaultTensorType": 1})  # fp32 where shape inference gives up
    shared = share_tied_embeddings(out, ties) if ties else []
    kinds = sorted(_quantized_op_types(out))
    ctx.note("dynamic int8 quantized the weights of " + ", ".join(kinds) + " (embedding tables included; "
             "activations are quantized at run time)" +
             (f"; tied embedding {shared} stored once: its lookup reads the output projection's int8 "
              "weight (per-row scales) instead of a second copy" if shared else ""))


def _quantized_op_types(path: Any) -> set[str]:
    """Op types that read an int8/uint8 weight initializer in the quantized graph."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    q = {t.name for t in model.graph.initializer if t.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
         and len(t.dims) >= 2}
    return {n.op_type for n in model.graph.node if any(i in q for i in n.input)}


def tied_embeddings(path: Any) -> list[tuple[str, str]]:
    """(embedding table, output projection weight) initializer pairs holding the same numbers,
    transposed: a Gather on W [V, H] and a MatMul by W^T [H, V], which is how a tied LM head
    (GPT-2's lm_head = wte) is exported. Quantized apart they would be stored twice."""
    import onnx

    return tied_pairs(onnx.load(str(path)))


def share_tied_embeddings(path: Any, ties: list[tuple[str, str]]) -> list[str]:
    """Rewrite each tied embedding lookup `DequantizeLinear(Gather(Tq, ids))` to read the int8
    output projection Bq [H, V] (per-column scales sB, zero point 0) instead:
    `Transpose(Cast(Gather(Bq, ids, axis=1))) * Unsqueeze(Gather(sB, ids))`, and drop Tq.
    A pair whose quantized form is not the expected one is left as it is."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    ranks = {i.name: len(i.type.tensor_type.shape.dim) for i in g.input}
    done = []
    for table, head in ties:
        tq, bq, sb, zb = f"{table}_quantized", f"{head}_quantized", f"{head}_scale", f"{head}_zero_point"
        gathers = [n for n in g.node if n.op_type == "Gather" and n.input[0] == tq]
        if len(gathers) != 1 or bq not in inits or sb not in inits or zb not in inits:
            continue
        gather = gathers[0]
        deq = [n for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] == gather.output[0]]
        users = [n for n in g.node if gather.output[0] in n.input]
        rank = ranks.get(gather.input[1])
        scale = numpy_helper.to_array(inits[sb])
        if len(deq) != 1 or len(users) != 1 or rank is None or scale.ndim != 1 or \
                numpy_helper.to_array(inits[zb]).any() or any(n.input[0] == tq for n in g.node if n is not gather):
            continue
        ids, out, p = gather.input[1], deq[0].output[0], f"{table}_tied"
        axes = helper.make_tensor(f"{p}_axes", onnx.TensorProto.INT64, [1], [-1])
        nodes = [
            helper.make_node("Gather", [bq, ids], [f"{p}_q"], name=f"{p}/Gather", axis=1),
            helper.make_node("Cast", [f"{p}_q"], [f"{p}_f"], name=f"{p}/Cast", to=onnx.TensorProto.FLOAT),
            helper.make_node("Transpose", [f"{p}_f"], [f"{p}_t"], name=f"{p}/Transpose", perm=[*range(1, rank + 1), 0]),
            helper.make_node("Gather", [sb, ids], [f"{p}_s"], name=f"{p}/GatherScale", axis=0),
            helper.make_node("Unsqueeze", [f"{p}_s", axes.name], [f"{p}_su"], name=f"{p}/Unsqueeze"),
            helper.make_node("Mul", [f"{p}_t", f"{p}_su"], [out], name=f"{p}/Mul"),
        ]
        at = list(g.node).index(gather)
        for n in (gather, deq[0]):
            g.node.remove(n)
        for k, n in enumerate(nodes):
            g.node.insert(at + k, n)
        g.initializer.append(axes)
        for name in (tq, f"{table}_scale", f"{table}_zero_point"):
            if name in inits and not any(name in n.input for n in g.node):
                g.initializer.remove(inits[name])
        done.append(table)
    if done:
        onnx.save(model, str(path))
    return done


def _static(artifact: Artifact, config: Quantize, out: Any, ctx: Context) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    data = ctx.calibration or ctx.eval_data
    if data is None:
        raise InvalidInput("pass 'quantize' (static) needs calibration data: pass --calibrate "
                           "(an .npz or zoo:digits-train), or use mode 'dynamic'")
    if ctx.calibration is None:
        ctx.note("static quantization calibrated on the eval data (no --calibrate given): "
                 "accuracy measured on it is optimistic")
    act, weight, reduce, fmt = _int8_format(config, ctx)
    n = min(config.calibration_samples, len(data))
    batches = [data.take(min(32, n - i), i) for i in range(0, n, 32)]
    pre = ctx.path("preprocessed", ".onnx")
    try:
        quant_pre_process(str(artifact.onnx_path), str(pre), skip_symbolic_shape=True)
    except Exception:  # pre-processing is an optimisation; quantize the graph as it is if it fails
        pre = artifact.onnx_path
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[config.calibration]
    extra: dict[str, Any] = {}
    if config.calibration == "percentile":
        extra["CalibPercentile"] = config.percentile
    with contextlib.redirect_stdout(io.StringIO()):  # the entropy calibrator prints its progress
        quantize_static(
            str(pre), str(out), _Reader(batches), quant_format=QuantFormat.QDQ,
            op_types_to_quantize=config.op_types, per_channel=config.per_channel, reduce_range=reduce,
            activation_type=act, weight_type=weight, nodes_to_exclude=config.exclude,
            calibrate_method=method, extra_options=extra,
        )
    ctx.note(f"static int8 QDQ: {config.calibration} calibration on {n} samples of {data.name}, "
             f"{'per-channel' if config.per_channel else 'per-tensor'} weights")

"""TFLite conversions, both ways.

- `tflite`: an imported TensorFlow / Keras version (its `original/`) -> a TFLite flatbuffer by TF's
  own `TFLiteConverter`, fp32 or full-integer int8 (every op int8, weights per channel,
  activations calibrated on `--calibrate` data as TFLite's representative dataset; the interface
  stays float, so the version keeps its parent's signature). Checked against its ONNX parent on
  sample inputs: fp32 within atol 1e-4 + rtol 1e-3 x max|output| (the same math in another
  kernel library); int8 within atol 0.02 + rtol 0.1 x max|output| (int8 rounding of every
  activation; a broken calibration is off by a good fraction of the output's range).
- `tflite-to-onnx`: a TFLite version -> ONNX by tf2onnx, checked by the runner as every lossless
  conversion, so every ONNX pass applies to it.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from shipyard.errors import InvalidInput
from shipyard.optimize.artifact import Artifact, run_artifact
from shipyard.optimize.parity import check_parity
from shipyard.optimize.passes.base import Context, PassConfig, register
from shipyard.runtimes.extras import require
from shipyard.runtimes.tflite import tflite_signature

TOLERANCE = {"fp32": (1e-4, 1e-3), "int8": (0.02, 0.1)}


class ToTflite(PassConfig):
    """Convert an imported TensorFlow / Keras model to TFLite with TF's TFLiteConverter."""

    name: ClassVar[str] = "tflite"
    accepts: ClassVar[frozenset[str] | None] = frozenset({"onnx"})
    quantize: Literal["fp32", "int8"] = Field("fp32", description="fp32, or full-integer int8 calibrated on --calibrate data.")
    calibration_samples: int = Field(256, ge=1, le=100_000, description="Representative samples for int8.")
    atol: float | None = Field(None, ge=0, le=1.0, description="Absolute parity tolerance (default: by mode).")
    rtol: float | None = Field(None, ge=0, le=1.0, description="Relative parity tolerance, times max|output|.")


class TfliteToOnnx(PassConfig):
    """Convert a TFLite model to ONNX with tf2onnx."""

    name: ClassVar[str] = "tflite-to-onnx"
    accepts: ClassVar[frozenset[str] | None] = frozenset({"tflite"})
    lossless: ClassVar[bool] = True
    opset: int = Field(17, ge=13, le=21, description="ONNX opset.")
    atol: float = Field(1e-4, ge=0, le=1.0, description="Absolute part of the allowed |difference| from the source.")
    rtol: float = Field(1e-3, ge=0, le=0.1, description="Relative part: times the largest |output| of the source.")


def _original(artifact: Artifact) -> Path:
    original = artifact.extra.get("tf_original")
    if not original or str(artifact.onnx_path) != artifact.extra.get("tf_onnx"):
        raise InvalidInput(
            "pass 'tflite' converts the TensorFlow model a version was imported from (its original/ folder): "
            "run it first in the recipe, on a version made by `shipyard models import` of a .keras, .h5 or "
            "SavedModel source")
    return Path(original)


def _names(artifact: Artifact, path: Path) -> dict[str, str]:
    """The version's tensor names -> the file's: equal names pair up, else the two pair by order."""
    found = tflite_signature(path)
    mine = [t.name for t in [*artifact.signature.inputs, *artifact.signature.outputs]]
    theirs = [t.name for t in [*found.inputs, *found.outputs]]
    if set(mine) == set(theirs):
        return {}
    if len(found.inputs) != len(artifact.signature.inputs) or len(found.outputs) != len(artifact.signature.outputs):
        raise InvalidInput(f"pass 'tflite': the TFLite model has tensors {theirs}, the version {mine}")
    return dict(zip(mine, theirs, strict=True))


@register(ToTflite)
def to_tflite(artifact: Artifact, config: ToTflite, ctx: Context) -> Artifact:
    from shipyard.optimize.sources.tensorflow import saved_model

    original = _original(artifact)
    tf = require("tensorflow", "tensorflow", "pass 'tflite'")
    folder = saved_model(original, ctx.workdir)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(folder))
    if config.quantize == "int8":
        if ctx.calibration is None:
            raise InvalidInput("pass 'tflite' (int8) calibrates every activation: give --calibrate data "
                               "(FILE.npz with the model's inputs), a few hundred typical samples")
        data = ctx.calibration
        names = [t.name for t in artifact.signature.inputs]
        count = min(len(data), config.calibration_samples)

        def representative() -> Iterator[dict[str, np.ndarray]]:
            for i in range(count):
                yield {n: v.astype(np.float32) if v.dtype.kind == "f" else v for n, v in data.take(1, i).items()
                       if n in names}

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        ctx.note(f"TFLite full-integer int8 (TF's TFLiteConverter): every op int8, calibrated on {count} "
                 f"samples of {data.name} as the representative dataset; float inputs and outputs")
    else:
        ctx.note("TFLite fp32 by TF's TFLiteConverter from the original TensorFlow model")
    try:
        with warnings.catch_warnings():  # calibration runs TF's own (deprecated) interpreter
            warnings.simplefilter("ignore")
            flat = converter.convert()
    except Exception as e:  # the converter raises ConverterError and others; its first line names the op
        raise InvalidInput(f"pass 'tflite': TF's converter failed: {str(e).strip().splitlines()[0][:300]}") from None
    path = ctx.path("model", ".tflite")
    path.write_bytes(flat)
    names = _names(artifact, path)
    result = Artifact("tflite", artifact.signature, tflite_path=path, extra={"tflite_names": names} if names else {})
    default_atol, default_rtol = TOLERANCE[config.quantize]
    atol = default_atol if config.atol is None else config.atol
    rtol = default_rtol if config.rtol is None else config.rtol
    sample = ctx.sample(artifact.signature, 8)
    worst = check_parity(f"pass 'tflite' ({config.quantize})", run_artifact(artifact, sample, ctx.threads),
                         run_artifact(result, sample, ctx.threads), atol, rtol)
    ctx.facts.setdefault("parity", []).append({"pass": config.name, **worst.record(atol, rtol)})
    ctx.note(f"TFLite {config.quantize} checked against its parent: largest difference {worst.max_abs_diff:.2g} "
             f"on '{worst.output}', within {worst.tolerance:.2g} = atol {atol:g} + rtol {rtol:g} x max|output| "
             f"{worst.scale:.3g}")
    return result


@register(TfliteToOnnx)
def tflite_to_onnx(artifact: Artifact, config: TfliteToOnnx, ctx: Context) -> Artifact:
    import onnx

    tf2onnx = require("tf2onnx", "tensorflow", "pass 'tflite-to-onnx'")
    require("tensorflow", "tensorflow", "pass 'tflite-to-onnx'")
    assert artifact.tflite_path is not None
    path = ctx.path("from-tflite", ".onnx")
    try:
        with warnings.catch_warnings():  # tf2onnx reads the file with TF's (deprecated) interpreter
            warnings.simplefilter("ignore")
            model, _ = tf2onnx.convert.from_tflite(str(artifact.tflite_path), opset=config.opset)
    except Exception as e:
        raise InvalidInput(f"pass 'tflite-to-onnx': tf2onnx failed: {str(e).strip().splitlines()[0][:300]}") from None
    _rename(model, artifact, artifact.tflite_path)
    onnx.save(model, str(path))
    ctx.note(f"TFLite converted to ONNX by tf2onnx (opset {config.opset})")
    return Artifact("onnx", artifact.signature, onnx_path=path)


def _rename(model: object, artifact: Artifact, path: Path) -> None:
    """tf2onnx names a TFLite model's inputs and outputs after its tensors ('serving_default_x:0');
    give them the version's names, pairing them through the file's signature."""
    from shipyard.runtimes.tflite import _details, interpreter

    ins, outs = _details(interpreter(path))
    names = {v: k for k, v in (artifact.extra.get("tflite_names") or {}).items()}
    table = {d["name"]: names.get(d["key"], d["key"]) for d in [*ins, *outs]}
    graph = model.graph  # type: ignore[attr-defined]
    for v in [*graph.input, *graph.output]:
        v.name = table.get(v.name, v.name)
    for node in graph.node:
        node.input[:] = [table.get(n, n) for n in node.input]
        node.output[:] = [table.get(n, n) for n in node.output]


# `shipyard optimize --to TARGET`: a conversion as a one-step recipe.
TARGETS = {
    "tflite": [{"pass": "tflite"}],
    "tflite-int8": [{"pass": "tflite", "quantize": "int8"}],
    "onnx": [{"pass": "tflite-to-onnx"}],
}


def conversion(target: str) -> list[dict[str, str]]:
    if target not in TARGETS:
        raise InvalidInput(f"--to {target!r}: convert to {', '.join(TARGETS)} (onnx: from a TFLite version)")
    return [dict(s) for s in TARGETS[target]]

"""TensorFlow sources: Keras files (`.keras`, `.h5`) and SavedModel folders, converted to ONNX by
tf2onnx on import and checked against TensorFlow's own outputs, the original kept beside the ONNX
file (`original/`) for lineage and for the TF-side passes (`tflite`).

Keras 3 models go through a SavedModel (`model.export`) because tf2onnx's Keras entry point reads
Keras 2 internals; the SavedModel's `serving_default` function is what is converted, so the
version's tensor names are that signature's (Keras names its inputs after the input layers and its
outputs `output_0`, `output_1`...)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.errors import InvalidInput
from shipyard.optimize.data import synthetic
from shipyard.optimize.parity import check_parity
from shipyard.repository import Signature, TensorSpec
from shipyard.runtimes.extras import require
from shipyard.tensors import v2_datatype

KERAS = {".keras": "keras", ".h5": "h5", ".hdf5": "h5"}
OPSET = 17
# tf2onnx maps each TF op to ONNX ops of the same fp32 math; ONNX Runtime's fusions reorder sums.
# Tolerance as the PyTorch export's: atol + rtol * max|TensorFlow output|.
ATOL, RTOL = 1e-4, 1e-3


def tf_kind(source: Path) -> str | None:
    """'keras', 'h5', 'saved-model', or None when `source` is no TensorFlow model."""
    if source.is_file() and source.suffix.lower() in KERAS:
        return KERAS[source.suffix.lower()]
    if source.is_dir() and (source / "saved_model.pb").is_file():
        return "saved-model"
    return None


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def saved_model(source: Path, workdir: Path) -> Path:
    """A SavedModel folder for the source: itself, or the Keras model exported into `workdir`."""
    if tf_kind(source) == "saved-model":
        return source
    keras = require("keras", "tensorflow", f"importing the Keras model {source.name}")
    require("tensorflow", "tensorflow", f"importing the Keras model {source.name}")
    try:
        model = keras.models.load_model(str(source), compile=False)
    except Exception as e:  # zip, HDF5 and deserialization errors of every kind
        raise InvalidInput(f"{source} is not a readable Keras model: {_first_line(e)}") from None
    out = workdir / "saved_model"
    model.export(str(out), format="tf_saved_model", verbose=False)
    return out


def serving(folder: Path, source: Path) -> tuple[Any, Any]:
    """(the loaded SavedModel, its `serving_default` function); keep the first alive while the
    second is used."""
    tf = require("tensorflow", "tensorflow", f"importing the SavedModel {source.name}")
    try:
        loaded = tf.saved_model.load(str(folder))
    except Exception as e:
        raise InvalidInput(f"{source} is not a readable SavedModel: {_first_line(e)}") from None
    sigs = dict(loaded.signatures)
    if "serving_default" not in sigs:
        raise InvalidInput(f"{source} has no 'serving_default' signature (it has {sorted(sigs) or 'none'}); "
                           "export it with one (tf.saved_model.save(model, path, signatures=...))")
    return loaded, sigs["serving_default"]


def _spec(name: str, spec: Any) -> TensorSpec:
    shape = [-1 if d is None else int(d) for d in spec.shape.as_list()]
    return TensorSpec(name=name, datatype=v2_datatype(np.dtype(spec.dtype.as_numpy_dtype)), shape=shape)


def signature_of(fn: Any) -> Signature:
    _, inputs = fn.structured_input_signature
    outputs = fn.structured_outputs
    if not isinstance(outputs, dict):
        outputs = {"output_0": outputs}
    return Signature(inputs=[_spec(k, v) for k, v in inputs.items()],
                     outputs=[_spec(k, v) for k, v in outputs.items()])


def sample(signature: Signature, n: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    return synthetic(signature, n, seed, high=10)


def run_tf(fn: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    result = fn(**inputs)
    if not isinstance(result, dict):
        result = {"output_0": result}
    return {k: v.numpy() for k, v in result.items()}


def to_onnx(fn: Any, signature: Signature, path: Path, opset: int = OPSET) -> None:
    tf = require("tensorflow", "tensorflow", "converting a TensorFlow model")
    tf2onnx = require("tf2onnx", "tensorflow", "converting a TensorFlow model to ONNX")
    _, specs = fn.structured_input_signature
    names = [t.name for t in signature.inputs]

    # tf2onnx converts a tf.function taking positional tensors; the signature takes keywords.
    @tf.function
    def positional(*args: Any) -> Any:
        return fn(**dict(zip(names, args, strict=True)))

    try:
        # Each spec named by its signature key: tf2onnx names the ONNX inputs after the specs.
        tf2onnx.convert.from_function(positional, opset=opset, output_path=str(path),
                                      input_signature=[tf.TensorSpec(specs[n].shape, specs[n].dtype, name=n)
                                                       for n in names])
    except Exception as e:  # tf2onnx raises many types; the first line names the op
        raise InvalidInput(f"tf2onnx could not convert the model (opset {opset}): {_first_line(e)}") from None


def check_onnx(fn: Any, signature: Signature, path: Path, step: str) -> dict[str, Any]:
    """The converted file against TensorFlow on sample inputs; returns the parity record."""
    import onnxruntime as ort

    x = sample(signature)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [t.name for t in signature.outputs]
    got = dict(zip(names, session.run(names, x), strict=True))
    return check_parity(step, run_tf(fn, x), got, ATOL, RTOL).record(ATOL, RTOL)


def convert(source: Path, dest: Path, workdir: Path) -> tuple[Signature, dict[str, Any], dict[str, Any]]:
    """Write `dest/model.onnx` and `dest/original/`; returns (signature, lineage step, extra)."""
    kind = tf_kind(source)
    assert kind is not None
    tf = require("tensorflow", "tensorflow", f"importing {source.name}")
    tf2onnx = require("tf2onnx", "tensorflow", f"importing {source.name}")
    loaded, fn = serving(saved_model(source, workdir), source)
    signature = signature_of(fn)
    to_onnx(fn, signature, dest / "model.onnx")
    parity = check_onnx(fn, signature, dest / "model.onnx", f"converting {source.name} to ONNX (tf2onnx)")
    del loaded
    (dest / "original").mkdir()
    original = dest / "original" / (source.name if kind != "saved-model" else "saved_model")
    if kind == "saved-model":
        shutil.copytree(source, original)
    else:
        shutil.copyfile(source, original)
    rel = str(original.relative_to(dest))
    step = {"pass": "import", "from": kind, "converter": f"tf2onnx {tf2onnx.__version__}", "opset": OPSET,
            "tensorflow": tf.__version__, "original": rel, "parity": parity}
    return signature, step, {"opset": OPSET, "original": rel, "original_format": kind}

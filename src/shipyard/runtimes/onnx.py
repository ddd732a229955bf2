"""ONNX Runtime: CPU provider, CUDA when present and asked for."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.errors import InvalidInput
from shipyard.repository import Signature, TensorSpec
from shipyard.runtimes.base import Runtime, RuntimeOptions

# onnx TensorProto element types -> V2 datatypes.
ONNX_TO_V2 = {
    1: "FP32", 2: "UINT8", 3: "INT8", 4: "UINT16", 5: "INT16", 6: "INT32", 7: "INT64",
    8: "BYTES", 9: "BOOL", 10: "FP16", 11: "FP64", 12: "UINT32", 13: "UINT64",
}


def _spec(value_info: Any) -> TensorSpec:
    t = value_info.type.tensor_type
    if t.elem_type not in ONNX_TO_V2:
        raise InvalidInput(
            f"ONNX tensor '{value_info.name}' has element type {t.elem_type}, which V2 cannot carry"
        )
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
    return TensorSpec(name=value_info.name, datatype=ONNX_TO_V2[t.elem_type], shape=dims)


def _strings(array: np.ndarray) -> np.ndarray:
    # ONNX Runtime takes string tensors as object arrays of str, not bytes.
    out = np.empty(array.shape, dtype=object)
    out.reshape(-1)[:] = [b.decode("utf-8", "replace") if isinstance(b, bytes) else str(b) for b in array.reshape(-1)]
    return out


class OnnxRuntime(Runtime):
    format = "onnx"
    description = "ONNX model run by ONNX Runtime"

    def load(self) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = self.options.threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        spin = "1" if self.options.spin else "0"
        so.add_session_config_entry("session.intra_op.allow_spinning", spin)
        so.add_session_config_entry("session.inter_op.allow_spinning", spin)
        providers = ["CPUExecutionProvider"]
        if self.options.device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(self.path / "model.onnx"), so, providers=providers)

    def infer(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        feed = {k: (_strings(v) if v.dtype == object else v) for k, v in inputs.items()}
        results = self.session.run(outputs, feed)
        return dict(zip(outputs, results, strict=True))

    def unload(self) -> None:
        self.session = None

    @classmethod
    def claims(cls, source: Path) -> bool:
        return source.is_file() and source.suffix == ".onnx"

    @classmethod
    def inspect(cls, source: Path, options: RuntimeOptions) -> Signature:
        import onnx

        try:
            model = onnx.load(str(source), load_external_data=False)
        except Exception as e:  # onnx raises DecodeError and friends
            raise InvalidInput(f"{source} is not a readable ONNX model: {e}") from None
        initializers = {i.name for i in model.graph.initializer}
        return Signature(
            inputs=[_spec(v) for v in model.graph.input if v.name not in initializers],
            outputs=[_spec(v) for v in model.graph.output],
        )

    @classmethod
    def stage(cls, source: Path, dest: Path, options: RuntimeOptions) -> dict[str, Any]:
        import onnx

        model = onnx.load(str(source), load_external_data=False)
        external = any(
            t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer
        )
        if external:
            # Pull external weights into one self-contained file so the version is one unit.
            model = onnx.load(str(source))
            onnx.save(model, str(dest / "model.onnx"), save_as_external_data=model.ByteSize() > 2**31 - 1)
        else:
            shutil.copyfile(source, dest / "model.onnx")
        return {"opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None)}

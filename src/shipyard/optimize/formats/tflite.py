"""TFLite versions: `model.tflite`, served by the tflite runtime (LiteRT). Made by the `tflite`
pass from an imported TensorFlow model, or imported as they are; the `tflite-to-onnx` pass turns
one into ONNX for every other pass."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shipyard.optimize.artifact import Artifact
from shipyard.optimize.formats.base import Format, register, tally
from shipyard.repository import Manifest

if TYPE_CHECKING:
    from shipyard.optimize.passes.base import Context

FILE = "model.tflite"


@register
class Tflite(Format):
    name = "tflite"
    kind = "tflite"

    def load(self, folder: Path, manifest: Manifest, workdir: Path) -> Artifact:
        dest = workdir / "source.tflite"
        shutil.copyfile(folder / FILE, dest)
        names = manifest.extra.get("tflite_names")
        return Artifact("tflite", manifest.signature, tflite_path=dest, extra={"tflite_names": names} if names else {})

    def saves(self, artifact: Artifact) -> bool:
        return artifact.kind == "tflite"

    def save(self, artifact: Artifact, dest: Path, ctx: Context) -> dict[str, Any]:
        assert artifact.tflite_path is not None
        shutil.copyfile(artifact.tflite_path, dest / FILE)
        names = artifact.extra.get("tflite_names")
        return {"tflite_names": names} if names else {}

    def count(self, folder: Path) -> tuple[int, int]:
        """Elements of the flatbuffer's constant tensors (those with a data buffer: weights and
        biases, int8 ones too); inputs and activations have none."""
        from ai_edge_litert import schema_py_generated as schema

        data = (folder / FILE).read_bytes()
        model = schema.Model.GetRootAsModel(data, 0)
        tensors: list[np.ndarray] = []
        for g in range(model.SubgraphsLength()):
            graph = model.Subgraphs(g)
            for i in range(graph.TensorsLength()):
                t = graph.Tensors(i)
                buffer = model.Buffers(t.Buffer())
                dtype = DTYPES.get(t.Type())
                if buffer is None or dtype is None:
                    continue
                if buffer.DataLength():
                    raw = buffer.DataAsNumpy().tobytes()
                elif buffer.Offset() > 1:  # large models keep buffers after the flatbuffer
                    raw = data[buffer.Offset(): buffer.Offset() + buffer.Size()]
                else:
                    continue
                tensors.append(np.frombuffer(raw, dtype=dtype))
        return tally(tensors)


# TFLite TensorType -> numpy (schema.fbs): FLOAT32, FLOAT16, INT32, UINT8, INT64, INT16, INT8.
DTYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 7: np.int16, 9: np.int8}

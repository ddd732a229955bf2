"""What flows through a recipe: a model in one of two forms, plus its signature.

- `torch`: an in-memory `nn.Module` (a torch.export program's module, or a transformers model);
- `onnx`: a `.onnx` file in the run's work folder;
- `tflite`: a `.tflite` flatbuffer in the run's work folder (run by LiteRT).

Passes never modify their input artifact's files: they write new ones into `Context.workdir`.
Opening a published version as an artifact, and saving one, is the work of `optimize/formats/`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from shipyard.errors import InvalidInput
from shipyard.repository import Signature


@dataclass
class Artifact:
    kind: Literal["torch", "onnx", "tflite"]
    signature: Signature
    module: Any = None
    onnx_path: Path | None = None
    tflite_path: Path | None = None
    # Facts the publishing step needs: 'architecture' (transformers class), 'weight_only' (bits).
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_transformers(self) -> bool:
        return self.kind == "torch" and "architecture" in self.extra

    def evolve(self, **changes: Any) -> Artifact:
        return replace(self, extra={**self.extra, **changes.pop("extra", {})}, **changes)

    def require(self, kind: str, pass_name: str) -> None:
        if self.kind != kind:
            hint = ("put an `export` pass (format: onnx) before it" if kind == "onnx"
                    else "run it on a PyTorch version (torch-export or hf-transformers), before any export to ONNX")
            raise InvalidInput(f"pass '{pass_name}' works on {kind} models, but the model here is {self.kind}; {hint}")


def set_mode(module: Any, train: bool) -> Any:
    return module.train(train)


def program_module(program: Any) -> Any:
    """A torch.export program as a module. Its train()/eval() raise (dropout and batch norm were
    fixed for inference when it was exported), which breaks tools that call them, such as the
    ONNX exporter: make them no-ops on this instance."""
    import types

    module = program.module()
    object.__setattr__(module, "train", types.MethodType(lambda self, mode=True: self, module))
    object.__setattr__(module, "eval", types.MethodType(lambda self: self, module))
    return module


def torch_forward(artifact: Artifact) -> Any:
    """A callable taking the inputs in signature order and returning a tuple of output tensors."""
    module = artifact.module
    in_names = [t.name for t in artifact.signature.inputs]
    out_names = [t.name for t in artifact.signature.outputs]
    if artifact.is_transformers:
        def call(*args: Any) -> tuple[Any, ...]:
            result = module(**dict(zip(in_names, args, strict=True)))
            return tuple(result[n] for n in out_names)
        return call

    def plain(*args: Any) -> tuple[Any, ...]:
        result = module(*args)
        return result if isinstance(result, tuple) else (result,)
    return plain


def run_torch(artifact: Artifact, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import torch

    call = torch_forward(artifact)
    args = [torch.from_numpy(np.ascontiguousarray(inputs[t.name])) for t in artifact.signature.inputs]
    with torch.inference_mode():
        result = call(*args)
    return {t.name: r.detach().float().numpy() for t, r in zip(artifact.signature.outputs, result, strict=True)}


def run_artifact(artifact: Artifact, inputs: dict[str, np.ndarray], threads: int = 1) -> dict[str, np.ndarray]:
    """Outputs of the artifact on `inputs`, by output name (for parity checks and calibration)."""
    if artifact.kind == "torch":
        return run_torch(artifact, inputs)
    if artifact.kind == "tflite":
        from shipyard.runtimes.tflite import run_tflite

        assert artifact.tflite_path is not None
        return run_tflite(artifact.tflite_path, inputs, artifact.extra.get("tflite_names"), threads)
    import onnxruntime as ort

    assert artifact.onnx_path is not None
    session = ort.InferenceSession(str(artifact.onnx_path), quiet_session_options(threads),
                                   providers=["CPUExecutionProvider"])
    names = [t.name for t in artifact.signature.outputs]
    try:
        return dict(zip(names, session.run(names, inputs), strict=True))
    finally:
        del session


def quiet_session_options(threads: int = 1) -> Any:
    """ORT session options whose threads do not spin when idle. A live session with spinning
    threads was measured making PyTorch in the same process 25x slower (0.18 -> 5 ms at batch 1)
    on 2 cores, which would poison every latency measured after it."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return so


def export_program(artifact: Artifact, example: dict[str, np.ndarray], path: Path) -> None:
    """Save a torch artifact as a torch.export program with a dynamic batch dimension."""
    import torch

    module = artifact.module
    if artifact.is_transformers:
        module = _positional(module, artifact.signature)  # forward(*args): shapes nest one level
    args = tuple(torch.from_numpy(example[t.name]) for t in artifact.signature.inputs)
    # Every variable dimension stays variable; AUTO lets export specialise what must be fixed.
    dims = [{i: torch.export.Dim.AUTO for i, s in enumerate(spec.shape) if s == -1}
            for spec in artifact.signature.inputs]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(set_mode(module, False), args, dynamic_shapes=(tuple(dims),) if artifact.is_transformers else tuple(dims))
    torch.export.save(program, str(path))


def _positional(model: Any, signature: Signature) -> Any:
    """A transformers model as a module taking inputs by position and returning its outputs as a
    tuple, which is what torch.export and the torch-export runtime expect."""
    import torch

    in_names = [t.name for t in signature.inputs]
    out_names = [t.name for t in signature.outputs]

    class Positional(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *args: Any) -> tuple[Any, ...]:
            result = self.model(**dict(zip(in_names, args, strict=True)))
            return tuple(result[n] for n in out_names)

    return Positional()

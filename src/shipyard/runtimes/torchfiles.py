"""Telling PyTorch's file kinds apart without unpickling anything, and torch <-> V2 dtypes."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.runtimes.base import Runtime

PICKLE_SUFFIXES = {".pkl", ".pickle", ".pt", ".pth", ".bin", ".joblib", ".ckpt"}


def zip_kind(path: Path) -> str | None:
    """'export' (torch.export program), 'torchscript', 'pickle' (torch.save) or None."""
    if not path.is_file() or not zipfile.is_zipfile(path):
        return None
    try:
        names = zipfile.ZipFile(path).namelist()
    except zipfile.BadZipFile:
        return None
    if any(n.endswith("models/model.json") or n.endswith("/archive_format") for n in names):
        return "export"
    if any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names):
        return "torchscript"
    if any(n.endswith("data.pkl") for n in names):
        return "pickle"
    return None


def is_pickle(path: Path) -> bool:
    """A file whose loading runs the pickle machinery (it can execute code)."""
    if not path.is_file():
        return False
    kind = zip_kind(path)
    if kind is not None:
        return kind == "pickle"
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return True
    with open(path, "rb") as f:
        head = f.read(2)
    return len(head) == 2 and head[0] == 0x80 and head[1] <= 5  # pickle protocol opcode


def torch_to_v2(dtype: Any) -> str:
    import torch

    table = {
        torch.bool: "BOOL", torch.uint8: "UINT8", torch.int8: "INT8", torch.int16: "INT16",
        torch.int32: "INT32", torch.int64: "INT64", torch.float16: "FP16", torch.float32: "FP32",
        torch.float64: "FP64", torch.uint16: "UINT16", torch.uint32: "UINT32",
        torch.uint64: "UINT64",
    }
    if dtype not in table:
        from shipyard.errors import InvalidInput

        raise InvalidInput(f"torch dtype {dtype} has no V2 datatype")
    return table[dtype]


class TorchModuleRuntime(Runtime):
    """Shared by the PyTorch runtimes: inputs in signature order, outputs named by position."""

    def _open(self, device: Any) -> Any:
        """Load and return the callable module, placed on `device`."""
        raise NotImplementedError

    def load(self) -> None:
        import torch

        self.torch = torch
        self.device = torch.device(self.options.device if torch.cuda.is_available() else "cpu")
        torch.set_num_threads(self.options.threads)
        self.module = self._open(self.device)
        self.input_names = [t.name for t in self.signature.inputs]
        self.output_names = [t.name for t in self.signature.outputs]

    def infer(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        torch = self.torch
        with torch.inference_mode():
            args = [torch.from_numpy(np.ascontiguousarray(inputs[n])).to(self.device) for n in self.input_names]
            result = self.module(*args)
        if isinstance(result, torch.Tensor):
            result = (result,)
        by_name = dict(zip(self.output_names, result, strict=True))
        return {n: by_name[n].detach().cpu().numpy() for n in outputs}

    def unload(self) -> None:
        self.module = None

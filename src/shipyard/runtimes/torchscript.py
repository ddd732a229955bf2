"""TorchScript files, run by PyTorch under inference mode. They record no shapes or dtypes, so
importing one needs the signature given (`--input` / `--output`)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.runtimes.base import Runtime, RuntimeOptions
from shipyard.runtimes.torchfiles import zip_kind

FILE = "model.ts"


class TorchScriptRuntime(Runtime):
    format = "torchscript"
    description = "TorchScript module run by PyTorch"

    def load(self) -> None:
        import torch

        self.torch = torch
        self.device = torch.device(self.options.device if torch.cuda.is_available() else "cpu")
        torch.set_num_threads(self.options.threads)
        self.module = torch.jit.load(str(self.path / FILE), map_location=self.device).eval()
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
        return {n: by_name[n].cpu().numpy() for n in outputs}

    def unload(self) -> None:
        self.module = None

    @classmethod
    def claims(cls, source: Path) -> bool:
        return zip_kind(source) == "torchscript"

    @classmethod
    def inspect(cls, source: Path, options: RuntimeOptions) -> None:
        return None

    @classmethod
    def stage(cls, source: Path, dest: Path, options: RuntimeOptions) -> dict[str, Any]:
        shutil.copyfile(source, dest / FILE)
        return {}

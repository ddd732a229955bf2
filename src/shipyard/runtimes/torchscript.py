"""TorchScript files, run by PyTorch under inference mode. They record no shapes or dtypes, so
importing one needs the signature given (`--input` / `--output`)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from shipyard.runtimes.base import RuntimeOptions
from shipyard.runtimes.torch_module import TorchModuleRuntime
from shipyard.runtimes.torch_sniff import zip_kind

FILE = "model.ts"


class TorchScriptRuntime(TorchModuleRuntime):
    format = "torchscript"
    description = "TorchScript module run by PyTorch"

    def _open(self, device: Any) -> Any:
        import torch

        return torch.jit.load(str(self.path / FILE), map_location=device).eval()

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

"""The base of the runtimes that run a PyTorch module (torch.export, TorchScript)."""

from __future__ import annotations

from typing import Any

import numpy as np

from shipyard.runtimes.base import Runtime
from shipyard.runtimes.torch_dtypes import writable


class TorchModuleRuntime(Runtime):
    """Shared by the PyTorch runtimes: inputs in signature order, outputs named by position.

    What an implementer must do: define `_open`; loading, inference and unloading are done here."""

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
            args = [torch.from_numpy(writable(inputs[n])).to(self.device) for n in self.input_names]
            result = self.module(*args)
        if isinstance(result, torch.Tensor):
            result = (result,)
        by_name = dict(zip(self.output_names, result, strict=True))
        return {n: by_name[n].detach().cpu().numpy() for n in outputs}

    def unload(self) -> None:
        self.module = None

"""torch.export programs (`.pt2`), run by PyTorch under inference mode on cpu or cuda."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from shipyard.errors import InvalidInput
from shipyard.repository import Signature, TensorSpec
from shipyard.runtimes.base import RuntimeOptions
from shipyard.runtimes.torch_dtypes import torch_to_v2
from shipyard.runtimes.torch_module import TorchModuleRuntime
from shipyard.runtimes.torch_sniff import zip_kind

FILE = "model.pt2"


def _shape(val: Any) -> list[int]:
    return [int(d) if isinstance(d, int) or str(d).isdigit() else -1 for d in val.shape]


def signature_of(program: Any) -> Signature:
    """Inputs by their argument names; outputs positionally as output__0, output__1, ..."""
    user_inputs = set(program.graph_signature.user_inputs)
    inputs, outputs = [], []
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in user_inputs:
            val = node.meta.get("val")
            if val is None or not hasattr(val, "shape"):
                raise InvalidInput(f"exported input '{node.name}' is not a tensor")
            inputs.append(TensorSpec(name=node.name, datatype=torch_to_v2(val.dtype), shape=_shape(val)))
        elif node.op == "output":
            for i, arg in enumerate(node.args[0]):
                val = getattr(arg, "meta", {}).get("val")
                if val is None or not hasattr(val, "shape"):
                    raise InvalidInput(f"exported output {i} is not a tensor")
                outputs.append(TensorSpec(name=f"output__{i}", datatype=torch_to_v2(val.dtype), shape=_shape(val)))
    return Signature(inputs=inputs, outputs=outputs)


class TorchExportRuntime(TorchModuleRuntime):
    format = "torch-export"
    description = "torch.export program run by PyTorch"

    def _open(self, device: Any) -> Any:
        import torch

        return torch.export.load(str(self.path / FILE)).module().to(device)

    @classmethod
    def claims(cls, source: Path) -> bool:
        return zip_kind(source) == "export"

    @classmethod
    def inspect(cls, source: Path, options: RuntimeOptions) -> Signature:
        import torch

        return signature_of(torch.export.load(str(source)))

    @classmethod
    def stage(cls, source: Path, dest: Path, options: RuntimeOptions) -> dict[str, Any]:
        shutil.copyfile(source, dest / FILE)
        return {}

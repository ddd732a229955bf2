"""torch.export versions: `model.pt2`, a program loaded with torch's safe loader. Every PyTorch
result that no other format saves is saved as one (it is the fallback)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shipyard.errors import InvalidInput
from shipyard.optimize.artifact import Artifact, export_program, program_module
from shipyard.optimize.formats.base import Format, register, tally
from shipyard.repository import Manifest

if TYPE_CHECKING:
    from shipyard.optimize.passes.base import Context

FILE = "model.pt2"


@register
class TorchExport(Format):
    name = "torch-export"
    kind = "torch"
    verify_saved = True
    fallback = True

    def load(self, folder: Path, manifest: Manifest, workdir: Path) -> Artifact:
        import torch

        program = torch.export.load(str(folder / FILE))
        return Artifact("torch", manifest.signature, module=program_module(program), extra={})

    def saves(self, artifact: Artifact) -> bool:
        return artifact.kind == "torch"

    def save(self, artifact: Artifact, dest: Path, ctx: Context) -> dict[str, Any]:
        sample = ctx.sample(artifact.signature, 4)
        try:
            export_program(artifact, sample, dest / FILE)
        except Exception as e:  # torch.export raises many kinds; say which step and what to do
            raise InvalidInput(f"saving the result as torch.export failed: {str(e).splitlines()[0][:300]}; "
                               "add an `export` pass to ONNX at the end of the recipe") from None
        return {}

    def count(self, folder: Path) -> tuple[int, int]:
        import torch

        program = torch.export.load(str(folder / FILE))
        tensors: list[np.ndarray] = []
        seen: set[tuple[int, int, tuple[int, ...]]] = set()
        for name, t in program.state_dict.items():
            key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
            if key in seen:  # a tied weight (GPT-2's lm_head is its token embedding): stored once
                continue
            seen.add(key)
            if name.endswith(("scales", "scales_zeros")):
                continue
            if name.endswith("qweight") and t.dtype == torch.uint8:  # int4 packed: two per byte
                tensors.append(np.ones(t.numel() * 2))
                continue
            tensors.append(t.detach().float().numpy())
        for t in program.constants.values():
            if hasattr(t, "numel"):
                tensors.append(t.detach().float().numpy())
        return tally(tensors)

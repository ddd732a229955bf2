"""Hugging Face transformers versions (`hf-transformers`): a `save_pretrained` folder with
safetensors weights, opened by the transformers class the manifest names."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from shipyard.errors import InvalidInput
from shipyard.optimize.artifact import Artifact
from shipyard.optimize.formats.base import Format, register, tally
from shipyard.repository import Manifest

if TYPE_CHECKING:
    from shipyard.optimize.passes.base import Context


@register
class HfTransformers(Format):
    name = "hf-transformers"
    kind = "torch"
    verify_saved = True

    def load(self, folder: Path, manifest: Manifest, workdir: Path) -> Artifact:
        import transformers

        arch = manifest.extra.get("architecture")
        cls = getattr(transformers, str(arch), None)
        if cls is None:
            raise InvalidInput(f"transformers has no class {arch!r}; cannot open {manifest.name}:{manifest.version}")
        model = cls.from_pretrained(str(folder), local_files_only=True, use_safetensors=True).eval()
        return Artifact("torch", manifest.signature, module=model, extra={"architecture": arch})

    def saves(self, artifact: Artifact) -> bool:
        # A pass that changed the layers beyond what a config describes (pruned heads, weight-only
        # layers) asks for torch.export instead.
        return artifact.is_transformers and not {"save_as", "saved_as", "weight_only"} & set(artifact.extra)

    def save(self, artifact: Artifact, dest: Path, ctx: Context) -> dict[str, Any]:
        artifact.module.save_pretrained(str(dest), safe_serialization=True)
        return {"architecture": artifact.extra["architecture"]}

    def count(self, folder: Path) -> tuple[int, int]:
        return count_safetensors(folder)


def count_safetensors(folder: Path) -> tuple[int, int]:
    from safetensors.numpy import load_file

    return tally(t for f in sorted(folder.glob("*.safetensors")) for t in load_file(str(f)).values())

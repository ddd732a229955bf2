"""Causal LM versions (`hf-causal-lm`, served by the generation engine): a transformers folder, or
one whose Linear weights are int8 / packed int4 + scales (`shipyard.quant.lm_folder`, where the
runtime reads it too). Results are saved in the weight-only form, so only passes that accept this
format may run on it, and versions are measured by held-out perplexity rather than on tensors."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from shipyard.optimize.artifact import Artifact
from shipyard.optimize.formats.base import Format, register
from shipyard.optimize.formats.hf import count_safetensors
from shipyard.quant.lm_folder import is_weight_only, load_weight_only, save_weight_only
from shipyard.repository import Manifest

if TYPE_CHECKING:
    from shipyard.optimize.passes.base import Context


def open_model(folder: Path, extra: dict[str, Any]) -> Any:
    """The model in `folder`: weight-only layers rebuilt, or the transformers class `extra` names."""
    if is_weight_only(folder):
        return load_weight_only(folder)
    import transformers

    loader = getattr(transformers, _architecture(extra), transformers.AutoModelForCausalLM)
    return loader.from_pretrained(str(folder), local_files_only=True, use_safetensors=True).eval()


def _architecture(extra: dict[str, Any]) -> str:
    return str(extra.get("architecture") or "AutoModelForCausalLM")


@register
class HfCausalLm(Format):
    name = "hf-causal-lm"
    kind = "torch"
    keeps_format = True
    evaluator = "perplexity"

    def load(self, folder: Path, manifest: Manifest, workdir: Path) -> Artifact:
        # saved_as: the weight-only pass may pick kernels that torch.export could not save;
        # tokenizer: the folder the result copies its tokenizer from.
        return Artifact("torch", manifest.signature, module=open_model(folder, manifest.extra),
                        extra={"architecture": _architecture(manifest.extra), "saved_as": "safetensors",
                               "tokenizer": str(folder)})

    def saves(self, artifact: Artifact) -> bool:
        return artifact.extra.get("saved_as") == "safetensors"

    def save(self, artifact: Artifact, dest: Path, ctx: Context) -> dict[str, Any]:
        meta = save_weight_only(artifact.module, Path(artifact.extra["tokenizer"]), dest)
        ctx.facts["weight_only_file"] = {k: v for k, v in meta.items() if k != "layers"} | {"layers": len(meta["layers"])}
        return {"architecture": artifact.extra["architecture"],
                "weight_only": {"bits": meta["bits"], "group_size": meta["group_size"]}}

    def count(self, folder: Path) -> tuple[int, int]:
        return count_safetensors(folder)

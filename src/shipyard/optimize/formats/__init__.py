"""Model formats optimize reads and writes, one module each; importing this package registers them.

`REGISTRY` maps the manifest's `format` to its `Format`. A new format is a module here plus its
line below.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from shipyard.errors import InvalidInput
from shipyard.optimize.artifact import Artifact
from shipyard.optimize.formats import hf, hf_causal_lm, onnx, tflite, torch_export, torchscript  # noqa: F401 - @register
from shipyard.optimize.formats.base import REGISTRY, Format, register
from shipyard.repository import Manifest, Repository

if TYPE_CHECKING:
    from shipyard.optimize.passes.base import Context

__all__ = ["REGISTRY", "Format", "count", "format_of", "load", "register", "save", "target"]


def format_of(manifest: Manifest) -> Format:
    fmt = REGISTRY.get(manifest.format)
    if fmt is None:
        known = sorted(REGISTRY)
        raise InvalidInput(
            f"{manifest.name}:{manifest.version} is {manifest.format}; optimize reads {', '.join(known[:-1])} "
            f"and {known[-1]} versions (export the model to ONNX or torch.export and import that)")
    return fmt


def load(repo: Repository, manifest: Manifest, workdir: Path) -> Artifact:
    """Open a published version as an artifact (files are copied, never edited in place)."""
    return format_of(manifest).load(repo.path(manifest.name, manifest.version), manifest, workdir)


def target(artifact: Artifact) -> Format:
    """The format a recipe's result is saved in: the one that claims it, else the fallback."""
    claimed = [f for f in REGISTRY.values() if f.saves(artifact)]
    return next((f for f in claimed if not f.fallback), None) or next(f for f in claimed if f.fallback)


def save(artifact: Artifact, dest: Path, ctx: Context) -> tuple[str, dict[str, Any]]:
    """Write the artifact's files into `dest`; returns (format, manifest extra)."""
    fmt = target(artifact)
    return fmt.name, fmt.save(artifact, dest, ctx)


def count(folder: Path, fmt: str) -> tuple[int, int]:
    """(total, non-zero) weight elements of the version in `folder`; (0, 0) for a format
    optimize does not read."""
    known = REGISTRY.get(fmt)
    return known.count(folder) if known is not None else (0, 0)

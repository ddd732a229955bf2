"""The format interface: how optimize opens, saves and counts the versions of one model format.

A format is a class registered with `@register` in its own module of this package:

    @register
    class Onnx(Format):
        name = "onnx"
        kind = "onnx"
        def load(self, folder, manifest, workdir): ...
        def saves(self, artifact): ...
        def save(self, artifact, dest, ctx): ...
        def count(self, folder): ...

Implementers must: never modify the published folder in `load` (copy what a pass could edit into
`workdir`); write only into `dest` in `save`; raise `shipyard.errors.InvalidInput` with the fix when
a model cannot be opened or saved. `name` is the manifest's `format`, the one the runtimes serve.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

import numpy as np

from shipyard.optimize.artifact import Artifact
from shipyard.repository import Manifest

if TYPE_CHECKING:  # passes import every pass (and torch); a format only calls the context
    from shipyard.optimize.passes.base import Context


class Format(ABC):
    """One model format: load a version as an artifact, save an artifact, count its weights."""

    name: ClassVar[str]
    # The in-memory form `load` gives: an `nn.Module` ('torch'), an .onnx file ('onnx') or a
    # .tflite file ('tflite').
    kind: ClassVar[Literal["torch", "onnx", "tflite"]]
    # Results are saved back in this format, so every pass of a recipe must accept it (checked
    # before anything runs). False where a pass can convert the model into another format.
    keeps_format: ClassVar[bool] = False
    # The publish step reloads the saved files with the serving runtime and checks them against
    # the artifact: saving that re-traces the model (torch.export) is a conversion too.
    verify_saved: ClassVar[bool] = False
    # The evaluator (`shipyard.optimize.evaluators.REGISTRY`) that measures versions of this format
    # unless the caller gives one.
    evaluator: ClassVar[str] = "classification"

    @abstractmethod
    def load(self, folder: Path, manifest: Manifest, workdir: Path) -> Artifact:
        """The version in `folder` as an artifact whose `kind` is this format's."""

    # Saves what no other format claims (torch-export: any PyTorch model it can trace).
    fallback: ClassVar[bool] = False

    @abstractmethod
    def saves(self, artifact: Artifact) -> bool:
        """Whether a recipe's result `artifact` is saved in this format. At most one format that
        is not a `fallback` may say yes to an artifact."""

    @abstractmethod
    def save(self, artifact: Artifact, dest: Path, ctx: Context) -> dict[str, Any]:
        """Write the artifact's files into `dest`; returns what the manifest's `extra` needs to
        serve them (e.g. the transformers class)."""

    @abstractmethod
    def count(self, folder: Path) -> tuple[int, int]:
        """(total, non-zero) weight elements in the files of a version; quantization scales and
        zero points are not counted."""


def tally(tensors: Iterable[np.ndarray]) -> tuple[int, int]:
    """(elements, non-zero elements) over `tensors`."""
    total = nonzero = 0
    for t in tensors:
        total += int(t.size)
        nonzero += int(np.count_nonzero(t))
    return total, nonzero


F = TypeVar("F", bound=type[Format])

# manifest format -> format.
REGISTRY: dict[str, Format] = {}


def register(cls: F) -> F:
    REGISTRY[cls.name] = cls()
    return cls

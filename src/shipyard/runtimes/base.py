"""The runtime interface: load one version, describe it, infer on a batch, unload.

A backend is one file in this package holding a `Runtime` subclass, plus one line in `REGISTRY`
(`shipyard/runtimes/__init__.py`). Importing a model file goes through the same class: `claims`
says whether a path is in its format, `inspect` reads the signature, `stage` copies the files.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from shipyard.repository import Manifest, Signature


@dataclass(frozen=True)
class RuntimeOptions:
    threads: int = 1
    device: str = "cpu"
    trust_pickle: bool = False
    # ONNX Runtime's pool threads spin after each parallel section by default. That wins a little
    # latency on an idle machine and costs a core of CPU the server's event loop needs.
    spin: bool = False


class Runtime(ABC):
    """One loaded model version.

    Implementers must: load in `load` (not `__init__`); run `infer` without holding the GIL for the
    heavy part (ONNX Runtime and PyTorch kernels release it), so the server's event loop stays
    responsive; return a dict with at least the requested output names, each an array whose
    leading dimension matches the inputs' when the signature is batched.
    """

    format: ClassVar[str]
    description: ClassVar[str]

    def __init__(self, path: Path, manifest: Manifest, options: RuntimeOptions) -> None:
        self.path = path
        self.manifest = manifest
        self.options = options

    @property
    def signature(self) -> Signature:
        return self.manifest.signature

    @abstractmethod
    def load(self) -> None: ...

    @abstractmethod
    def infer(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        """Run one batch. `inputs` are checked against the signature already."""

    def unload(self) -> None:  # noqa: B027 - most runtimes only drop references
        pass

    # -- importing ---------------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def claims(cls, source: Path) -> bool:
        """True when `source` (a file or folder) is in this runtime's format."""

    @classmethod
    @abstractmethod
    def inspect(cls, source: Path, options: RuntimeOptions) -> Signature | None:
        """Read the signature from the model itself; None when the format does not record one."""

    @classmethod
    @abstractmethod
    def stage(cls, source: Path, dest: Path, options: RuntimeOptions) -> dict[str, Any]:
        """Copy the model's files into `dest` (a staging folder); return format-specific extras."""

"""The manifest of one published version: what it is, where it came from, what it measured."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shipyard import __version__
from shipyard.errors import InvalidInput, shown
from shipyard.tensors import DATATYPES

SCHEMA_VERSION = 1
# \Z, not $: "$" also matches before a final newline, which would let "digits\n" through.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")


def check_model_name(name: str) -> str:
    if not NAME_PATTERN.match(name) or name in (".", ".."):
        raise InvalidInput(
            f"model name {shown(name)} is not allowed; use letters, digits, '_', '-' and '.', "
            "starting with a letter or digit (at most 128 characters)"
        )
    return name


class TensorSpec(BaseModel):
    """One input or output: name, V2 datatype, shape with -1 for variable dimensions."""

    model_config = ConfigDict(extra="forbid")

    name: str
    datatype: str
    shape: list[int]

    @field_validator("datatype")
    @classmethod
    def _known_datatype(cls, v: str) -> str:
        if v not in DATATYPES:
            raise ValueError(f"unknown datatype {v!r}; expected one of {', '.join(DATATYPES)}")
        return v

    @field_validator("shape")
    @classmethod
    def _dims(cls, v: list[int]) -> list[int]:
        if any(d < -1 for d in v):
            raise ValueError(f"shape {v} has a dimension below -1")
        return v

    def describe(self) -> str:
        return f"{self.name}: {self.datatype} {self.shape}"


class Signature(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def input(self, name: str) -> TensorSpec | None:
        return next((t for t in self.inputs if t.name == name), None)

    @property
    def batched(self) -> bool:
        """True when every input and output has a variable leading (batch) dimension."""
        return all(t.shape and t.shape[0] == -1 for t in [*self.inputs, *self.outputs])


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str
    sha256: str
    size: int


class Lineage(BaseModel):
    """Where a version came from: its parent version and the recipe that made it."""

    model_config = ConfigDict(extra="forbid")

    parent: int | None = None
    recipe: list[dict[str, Any]] = Field(default_factory=list)
    source: str | None = Field(None, description="What it was made from, when not a parent version.")


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    name: str
    version: int
    format: str
    files: list[FileEntry]
    signature: Signature
    lineage: Lineage = Field(default_factory=Lineage)
    metrics: dict[str, Any] = Field(default_factory=dict)
    extra: dict[str, Any] = Field(default_factory=dict, description="Format-specific facts.")
    task: str | None = Field(None, description="What the outputs mean (shipyard.tasks); None: inferred when measured.")
    created: datetime = Field(default_factory=lambda: datetime.now(UTC))
    shipyard_version: str = __version__

    @property
    def size_bytes(self) -> int:
        """The bytes that serve: a kept original (`extra["original"]`, e.g. the Keras file an ONNX
        version was converted from) is lineage, not model size."""
        kept = self.extra.get("original")
        top = str(kept).split("/", 1)[0] + "/" if kept else None
        return sum(f.size for f in self.files if top is None or not f.path.startswith(top))

"""Protocol-neutral request and response types: what every channel decodes into."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shipyard.tensors import Tensor


@dataclass(slots=True)
class RequestedOutput:
    name: str
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class InferRequest:
    model: str
    inputs: list[Tensor]
    version: int | None = None
    outputs: list[RequestedOutput] | None = None
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class InferResponse:
    model: str
    version: int
    outputs: list[Tensor]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)

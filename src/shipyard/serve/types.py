"""Protocol-neutral request and response types: what every channel decodes into."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shipyard.tensors import Tensor

if TYPE_CHECKING:
    from shipyard.config import ShadowConfig
    from shipyard.repository import Signature
    from shipyard.serve.manager import LoadedVersion


@dataclass(slots=True)
class RequestedOutput:
    name: str
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Route:
    """Where a request goes, decided once by `DataPlane.resolve` (traffic split included): the
    version that answers, its signature, and the shadow version that gets a copy, if any."""

    version: int
    signature: Signature
    loaded: LoadedVersion
    shadow: ShadowConfig | None = None


@dataclass(slots=True)
class InferRequest:
    model: str
    inputs: list[Tensor]
    version: int | None = None  # as the client asked: None lets the server choose
    outputs: list[RequestedOutput] | None = None
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    # Set when a channel needed the signature to decode (it resolved first): the plane then
    # answers from this same version instead of routing again.
    route: Route | None = None


@dataclass(slots=True, frozen=True)
class VersionStatus:
    """One loaded version's state, for status endpoints."""

    version: int
    state: str
    reason: str
    created: int | None  # unix time the version was published; None when its manifest is unreadable


@dataclass(slots=True)
class InferResponse:
    model: str
    version: int
    outputs: list[Tensor]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)

"""The one error tree. It knows nothing of transports: each channel maps these classes to its
own status codes in a single table."""

from __future__ import annotations

from itertools import islice


class ShipyardError(Exception):
    """Base of every error a user or client can cause. The message names the problem and the fix;
    `param`, when known, is the one request field at fault (OpenAI's error shape names it)."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class NotFound(ShipyardError):
    """A model, version or file that does not exist."""


class InvalidInput(ShipyardError):
    """A request or argument that is malformed: wrong datatype, shape, size, name or encoding."""


class PayloadTooLarge(InvalidInput):
    """A request body larger than the configured limit."""


class UnsupportedMediaType(InvalidInput):
    """A request body in an encoding the server does not decode (an unknown Content-Encoding)."""


class RequestTimeout(InvalidInput):
    """A request whose headers or body did not arrive in time (a slow or stalled client)."""


class HeadersTooLarge(InvalidInput):
    """A request line and headers larger than the configured limit."""


class Unavailable(ShipyardError):
    """A model that exists but cannot answer now (not loaded, failed to load, queue full)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Conflict(ShipyardError):
    """An action that clashes with the current state (publishing over an existing version)."""


class UnsafeModel(ShipyardError):
    """A model file whose loading could execute code (pickle) without the user's explicit trust."""


class IntegrityError(ShipyardError):
    """A repository file whose checksum or manifest does not match what was published."""


class InferenceFailed(ShipyardError):
    """The runtime raised while computing: the model, not the request, is at fault."""


class TrainingFailed(ShipyardError):
    """A training job that ended with an error on one of its ranks; the message names the rank."""


class Unauthenticated(ShipyardError):
    """A request without a valid API key."""


class PermissionDenied(ShipyardError):
    """A valid API key that may not use this model or channel. The message never says whether
    the model exists, so keys cannot be used to probe the repository."""


class Disconnected(ShipyardError):
    """The client closed its connection before its request was read or answered: there is no one
    to answer, so it is counted (as cancelled) and logged in one line, not as a failure."""


class RateLimited(ShipyardError):
    """A key that is over its request rate; `retry_after` says when a token is free again."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


# How much of a client's value a message repeats: enough to recognise it, never so much that an
# error grows with the input (a 100,000-entry list, a 100 KB name past gRPC's metadata limit).
SHOWN_CHARS = 80
SHOWN_ITEMS = 8


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """`repr(value)` for a message, cut to about `limit` characters; a cut one says how long the
    value was. Every message that repeats what a client sent goes through here."""
    if isinstance(value, (list, tuple, dict)) and len(value) > SHOWN_ITEMS:
        first = dict(islice(value.items(), SHOWN_ITEMS)) if isinstance(value, dict) else list(value[:SHOWN_ITEMS])
        text = repr(first)
        return f"{text[:min(limit, len(text) - 1)]}, ...{text[-1]} ({len(value)} items)"
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f"{len(value)} characters" if isinstance(value, str) else (
        f"{len(value)} bytes" if isinstance(value, bytes) else f"{len(text)} characters written out")
    return f"{text[:limit]}... ({size})"


# The longest message a transport sends: the last guard, for a value no `shown` call cut (gRPC
# sends the message as metadata, and past its limit the client sees RESOURCE_EXHAUSTED instead).
MESSAGE_CHARS = 1000


def clipped(message: str, limit: int = MESSAGE_CHARS) -> str:
    """`message` cut to `limit` characters, saying how long it was."""
    return message if len(message) <= limit else f"{message[:limit]}... (message of {len(message)} characters cut)"

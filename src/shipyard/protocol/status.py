"""Each transport's status code for shipyard's errors, one table per transport, read by the server
(to answer) and by the client (to raise the same class back).

A table is keyed by error class and looked up along the class's MRO, so a new error class answers
as its nearest listed ancestor until it is given a row of its own: no order to keep. The client
goes the other way: for a code, it raises the first class listed with that code, so where several
classes share a code the broader one a client should catch comes first."""

from __future__ import annotations

from typing import TypeVar

from shipyard.errors import (
    Conflict,
    Disconnected,
    HeadersTooLarge,
    InferenceFailed,
    IntegrityError,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    RateLimited,
    RequestTimeout,
    ShipyardError,
    Unauthenticated,
    Unavailable,
    UnsafeModel,
    UnsupportedMediaType,
)

T = TypeVar("T")

HTTP: dict[type[ShipyardError], int] = {
    ShipyardError: 400,
    InvalidInput: 400,
    Unauthenticated: 401,
    PermissionDenied: 403,
    NotFound: 404,
    RateLimited: 429,
    InferenceFailed: 500,
    Unavailable: 503,
    PayloadTooLarge: 413,
    UnsupportedMediaType: 415,
    RequestTimeout: 408,
    HeadersTooLarge: 431,
    UnsafeModel: 400,
    Conflict: 409,
    IntegrityError: 500,
    Disconnected: 499,  # nginx's "client closed request": no one reads it, the access log does
}

# gRPC status code names (`grpc.StatusCode[name]`): names, so the table needs no grpc import.
GRPC: dict[type[ShipyardError], str] = {
    ShipyardError: "INVALID_ARGUMENT",
    InvalidInput: "INVALID_ARGUMENT",
    Unauthenticated: "UNAUTHENTICATED",
    PermissionDenied: "PERMISSION_DENIED",
    NotFound: "NOT_FOUND",
    RateLimited: "RESOURCE_EXHAUSTED",
    InferenceFailed: "INTERNAL",
    Unavailable: "UNAVAILABLE",
    PayloadTooLarge: "RESOURCE_EXHAUSTED",
    UnsupportedMediaType: "INVALID_ARGUMENT",
    RequestTimeout: "DEADLINE_EXCEEDED",
    HeadersTooLarge: "RESOURCE_EXHAUSTED",
    UnsafeModel: "FAILED_PRECONDITION",
    Conflict: "ALREADY_EXISTS",
    IntegrityError: "INTERNAL",
    Disconnected: "CANCELLED",
}


def lookup(table: dict[type[ShipyardError], T], exc: ShipyardError) -> T:
    """The row of the error's class, or of its nearest ancestor that has one."""
    for cls in type(exc).__mro__:
        value = table.get(cls)  # type: ignore[call-overload]
        if value is not None:
            return value
    raise KeyError(type(exc).__name__)  # unreachable: ShipyardError has a row


def http_status(exc: ShipyardError) -> int:
    return lookup(HTTP, exc)


def grpc_code(exc: ShipyardError) -> str:
    return lookup(GRPC, exc)


def _classes(table: dict[type[ShipyardError], T]) -> dict[T, type[ShipyardError]]:
    """Code -> the first class listed with it (the root's row is only the fallback)."""
    out: dict[T, type[ShipyardError]] = {}
    for cls, code in table.items():
        if cls is not ShipyardError:
            out.setdefault(code, cls)
    return out


HTTP_CLASS = _classes(HTTP)
GRPC_CLASS = _classes(GRPC)

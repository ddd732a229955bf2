"""How every HTTP channel answers an error: the status from `shipyard.protocol.status.HTTP` (the one
table, which the client reads too), the message as `{"error": ...}`, Retry-After when known."""

from __future__ import annotations

import logging
import math

import orjson
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response

from shipyard.errors import ShipyardError, Unauthenticated, clipped
from shipyard.protocol.status import http_status

log = logging.getLogger("shipyard.serve")


def error_response(message: str, status: int, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps({"error": clipped(message)}), status_code=status,
                    media_type="application/json", headers=headers)


def status_of(exc: ShipyardError) -> int:
    return http_status(exc)


async def shipyard_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ShipyardError)
    headers = None
    retry_after = getattr(exc, "retry_after", None)  # Unavailable, RateLimited
    if retry_after is not None:
        headers = {"retry-after": str(max(1, math.ceil(retry_after)))}
    if isinstance(exc, Unauthenticated):
        headers = {"www-authenticate": "Bearer"}
    return error_response(exc.message, status_of(exc), headers)


async def http_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    message = str(exc.detail)
    if exc.status_code == 404:
        message = f"no such endpoint: {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    return error_response(message, exc.status_code, getattr(exc, "headers", None))


async def internal_error_handler(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(f"internal error: {type(exc).__name__}: {exc}", 500)

"""How every HTTP channel answers an error: the status from `shipyard.protocol.status.HTTP` (the one
table, which the client reads too), the body in the shape of the channel whose path it is (its
`Channel.error_body`; `{"error": message}` when it declares none), Retry-After when known. The app
keeps an `ErrorShapes` in `app.state.error_shapes`; without one every answer is plain."""

from __future__ import annotations

import logging
import math
from typing import Any

import orjson
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from shipyard.errors import ShipyardError, Unauthenticated, clipped
from shipyard.protocol.status import http_status
from shipyard.serve.channels import Channel, ErrorBody, path_table, route_of

log = logging.getLogger("shipyard.serve")


def plain_body(message: str, status: int, exc: ShipyardError | None) -> dict[str, Any]:
    return {"error": clipped(message)}


class ErrorShapes:
    """The error body each path's channel writes, found by the same path table as the access gate."""

    def __init__(self, declared: list[Channel]) -> None:
        self.table = path_table(declared)
        self.bodies = {c.name: c.error_body for c in declared if c.error_body is not None}

    def __call__(self, path: str) -> ErrorBody:
        return self.bodies.get(route_of(self.table, path)[0], plain_body)


def _body_of(request: Request | None) -> ErrorBody:
    shapes = getattr(request.app.state, "error_shapes", None) if request is not None and "app" in request.scope else None
    return shapes(request.url.path) if shapes is not None else plain_body


def error_response(message: str, status: int, headers: dict[str, str] | None = None,
                   request: Request | None = None, exc: ShipyardError | None = None) -> Response:
    body = _body_of(request)(message, status, exc)
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


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
    return error_response(exc.message, status_of(exc), headers, request, exc)


async def http_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    message = str(exc.detail)
    if exc.status_code == 404:
        message = f"no such endpoint: {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    return error_response(message, exc.status_code, getattr(exc, "headers", None), request)


async def internal_error_handler(request: Request, exc: Exception) -> Response:
    if isinstance(exc, ClientDisconnect):  # the client left, or its body timed out: no one to answer
        log.debug("client gone during %s %s", request.method, request.url.path)
        return error_response("the client disconnected before its request was read", 400, request=request)
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(f"internal error: {type(exc).__name__}: {exc}", 500, request=request)

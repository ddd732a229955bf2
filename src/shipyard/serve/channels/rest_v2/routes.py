"""V2 REST endpoints: a few lines each; decoding in convert.py, work in the data plane."""

from __future__ import annotations

import re
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from shipyard.errors import InvalidInput, ShipyardError, shown
from shipyard.protocol.v2 import (
    HEADER_LENGTH,
    HEALTH_LIVE,
    HEALTH_READY,
    MODEL,
    REPOSITORY,
    REPOSITORY_MODEL,
    VERSION,
    path_pattern,
)
from shipyard.serve.channels.http_errors import internal_error_handler, shipyard_error_handler
from shipyard.serve.channels.http_util import json_response, parse_version, read_body
from shipyard.serve.channels.rest_v2.convert import config_document, decode_request, encode_response
from shipyard.serve.dataplane import DataPlane
from shipyard.serve.types import InferRequest

router = APIRouter()
CHANNEL = "rest_v2"
VERSIONED = MODEL + VERSION


def _plane(request: Request) -> DataPlane:
    plane: DataPlane = request.app.state.dataplane
    return plane


_json = json_response
_version = parse_version


@router.get(HEALTH_LIVE)
async def live() -> Response:
    return _json({"live": True})


@router.get(HEALTH_READY)
async def ready(request: Request) -> Response:
    ok = bool(request.app.state.ready)
    return _json({"ready": ok}, 200 if ok else 503)


@router.get("/v2")
async def server_metadata(request: Request) -> Response:
    return _json(_plane(request).server_metadata())


@router.get("/v2/models/stats")
@router.get(MODEL + "/stats")
@router.get(VERSIONED + "/stats")
async def model_stats(request: Request, model: str | None = None, version: str | None = None) -> Response:
    key = getattr(request.state, "key", None)
    rows = _plane(request).model_stats(model, _version(version))
    return _json({"model_stats": [r for r in rows if _plane(request).visible(key, r["name"])]})


@router.get(MODEL)
@router.get(VERSIONED)
async def model_metadata(request: Request, model: str, version: str | None = None) -> Response:
    return _json(_plane(request).model_metadata(model, _version(version)))


@router.get(MODEL + "/config")
@router.get(VERSIONED + "/config")
async def model_config(request: Request, model: str, version: str | None = None) -> Response:
    """Triton's model configuration as JSON (what tritonclient.http `get_model_config` reads)."""
    return _json(config_document(_plane(request).model_config(model, _version(version))))


@router.get(MODEL + "/ready")
@router.get(VERSIONED + "/ready")
async def model_ready(request: Request, model: str, version: str | None = None) -> Response:
    ok = _plane(request).model_ready(model, _version(version))
    return _json({"name": model, "ready": ok}, 200 if ok else 503)


@router.post(MODEL + "/infer")
@router.post(VERSIONED + "/infer")
async def infer(request: Request, model: str, version: str | None = None) -> Response:
    return await infer_response(request, _plane(request), model, version)


async def infer_response(request: Request, plane: DataPlane, model: str, version: str | None) -> Response:
    binary_default = False

    async def decode() -> InferRequest:
        nonlocal binary_default
        v = _version(version)
        body = await read_body(request)
        plane.shed_early(model, v)  # a full queue refuses before the body is parsed
        header = request.headers.get(HEADER_LENGTH)
        if header is not None and not header.strip().isdigit():
            raise InvalidInput(f"{HEADER_LENGTH} must be a non-negative integer, got {shown(header)}")
        header_length = int(header) if header is not None else None
        # A raw body is typed by the signature: resolve first, and answer from that version.
        route = plane.resolve(model, v) if header_length == 0 else None
        infer_request, binary_default = decode_request(body, header_length, model, v, route)
        return infer_request

    infer_request, response = await plane.infer(CHANNEL, model, decode)
    content, headers = encode_response(response, infer_request, binary_default)
    return Response(content, headers=headers)


class InferFastPath:
    """ASGI wrapper that answers `POST .../infer` before FastAPI's router and dependency machinery
    (about 250 us a request here, more than the digits model itself takes). Every other path goes
    to the wrapped app; the FastAPI route above stays for the OpenAPI docs and gives the same answer."""

    PATH = re.compile(f"^{path_pattern(MODEL)}(?:{path_pattern(VERSION)})?/infer$")

    def __init__(self, app: ASGIApp, fastapi_app: Any) -> None:
        self.app = app
        self.fastapi_app = fastapi_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            match = self.PATH.match(scope["path"])
            if match:
                scope["app"] = self.fastapi_app
                request = Request(scope, receive)
                try:
                    response = await infer_response(request, self.fastapi_app.state.dataplane, match[1], match[2])
                except ShipyardError as e:
                    response = await shipyard_error_handler(request, e)
                except Exception as e:  # noqa: BLE001 - answered as 500, logged, server goes on
                    response = await internal_error_handler(request, e)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


# -- repository extension -------------------------------------------------------------------
@router.post(REPOSITORY + "/index")
async def repository_index(request: Request) -> Response:
    body = await read_body(request)
    ready_only = False
    if body.strip():
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as e:
            raise InvalidInput(f"request body is not valid JSON: {e}") from None
        ready_only = bool(isinstance(doc, dict) and doc.get("ready"))
    return _json(_plane(request).repository_index(getattr(request.state, "key", None), ready_only))


@router.post(REPOSITORY_MODEL + "/load")
async def repository_load(request: Request, model: str) -> Response:
    await read_body(request)
    await _plane(request).load(model, getattr(request.state, "key", None), CHANNEL)
    return _json({})


@router.post(REPOSITORY_MODEL + "/unload")
async def repository_unload(request: Request, model: str) -> Response:
    await read_body(request)
    await _plane(request).unload(model, getattr(request.state, "key", None), CHANNEL)
    return _json({})

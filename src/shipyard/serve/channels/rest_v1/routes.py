"""V1 REST endpoints: a few lines each; decoding in convert.py, work in the data plane.
Routes are specific (`/v1/models/{m}`, `...:predict`): the rest of /v1 belongs to other channels."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from shipyard.errors import InvalidInput
from shipyard.serve.channels.http_util import json_response, parse_version, read_body
from shipyard.serve.channels.rest_v1.convert import decode_request, encode_response
from shipyard.serve.channels.rest_v1.protocol import LIVENESS, STATE
from shipyard.serve.dataplane import DataPlane
from shipyard.serve.types import InferRequest

router = APIRouter()
CHANNEL = "rest_v1"


_json = json_response
_version = parse_version


@router.get(LIVENESS)
async def live() -> Response:
    """KServe V1's liveness probe."""
    return _json({"status": "alive"})


@router.get("/v1/models/{model}")
@router.get("/v1/models/{model}/versions/{version}")
async def model_status(request: Request, model: str, version: str | None = None) -> Response:
    """TF Serving's GetModelStatus, plus KServe V1's `name` and `ready`, plus OpenAI's model object
    (`id`, `object`, `created`, `owned_by`): this path is also OpenAI's retrieve-model, and each
    kind of client reads only its own fields."""
    plane: DataPlane = request.app.state.dataplane
    versions = plane.version_status(model, _version(version))
    status = [{"version": str(s.version), "state": STATE.get(s.state, "UNKNOWN"),
               "status": {"error_code": "OK" if s.state == "READY" else "UNAVAILABLE", "error_message": s.reason}}
              for s in versions]
    created = max((s.created for s in versions if s.created is not None), default=0)
    return _json({"name": model, "ready": any(s["state"] == "AVAILABLE" for s in status),
                  "model_version_status": status,
                  "id": model, "object": "model", "created": created, "owned_by": "shipyard"})


@router.post("/v1/models/{model}:predict")
@router.post("/v1/models/{model}/versions/{version}:predict")
async def predict(request: Request, model: str, version: str | None = None) -> Response:
    plane: DataPlane = request.app.state.dataplane
    rows = False

    async def decode() -> InferRequest:
        nonlocal rows
        v = _version(version)
        body = await read_body(request)
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as e:
            raise InvalidInput(f"request body is not valid JSON: {e}") from None
        infer_request, rows = decode_request(doc, model, v, plane.resolve(model, v))
        return infer_request

    _, response = await plane.infer(CHANNEL, model, decode)
    return _json(encode_response(response, rows))

"""V1 REST endpoints: a few lines each; decoding in convert.py, work in the data plane.
Routes are specific (`/v1/models/{m}`, `...:predict`): the rest of /v1 belongs to other channels."""

from __future__ import annotations

import time

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from shipyard.errors import InvalidInput, ShipyardError
from shipyard.serve.channels.http_util import json_response, parse_version
from shipyard.serve.channels.rest_v1.convert import decode_request, encode_response
from shipyard.serve.channels.rest_v1.protocol import STATE
from shipyard.serve.channels.rest_v2.routes import read_body
from shipyard.serve.dataplane import DataPlane

router = APIRouter()
CHANNEL = "rest_v1"


_json = json_response
_version = parse_version


@router.get("/v1/models/{model}")
@router.get("/v1/models/{model}/versions/{version}")
async def model_status(request: Request, model: str, version: str | None = None) -> Response:
    """TF Serving's GetModelStatus, plus KServe V1's `name` and `ready`, plus OpenAI's model object
    (`id`, `object`, `created`, `owned_by`): this path is also OpenAI's retrieve-model, and each
    kind of client reads only its own fields."""
    plane: DataPlane = request.app.state.dataplane
    v = _version(version)
    entry = plane.manager.entry(model)
    versions = {v: entry.versions[v]} if v is not None and v in entry.versions else entry.versions
    if v is not None and v not in entry.versions:
        plane.manager.get(model, v)  # NotFound naming the loaded versions
    status = [{"version": str(n), "state": STATE.get(lv.state, "UNKNOWN"),
               "status": {"error_code": "OK" if lv.state == "READY" else "UNAVAILABLE", "error_message": lv.reason}}
              for n, lv in sorted(versions.items(), reverse=True)]
    created = max((int(lv.manifest.created.timestamp()) for lv in versions.values() if lv.manifest), default=0)
    return _json({"name": model, "ready": any(s["state"] == "AVAILABLE" for s in status),
                  "model_version_status": status,
                  "id": model, "object": "model", "created": created, "owned_by": "shipyard"})


@router.post("/v1/models/{model}:predict")
@router.post("/v1/models/{model}/versions/{version}:predict")
async def predict(request: Request, model: str, version: str | None = None) -> Response:
    plane: DataPlane = request.app.state.dataplane
    start = time.perf_counter()
    try:
        v = _version(version)
        body = await read_body(request)
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as e:
            raise InvalidInput(f"request body is not valid JSON: {e}") from None
        lv = plane.manager.get(model, v)
        assert lv.manifest is not None
        infer_request, rows = decode_request(doc, model, v, lv.manifest.signature)
    except ShipyardError as e:
        plane.reject(model, CHANNEL, e, start)
        raise
    response = await plane.infer(infer_request, CHANNEL, start)
    return _json(encode_response(response, rows))

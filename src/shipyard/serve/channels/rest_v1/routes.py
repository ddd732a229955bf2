"""V1 REST endpoints: a few lines each; decoding in convert.py, work in the data plane.
Routes are specific (`/v1/models/{m}`, `...:predict`): the rest of /v1 belongs to other channels."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from shipyard.errors import InvalidInput, NotFound, shown
from shipyard.serve.channels.http_util import json_response, parse_version, read_body
from shipyard.serve.channels.rest_v1 import examples
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


async def _json_body(request: Request) -> Any:
    """The request body as JSON (TF Serving's :predict, :classify and :regress all send JSON)."""
    body = await read_body(request)
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise InvalidInput(f"request body is not valid JSON: {e}") from None


@router.post("/v1/models/{model}:predict")
@router.post("/v1/models/{model}/versions/{version}:predict")
async def predict(request: Request, model: str, version: str | None = None) -> Response:
    plane: DataPlane = request.app.state.dataplane
    rows = False

    async def decode() -> InferRequest:
        nonlocal rows
        v = _version(version)
        doc = await _json_body(request)
        infer_request, rows = decode_request(doc, model, v, plane.resolve(model, v))
        return infer_request

    _, response = await plane.infer(CHANNEL, model, decode)
    return _json(encode_response(response, rows))


@router.get("/v1/models/{model}/metadata")
@router.get("/v1/models/{model}/versions/{version}/metadata")
async def model_metadata(request: Request, model: str, version: str | None = None) -> Response:
    """TF Serving's GetModelMetadata: the signature as one `serving_default` signature_def."""
    plane: DataPlane = request.app.state.dataplane
    v = _version(version)
    meta = plane.model_metadata(model, v)
    if v is None:  # the version that answers when none is named: the newest ready one
        statuses = plane.version_status(model, None)
        v = next((s.version for s in statuses if s.state == "READY"), statuses[0].version)
    return _json(examples.metadata(model, v, meta["inputs"], meta["outputs"]))


async def _examples(request: Request, method: str, model: str, version: str | None) -> Response:
    plane: DataPlane = request.app.state.dataplane
    route = None

    async def decode() -> InferRequest:
        nonlocal route
        v = _version(version)
        doc = await _json_body(request)
        route = plane.resolve(model, v)
        examples.scores_output(method, model, route.signature)
        return examples.decode_examples(doc, model, v, route)

    _, response = await plane.infer(CHANNEL, model, decode)
    assert route is not None
    return _json(examples.encode_result(method, response, route.signature))


@router.post("/v1/models/{model}:classify")
@router.post("/v1/models/{model}/versions/{version}:classify")
async def classify(request: Request, model: str, version: str | None = None) -> Response:
    """TF Serving's Classify: {"examples": [...]} -> {"result": [[[label, score], ...], ...]}."""
    return await _examples(request, "classify", model, version)


@router.post("/v1/models/{model}:regress")
@router.post("/v1/models/{model}/versions/{version}:regress")
async def regress(request: Request, model: str, version: str | None = None) -> Response:
    """TF Serving's Regress: {"examples": [...]} -> {"result": [value, ...]}."""
    return await _examples(request, "regress", model, version)


@router.get("/v1/models/{model}/labels/{label}")
@router.get("/v1/models/{model}/labels/{label}/metadata")
@router.post("/v1/models/{model}/labels/{label}:predict")
@router.post("/v1/models/{model}/labels/{label}:classify")
@router.post("/v1/models/{model}/labels/{label}:regress")
async def by_label(request: Request, model: str, label: str) -> Response:
    """TF Serving's version labels: shipyard has none (its traffic split picks a version when
    none is named), so a label is answered 404 saying what to send instead."""
    raise NotFound(f"version label {shown(label)} of model '{model}' is not known: shipyard has no version "
                   f"labels. Name a version (/v1/models/{model}/versions/N) or none (the newest ready "
                   "version answers, or the traffic split of the model's routing config)")

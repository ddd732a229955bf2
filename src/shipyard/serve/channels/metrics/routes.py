"""The /metrics endpoint: the data plane's Prometheus registry in the text format."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from shipyard.serve.dataplane import DataPlane
from shipyard.serve.metrics import CONTENT_TYPE

router = APIRouter()


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    plane: DataPlane = request.app.state.dataplane
    return Response(plane.metrics.exposition(), media_type=CONTENT_TYPE)

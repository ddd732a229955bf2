"""The /metrics endpoint: the data plane's Prometheus registry in the text format, as much of it
as the caller's key may read (the lines of its own models and the process-wide ones)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from shipyard.serve.dataplane import DataPlane
from shipyard.serve.metrics import CONTENT_TYPE

router = APIRouter()


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    plane: DataPlane = request.app.state.dataplane
    return Response(plane.metrics_text(getattr(request.state, "key", None)), media_type=CONTENT_TYPE)

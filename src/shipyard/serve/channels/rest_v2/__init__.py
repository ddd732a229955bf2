"""KServe V2 / Open Inference Protocol over HTTP, with Triton's binary tensor and repository
extensions."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shipyard.protocol.v2 import HEALTH_LIVE, HEALTH_READY, MODEL, REPOSITORY_MODEL, path_pattern
from shipyard.serve.channels import Channel, HttpPath

if TYPE_CHECKING:
    from fastapi import FastAPI


def mount(app: FastAPI) -> None:
    from shipyard.serve.channels.rest_v2.routes import InferFastPath, router

    app.include_router(router)
    app.add_middleware(InferFastPath, fastapi_app=app)


CHANNEL = Channel(
    name="rest_v2",
    mount=mount,
    paths=(
        HttpPath(r"/v2/models/stats$"),  # not a model called "stats"
        HttpPath(path_pattern(MODEL)),  # and everything below it
        HttpPath(path_pattern(REPOSITORY_MODEL) + "/"),
        HttpPath(r"/v2(?:/|$)", fallback=True),
    ),
    open_paths=frozenset({HEALTH_LIVE, HEALTH_READY}),
)

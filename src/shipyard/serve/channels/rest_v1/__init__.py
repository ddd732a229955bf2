"""TF Serving / KServe V1 REST: `POST /v1/models/{m}[/versions/{v}]:predict|:classify|:regress`,
`GET /v1/models/{m}[/versions/{v}][/metadata]`; `/labels/{l}` forms answer 404 (no labels here)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shipyard.serve.channels import Channel, HttpPath
from shipyard.serve.channels.rest_v1.protocol import LIVENESS

if TYPE_CHECKING:
    from fastapi import FastAPI


def mount(app: FastAPI) -> None:
    from shipyard.serve.channels.rest_v1.routes import router

    app.include_router(router)


CHANNEL = Channel(
    name="rest_v1",
    mount=mount,
    paths=(HttpPath(r"/v1/models/(?P<model>[^/:]+)(?:/versions/[^/:]+|/labels/[^/:]+)?"
                    r"(?:/metadata|:predict|:classify|:regress)?$"),),
    open_paths=frozenset({LIVENESS}),
)

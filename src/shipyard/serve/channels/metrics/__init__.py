"""Operations on the HTTP port: Prometheus metrics at /metrics (a key is needed when auth is on)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shipyard.serve.channels import Channel, HttpPath

if TYPE_CHECKING:
    from fastapi import FastAPI


def mount(app: FastAPI) -> None:
    from shipyard.serve.channels.metrics.routes import router

    app.include_router(router)


CHANNEL = Channel(name="metrics", mount=mount, paths=(HttpPath(r"/metrics$"),))

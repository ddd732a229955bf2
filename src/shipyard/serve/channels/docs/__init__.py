"""The API's own description: /openapi.json, Swagger UI at /docs and ReDoc at /redoc, with their
scripts and styles served from the installed package (no CDN: the pages work offline). With
`--auth` they need a key that allows the `docs` channel, as every path but health does."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shipyard.serve.channels import Channel, HttpPath

if TYPE_CHECKING:
    from fastapi import FastAPI


def mount(app: FastAPI) -> None:
    from shipyard.serve.channels.docs.protocol import describe
    from shipyard.serve.channels.docs.routes import router

    app.include_router(router)
    generate = app.openapi

    def openapi() -> dict[str, object]:
        if app.openapi_schema is None:
            describe(generate())  # FastAPI's document (it caches it), completed in place
        assert app.openapi_schema is not None
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


CHANNEL = Channel(name="docs", mount=mount, paths=(HttpPath(r"/(?:docs|redoc|openapi\.json)(?:/|$)"),))

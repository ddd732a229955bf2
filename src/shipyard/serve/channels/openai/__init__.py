"""OpenAI-compatible completions and chat completions with SSE streaming, for causal LMs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shipyard.serve.channels import Channel, HttpPath
from shipyard.serve.channels.openai.protocol import HEALTH

if TYPE_CHECKING:
    from fastapi import FastAPI

    from shipyard.errors import ShipyardError


def mount(app: FastAPI) -> None:
    from shipyard.serve.channels.openai.routes import router

    app.include_router(router)


def error_body(message: str, status: int, exc: ShipyardError | None) -> dict[str, Any]:
    """Errors on the OpenAI paths (an unknown /v1 path, a missing key) in OpenAI's shape."""
    from shipyard.serve.channels.openai import convert

    return convert.error_json(message, status, exc)


# The rest of /v1 (after rest_v1's model paths): the model is named in the body, so the routes
# check it against the key themselves.
CHANNEL = Channel(name="openai", mount=mount, paths=(HttpPath(r"/v1/", fallback=True),),
                  open_paths=frozenset({HEALTH}), error_body=error_body)

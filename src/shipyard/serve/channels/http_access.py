"""API keys on every HTTP channel: one ASGI layer in front of all routes (the V2 infer fast path
included). It finds the channel and the model a path names, from the paths each channel declares,
asks the data plane's guard, and answers 401/403/429 itself. Open paths (health probes) need no
key, as probes carry none."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from shipyard.errors import ShipyardError
from shipyard.serve.channels import Channel, path_table, route_of
from shipyard.serve.channels.http_errors import shipyard_error_handler
from shipyard.serve.dataplane import DataPlane


def bearer(scope: Scope) -> str | None:
    for key, value in scope["headers"]:
        if key == b"authorization":
            text = value.decode("latin-1")
            return text[7:].strip() if text[:7].lower() == "bearer " else text.strip()
    return None


class AccessGate:
    def __init__(self, app: ASGIApp, fastapi_app: Any, channels: list[Channel]) -> None:
        self.app = app
        self.fastapi_app = fastapi_app
        self.table = path_table(channels)
        self.open = frozenset(p for c in channels for p in c.open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open:
            await self.app(scope, receive, send)
            return
        plane: DataPlane = self.fastapi_app.state.dataplane
        channel, model = route_of(self.table, scope["path"])
        try:
            key = plane.authorize(bearer(scope), channel, model)
        except ShipyardError as e:
            response = await shipyard_error_handler(Request(scope, receive), e)
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})["key"] = key
        await self.app(scope, receive, send)

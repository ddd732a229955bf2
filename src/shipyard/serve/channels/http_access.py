"""API keys on every HTTP channel: one ASGI layer in front of all routes (the V2 infer fast path
included). It finds the channel and the model a path names, asks the data plane's guard, and
answers 401/403/429 itself. Health routes stay open, as probes carry no keys."""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from shipyard.errors import ShipyardError
from shipyard.serve.channels.http_errors import shipyard_error_handler
from shipyard.serve.dataplane import DataPlane

OPEN = frozenset({"/v2/health/live", "/v2/health/ready"})
# (pattern, channel): the first group, when present, is the model the path names.
ROUTES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^/v2/models/stats$"), "rest_v2"),
    (re.compile(r"^/v2/models/([^/]+)"), "rest_v2"),
    (re.compile(r"^/v2/repository/models/([^/]+)/"), "rest_v2"),
    (re.compile(r"^/v2(?:/|$)"), "rest_v2"),
    (re.compile(r"^/v1/models/([^/:]+)(?:/versions/[^/:]+)?(?::predict)?$"), "rest_v1"),
    (re.compile(r"^/v1/"), "openai"),
    (re.compile(r"^/metrics$"), "metrics"),
]


def route_of(path: str) -> tuple[str, str | None]:
    for pattern, channel in ROUTES:
        m = pattern.match(path)
        if m:
            return channel, m.group(1) if m.groups() else None
    return "http", None


def bearer(scope: Scope) -> str | None:
    for key, value in scope["headers"]:
        if key == b"authorization":
            text = value.decode("latin-1")
            return text[7:].strip() if text[:7].lower() == "bearer " else text.strip()
    return None


class AccessGate:
    def __init__(self, app: ASGIApp, fastapi_app: Any) -> None:
        self.app = app
        self.fastapi_app = fastapi_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN:
            await self.app(scope, receive, send)
            return
        plane: DataPlane = self.fastapi_app.state.dataplane
        channel, model = route_of(scope["path"])
        try:
            key = plane.authorize(bearer(scope), channel, model)
        except ShipyardError as e:
            response = await shipyard_error_handler(Request(scope, receive), e)
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})["key"] = key
        await self.app(scope, receive, send)

"""Channels: one thin adapter per protocol over the data plane, each a package in this folder.

A channel's `__init__.py` declares `CHANNEL = Channel(...)` and imports nothing heavy: the CLI
reads the declarations for its help text, and `mount` imports the routes only when a server is
built. Adding a channel is one new package here plus its name in REGISTRY; nothing else changes.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from fastapi import FastAPI

    from shipyard.errors import ShipyardError

# How a channel writes an HTTP error's JSON body: (message, status, the error when there is one).
ErrorBody = Callable[[str, int, "ShipyardError | None"], dict[str, Any]]

# The channels, in the order their routes are mounted and their paths are checked.
REGISTRY = ("rest_v2", "grpc_v2", "rest_v1", "openai", "metrics", "docs")


class Listener(Protocol):
    """A channel's own port (gRPC): started once the models are loaded, stopped before they
    unload. `stop` must let calls in flight finish within `grace` seconds."""

    async def start(self) -> None: ...

    async def stop(self, grace: float) -> None: ...


@dataclass(frozen=True)
class HttpPath:
    """An HTTP path the access gate attributes to a channel: `pattern` is a regex matched at the
    path's start, whose group named `model` (if any) is the model the key must be allowed. A
    `fallback` path claims only what no channel's other paths matched (the rest of a prefix)."""

    pattern: str
    fallback: bool = False


@dataclass(frozen=True)
class Channel:
    """What a channel declares.

    name: the `channel` label of its metrics and the word API keys list to allow it.
    paths: the HTTP paths it answers, so one access gate checks keys for every channel.
    open_paths: exact paths anyone may call without a key (health probes).
    error_body: how an error on one of its paths is written, for the clients of its protocol
        (the openai client reads `{"error": {"message", "type", "param", "code"}}`); None is
        `{"error": message}`, the shape of KServe V2 and TF Serving. Errors raised before a path
        is read (timeouts, too many connections) are always the plain shape.
    mount: called once with the FastAPI app (whose `state` holds `dataplane` and `settings`):
        it adds the channel's routes or middleware and may return a Listener for a port of its
        own. It is the place to import the channel's modules; the data plane is its only door
        to the serving core.
    """

    name: str
    mount: Callable[[FastAPI], Listener | None]
    paths: tuple[HttpPath, ...] = ()
    open_paths: frozenset[str] = frozenset()
    error_body: ErrorBody | None = None


# (pattern, channel): a group named `model`, when present, is the model the path names.
Table = list[tuple[re.Pattern[str], str]]


def path_table(declared: list[Channel]) -> Table:
    """Every channel's paths, in registry order; fallback paths after all the others."""
    paths = [(p, c.name) for c in declared for p in c.paths]
    ordered = [x for x in paths if not x[0].fallback] + [x for x in paths if x[0].fallback]
    return [(re.compile("^" + p.pattern), name) for p, name in ordered]


def route_of(table: Table, path: str) -> tuple[str, str | None]:
    """The channel a path belongs to and the model it names ("http" and None for no channel's)."""
    for pattern, channel in table:
        m = pattern.match(path)
        if m:
            return channel, m.groupdict().get("model")
    return "http", None


def channels() -> list[Channel]:
    """Every registered channel's declaration, in REGISTRY order."""
    return [importlib.import_module(f"{__name__}.{name}").CHANNEL for name in REGISTRY]

"""Building the server: the data plane, every registered channel on it, and a graceful lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.exceptions import HTTPException as StarletteHTTPException

from shipyard import __version__
from shipyard.config import Settings
from shipyard.errors import ShipyardError
from shipyard.repository import Repository
from shipyard.serve.auth import Guard
from shipyard.serve.channels import Listener, channels, http_errors
from shipyard.serve.channels.http_access import AccessGate
from shipyard.serve.channels.http_encoding import ResponseCompression
from shipyard.serve.dataplane import DataPlane
from shipyard.serve.manager import ModelManager
from shipyard.serve.poller import RepositoryPoller

log = logging.getLogger("shipyard.serve")


def create_app(settings: Settings, models: list[str] | None = None) -> FastAPI:
    """The ASGI app. Models load at startup (all, or `models`); one that fails is reported as
    UNAVAILABLE with its reason and the rest serve."""
    repository = Repository(settings.repository)
    manager = ModelManager(repository, settings)
    guard = Guard(settings.auth) if settings.auth is not None else None
    plane = DataPlane(manager, guard)
    listeners: list[Listener] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:  # what writers killed mid-publish left behind (their locks are free)
            for folder in await plane.run_blocking(repository.clean_staging):
                log.info("removed %s, left by a writer that is gone", folder)
        except OSError as e:  # a read-only repository still serves
            log.warning("could not clean the repository's staging folders: %s", e)
        poller = None
        if settings.model_control == "poll":
            # The first look before loading: what is published meanwhile is a change to load.
            poller = RepositoryPoller(manager, settings.poll_interval_s, models)
            await plane.run_blocking(poller.start)
        names = models if models else repository.models()
        for name in names:
            try:
                await plane.run_blocking(manager.load, name)
            except ShipyardError as e:
                log.warning("model %s not loaded: %s", name, e.message)
        started: list[Listener] = []
        for listener in listeners:
            await listener.start()
            started.append(listener)
        poll = asyncio.get_running_loop().create_task(poller.run(plane)) if poller is not None else None
        app.state.ready = True
        for entry in manager.models.values():
            for lv in entry.versions.values():
                log.info("%s:%s %s %s%s", lv.name, lv.version, lv.platform, lv.state,
                         f" ({lv.reason})" if lv.reason else "")
        log.info("ready: http://%s:%s/v2 (%d models)", settings.host, settings.port, len(manager.models))
        yield
        app.state.ready = False
        if poll is not None:
            poll.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poll
        for listener in started:
            await listener.stop(grace=10)
        await plane.run_blocking(manager.close)
        plane.close()

    # The docs channel serves /docs and /redoc itself, from local assets.
    app = FastAPI(title="shipyard", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.ready = False
    app.state.dataplane = plane
    app.add_exception_handler(ShipyardError, http_errors.shipyard_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_errors.http_error_handler)
    app.add_exception_handler(Exception, http_errors.internal_error_handler)
    registered = channels()
    app.state.error_shapes = http_errors.ErrorShapes(registered)
    for channel in registered:
        listener = channel.mount(app)
        if listener is not None:
            listeners.append(listener)
    # Around every channel (the V2 fast path included), inside the access gate.
    app.add_middleware(ResponseCompression)
    if guard is not None:  # outermost: checked before the fast path and every route
        app.add_middleware(AccessGate, fastapi_app=app, channels=registered)
    return app


def serve(settings: Settings, models: list[str] | None = None, log_level: str = "warning") -> None:
    """Run until SIGTERM/SIGINT: then stop accepting, finish in-flight requests, unload, exit 0."""
    from shipyard.serve import http_server

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    logging.getLogger("shipyard.generate").setLevel(logging.INFO)
    http_server.build(create_app(settings, models), settings, log_level).run()

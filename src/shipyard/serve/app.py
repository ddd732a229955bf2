"""Building the server: the data plane, every channel on it, and a graceful lifecycle."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from typing import Any, TypeVar

from fastapi import FastAPI
from starlette.exceptions import HTTPException as StarletteHTTPException

from shipyard import __version__
from shipyard.config import Settings
from shipyard.errors import ShipyardError
from shipyard.repository import Repository
from shipyard.serve.auth import Guard
from shipyard.serve.channels import http_errors, http_ops, openai, rest_v1, rest_v2
from shipyard.serve.channels.http_access import AccessGate
from shipyard.serve.dataplane import DataPlane
from shipyard.serve.manager import ModelManager

log = logging.getLogger("shipyard.serve")
T = TypeVar("T")


def create_app(settings: Settings, models: list[str] | None = None) -> FastAPI:
    """The ASGI app. Models load at startup (all, or `models`); one that fails is reported as
    UNAVAILABLE with its reason and the rest serve."""
    repository = Repository(settings.repository)
    manager = ModelManager(repository, settings)
    guard = Guard(settings.auth) if settings.auth is not None else None
    plane = DataPlane(manager, guard)
    grpc_channel: Any = None
    admin = ThreadPoolExecutor(max_workers=2, thread_name_prefix="shipyard-admin")

    async def run_blocking(fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(admin, fn, *args)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        names = models if models else repository.models()
        for name in names:
            try:
                await run_blocking(manager.load, name)
            except ShipyardError as e:
                log.warning("model %s not loaded: %s", name, e.message)
        nonlocal grpc_channel
        if settings.grpc_port:
            from shipyard.serve.channels.grpc_v2 import GrpcChannel

            grpc_channel = GrpcChannel(plane, run_blocking, lambda: bool(app.state.ready),
                                       settings.max_request_bytes)
            await grpc_channel.start(settings.host, settings.grpc_port)
            log.info("ready: grpc://%s:%s (inference.GRPCInferenceService)", settings.host, settings.grpc_port)
        app.state.ready = True
        for entry in manager.models.values():
            for lv in entry.versions.values():
                log.info("%s:%s %s %s%s", lv.name, lv.version, lv.platform, lv.state,
                         f" ({lv.reason})" if lv.reason else "")
        log.info("ready: http://%s:%s/v2 (%d models)", settings.host, settings.port, len(manager.models))
        yield
        app.state.ready = False
        if grpc_channel is not None:
            await grpc_channel.stop(grace=10)
        await run_blocking(manager.close)
        admin.shutdown(wait=False)

    app = FastAPI(title="shipyard", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.ready = False
    app.state.dataplane = plane
    app.state.run_blocking = run_blocking
    app.add_exception_handler(ShipyardError, http_errors.shipyard_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_errors.http_error_handler)
    app.add_exception_handler(Exception, http_errors.internal_error_handler)
    app.include_router(rest_v2.router)
    app.include_router(openai.router)
    app.add_middleware(rest_v2.InferFastPath, fastapi_app=app)
    app.include_router(http_ops.router)
    app.include_router(rest_v1.router)
    if guard is not None:  # outermost: checked before the fast path and every route
        app.add_middleware(AccessGate, fastapi_app=app)
    return app


class _Server:
    """uvicorn's server, except that a SIGTERM/SIGINT that ends a graceful shutdown is not raised
    again afterwards: the process then exits 0, as a supervisor expects from a clean stop."""

    @staticmethod
    def build(config: Any) -> Any:
        import signal
        import threading

        import uvicorn

        class Server(uvicorn.Server):
            @contextmanager
            def capture_signals(self) -> Iterator[None]:
                if threading.current_thread() is not threading.main_thread():
                    yield
                    return
                sigs = (signal.SIGINT, signal.SIGTERM)
                previous = {sig: signal.signal(sig, self.handle_exit) for sig in sigs}
                try:
                    yield
                finally:
                    for sig, handler in previous.items():
                        signal.signal(sig, handler)

        return Server(config)


def serve(settings: Settings, models: list[str] | None = None, log_level: str = "warning") -> None:
    """Run until SIGTERM/SIGINT: then stop accepting, finish in-flight requests, unload, exit 0."""
    import uvicorn

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    logging.getLogger("shipyard.generate").setLevel(logging.INFO)
    app = create_app(settings, models)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=30,
        server_header=False,
    )
    _Server.build(config).run()

"""`inference.GRPCInferenceService` on grpc.aio: a few lines per method over the data plane.
Access checks and the error -> status-code table live in one interceptor (interceptor.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from shipyard.config import Settings
from shipyard.errors import InvalidInput, ShipyardError, clipped
from shipyard.protocol import messages_pb2 as pb
from shipyard.protocol import service_pb2, service_pb2_grpc  # noqa: F401 - service_pb2 registers the service for reflection
from shipyard.protocol.v2 import GRPC_SERVICE
from shipyard.serve.channels.grpc_v2 import convert
from shipyard.serve.channels.grpc_v2.interceptor import CHANNEL, ErrorsAndAccess, current_key, token_of
from shipyard.serve.dataplane import DataPlane

log = logging.getLogger("shipyard.serve")
STREAM_WINDOW = 64  # requests of one stream in flight at once


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, plane: DataPlane, ready: Callable[[], bool]) -> None:
        self.plane = plane
        self.ready = ready

    # -- health and metadata ------------------------------------------------------------------
    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self.ready())

    async def ModelReady(self, request: Any, context: Any) -> Any:
        return pb.ModelReadyResponse(ready=self.plane.model_ready(request.name, convert.version_of(request.version)))

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        meta = self.plane.server_metadata()
        return pb.ServerMetadataResponse(name=meta["name"], version=meta["version"], extensions=meta["extensions"])

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        meta = self.plane.model_metadata(request.name, convert.version_of(request.version))
        return convert.metadata_message(meta)

    async def ModelConfig(self, request: Any, context: Any) -> Any:
        cfg = self.plane.model_config(request.name, convert.version_of(request.version))
        return convert.config_message(cfg)

    async def ModelStatistics(self, request: Any, context: Any) -> Any:
        rows = self.plane.model_stats(request.name or None, convert.version_of(request.version))
        key = current_key.get()
        return convert.stats_message([r for r in rows if self.plane.visible(key, r["name"])])

    # -- inference ----------------------------------------------------------------------------
    async def ModelInfer(self, request: Any, context: Any) -> Any:
        return await self._infer(request)

    async def _infer(self, request: Any) -> Any:
        _, response = await self.plane.infer(CHANNEL, request.model_name, lambda: convert.decode_request(request))
        return convert.encode_response(response)

    async def ModelStreamInfer(self, request_iterator: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        """Each request is answered in order on the stream; a bad one gets an error_message and
        the stream goes on, as Triton does. Requests are read ahead and run concurrently (so a
        busy stream batches), up to STREAM_WINDOW at a time; each is checked against the key."""
        token = token_of(context)
        pending: asyncio.Queue[asyncio.Task[Any] | None] = asyncio.Queue(STREAM_WINDOW)

        async def one(request: Any) -> Any:
            try:
                self.plane.authorize(token, CHANNEL, request.model_name or None)
                return pb.ModelStreamInferResponse(infer_response=await self._infer(request))
            except ShipyardError as e:
                return pb.ModelStreamInferResponse(error_message=clipped(e.message),
                                                   infer_response=pb.ModelInferResponse(id=request.id))

        async def read() -> None:
            try:
                async for request in request_iterator:
                    await pending.put(asyncio.ensure_future(one(request)))
            finally:
                await pending.put(None)

        reader = asyncio.ensure_future(read())
        try:
            while (task := await pending.get()) is not None:
                yield await task
            await reader  # re-raises a broken stream
        finally:
            reader.cancel()

    # -- repository extension -----------------------------------------------------------------
    async def RepositoryIndex(self, request: Any, context: Any) -> Any:
        rows = self.plane.repository_index(current_key.get(), request.ready)
        return pb.RepositoryIndexResponse(models=[pb.RepositoryIndexResponse.ModelIndex(**r) for r in rows])

    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        if not request.model_name:
            raise InvalidInput("give model_name to load")
        await self.plane.load(request.model_name, current_key.get(), CHANNEL)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        if not request.model_name:
            raise InvalidInput("give model_name to unload")
        await self.plane.unload(request.model_name, current_key.get(), CHANNEL)
        return pb.RepositoryModelUnloadResponse()


NEVER_MS = 2**31 - 1  # grpc core's "infinite"


def ms(seconds: float) -> int:
    return int(seconds * 1000)


def server_options(settings: Settings) -> list[tuple[str, int]]:
    """grpc core's connection limits, from the settings: how long a connection may take to start
    and may idle or live, keepalive both ways, and caps on connections and calls on each."""
    return [
        ("grpc.max_receive_message_length", settings.max_request_bytes),
        ("grpc.max_send_message_length", -1),
        ("grpc.so_reuseport", 0),
        # A connection that sends no HTTP/2 preface and settings within this is closed.
        ("grpc.server_handshake_timeout_ms", ms(settings.header_timeout_s)),
        ("grpc.max_allowed_incoming_connections", settings.max_connections),
        ("grpc.max_concurrent_streams", settings.grpc_max_concurrent_streams),
        ("grpc.max_connection_idle_ms", ms(settings.grpc_max_connection_idle_s) or NEVER_MS),
        ("grpc.max_connection_age_ms", ms(settings.grpc_max_connection_age_s) or NEVER_MS),
        ("grpc.max_connection_age_grace_ms", ms(settings.grpc_max_connection_age_grace_s)),
        ("grpc.keepalive_time_ms", ms(settings.grpc_keepalive_time_s)),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.http2.max_pings_without_data", 0),  # the server's own pings go on while calls wait
        # Clients may keep an idle connection alive with pings, at most one per interval.
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", ms(settings.grpc_min_ping_interval_s)),
        ("grpc.http2.max_ping_strikes", 2),
    ]


class GrpcChannel:
    """The gRPC server of one `shipyard serve` process, on the same event loop as HTTP (a Listener:
    built and bound in `start`, once that loop runs). Server reflection lists its services, open
    like the health service: it tells the public KServe schema, never a model."""

    def __init__(self, plane: DataPlane, ready: Callable[[], bool], settings: Settings) -> None:
        self.plane, self.ready, self.settings = plane, ready, settings
        self.host, self.port = settings.host, settings.grpc_port
        self.server: Any = None
        self.health: Any = None

    async def start(self) -> None:
        self.health = HealthServicer()
        self.server = grpc.aio.server(interceptors=[ErrorsAndAccess(self.plane)],
                                      options=server_options(self.settings))
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(self.plane, self.ready), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (GRPC_SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self.server)
        try:
            self.server.add_insecure_port(f"{self.host}:{self.port}")
        except RuntimeError as e:
            raise InvalidInput(f"cannot listen for gRPC on {self.host}:{self.port} ({e}); the port may be in use: "
                               "pass --grpc-port N, or --grpc-port 0 to turn gRPC off") from None
        await self.server.start()
        for service in ("", GRPC_SERVICE):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        log.info("ready: grpc://%s:%s (%s)", self.host, self.port, GRPC_SERVICE)

    async def stop(self, grace: float) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)

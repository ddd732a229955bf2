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

from shipyard.errors import InvalidInput, ShipyardError, clipped
from shipyard.protocol import messages_pb2 as pb
from shipyard.protocol import service_pb2_grpc
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


class GrpcChannel:
    """The gRPC server of one `shipyard serve` process, on the same event loop as HTTP (a Listener:
    built and bound in `start`, once that loop runs)."""

    def __init__(self, plane: DataPlane, ready: Callable[[], bool], host: str, port: int,
                 max_message_bytes: int) -> None:
        self.plane, self.ready = plane, ready
        self.host, self.port, self.max_message_bytes = host, port, max_message_bytes
        self.server: Any = None
        self.health: Any = None

    async def start(self) -> None:
        self.health = HealthServicer()
        self.server = grpc.aio.server(
            interceptors=[ErrorsAndAccess(self.plane)],
            options=[("grpc.max_receive_message_length", self.max_message_bytes),
                     ("grpc.max_send_message_length", -1),
                     ("grpc.so_reuseport", 0)],
        )
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(self.plane, self.ready), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
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

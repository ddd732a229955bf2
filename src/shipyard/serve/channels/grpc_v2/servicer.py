"""`inference.GRPCInferenceService` on grpc.aio: a few lines per method over the data plane.
Access checks and the error -> status-code table live in one interceptor (interceptor.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from shipyard.errors import InvalidInput, ShipyardError
from shipyard.serve.channels.grpc_v2 import convert
from shipyard.serve.channels.grpc_v2.interceptor import CHANNEL, ErrorsAndAccess, current_key, token_of
from shipyard.serve.channels.grpc_v2.protocol import messages_pb2 as pb
from shipyard.serve.channels.grpc_v2.protocol import service_pb2_grpc
from shipyard.serve.dataplane import DataPlane

SERVICE = "inference.GRPCInferenceService"
STREAM_WINDOW = 64  # requests of one stream in flight at once


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, plane: DataPlane, run_blocking: Callable[..., Awaitable[Any]],
                 ready: Callable[[], bool]) -> None:
        self.plane = plane
        self.run_blocking = run_blocking
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
        start = time.perf_counter()
        try:
            core = convert.decode_request(request)
        except ShipyardError as e:
            self.plane.reject(request.model_name, CHANNEL, e, start)
            raise
        return convert.encode_response(await self.plane.infer(core, CHANNEL, start))

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
                return pb.ModelStreamInferResponse(error_message=e.message,
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
        key = current_key.get()
        rows = [r for r in self.plane.manager.index() if self.plane.visible(key, r["name"])]
        if request.ready:
            rows = [r for r in rows if r["state"] == "READY"]
        return pb.RepositoryIndexResponse(models=[pb.RepositoryIndexResponse.ModelIndex(**r) for r in rows])

    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        if not request.model_name:
            raise InvalidInput("give model_name to load")
        entry = await self.run_blocking(self.plane.manager.load, request.model_name)
        if not entry.ready_versions():
            reasons = "; ".join(f"version {v}: {lv.reason}" for v, lv in sorted(entry.versions.items()))
            raise InvalidInput(f"failed to load '{request.model_name}': {reasons or 'no versions to load'}")
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        if not request.model_name:
            raise InvalidInput("give model_name to unload")
        await self.run_blocking(self.plane.manager.unload, request.model_name)
        return pb.RepositoryModelUnloadResponse()


class GrpcChannel:
    """The gRPC server of one `shipyard serve` process, on the same event loop as HTTP."""

    def __init__(self, plane: DataPlane, run_blocking: Callable[..., Awaitable[Any]],
                 ready: Callable[[], bool], max_message_bytes: int) -> None:
        self.server = grpc.aio.server(
            interceptors=[ErrorsAndAccess(plane)],
            options=[("grpc.max_receive_message_length", max_message_bytes),
                     ("grpc.max_send_message_length", -1),
                     ("grpc.so_reuseport", 0)],
        )
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(plane, run_blocking, ready), self.server)
        self.health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)

    async def start(self, host: str, port: int) -> int:
        try:
            bound = self.server.add_insecure_port(f"{host}:{port}")
        except RuntimeError as e:
            raise InvalidInput(f"cannot listen for gRPC on {host}:{port} ({e}); the port may be in use: "
                               "pass --grpc-port N, or --grpc-port 0 to turn gRPC off") from None
        await self.server.start()
        for service in ("", SERVICE):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        return int(bound)

    async def stop(self, grace: float) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)

"""The one place where the gRPC channel checks keys and maps shipyard's errors to status codes
(by the table in `shipyard.protocol.status`)."""

from __future__ import annotations

import contextvars
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from shipyard.errors import InvalidInput, ShipyardError, clipped
from shipyard.protocol.status import grpc_code
from shipyard.protocol.v2 import GRPC_SERVICE
from shipyard.serve.auth import KeyRecord
from shipyard.serve.dataplane import DataPlane

log = logging.getLogger("shipyard.serve")

CHANNEL = "grpc_v2"
PREFIX = f"/{GRPC_SERVICE}/"
# Methods anyone may call: the health checks (grpc.health.v1 is outside this service and open too).
OPEN = {"ServerLive", "ServerReady"}
# Where each method's request names its model: the key must be allowed that model.
MODEL_FIELD = {"ModelInfer": "model_name", "ModelReady": "name", "ModelMetadata": "name", "ModelConfig": "name",
               "ModelStatistics": "name", "RepositoryModelLoad": "model_name", "RepositoryModelUnload": "model_name"}

# The caller's key record, for methods that filter what they list (index, statistics).
current_key: contextvars.ContextVar[KeyRecord | None] = contextvars.ContextVar("shipyard_key", default=None)


def status_of(exc: ShipyardError) -> grpc.StatusCode:
    """From `shipyard.protocol.status.GRPC`, the one table, which the client reads too."""
    return grpc.StatusCode[grpc_code(exc)]


# The caller's key as sent, read from the call details the interceptor already holds (asking the
# context for its metadata again would convert it from the C core a second time).
current_token: contextvars.ContextVar[str | None] = contextvars.ContextVar("shipyard_token", default=None)


def token_of(context: Any) -> str | None:
    return bearer(context.invocation_metadata())


def bearer(metadata: Any) -> str | None:
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else str(value)
            return text[7:].strip() if text[:7].lower() == "bearer " else text.strip()
    return None


async def abort(context: Any, exc: BaseException) -> None:
    if isinstance(exc, ShipyardError):
        retry = getattr(exc, "retry_after", None)
        trailers = (("retry-after", str(max(1, math.ceil(retry)))),) if retry is not None else ()
        await context.abort(status_of(exc), clipped(exc.message), trailing_metadata=trailers)
    log.exception("unhandled error in a gRPC call", exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, clipped(f"internal error: {type(exc).__name__}: {exc}"))


class ErrorsAndAccess(grpc.aio.ServerInterceptor):
    """Wraps each method of the inference service once (cached): checks the caller's key for
    the channel and the model the request names, then maps any error to its status code."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = details.method
        if self.plane.guard is not None:
            current_token.set(bearer(details.invocation_metadata))
        wrapped = self._wrapped.get(method)
        if wrapped is not None:
            return wrapped
        handler = await continuation(details)
        if handler is None or not method.startswith(PREFIX):
            return handler
        wrapped = self._wrap(method[len(PREFIX):], handler)
        self._wrapped[method] = wrapped
        return wrapped

    def _wrap(self, name: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        plane, field, check = self.plane, MODEL_FIELD.get(name), name not in OPEN
        # Messages are parsed here, not by grpc: bytes that are no valid message then get
        # INVALID_ARGUMENT naming the problem, where grpc's own parsing answers UNKNOWN.
        parse = _parser(name, handler.request_deserializer)
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary(raw: bytes, context: Any) -> Any:
                try:
                    request = parse(raw)
                    if check and plane.guard is not None:
                        model = getattr(request, field) or None if field else None
                        current_key.set(plane.authorize(current_token.get(), CHANNEL, model))
                    return await inner(request, context)
                except grpc.aio.AbortError:
                    raise
                except Exception as e:  # noqa: BLE001 - every error is answered with a status
                    await abort(context, e)

            return grpc.unary_unary_rpc_method_handler(
                unary, request_deserializer=None, response_serializer=handler.response_serializer)
        assert handler.stream_stream is not None
        inner_stream = handler.stream_stream

        async def parsed(raw_iterator: AsyncIterator[bytes]) -> AsyncIterator[Any]:
            async for raw in raw_iterator:
                yield parse(raw)

        async def stream(request_iterator: Any, context: Any) -> AsyncIterator[Any]:
            try:
                if plane.guard is not None:
                    # Opening the stream needs a key; each request on it is then checked (and
                    # counted against the key's rate) on its own.
                    current_key.set(plane.authorize(token_of(context), CHANNEL, None, spend=False))
                async for response in inner_stream(parsed(request_iterator), context):
                    yield response
            except grpc.aio.AbortError:
                raise
            except Exception as e:  # noqa: BLE001
                await abort(context, e)

        return grpc.stream_stream_rpc_method_handler(
            stream, request_deserializer=None, response_serializer=handler.response_serializer)


def _parser(method: str, deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
    """The method's request parser, raising InvalidInput for bytes that are no valid message."""
    if deserialize is None:
        return lambda raw: raw
    message = getattr(getattr(deserialize, "__self__", None), "DESCRIPTOR", None)
    expected = message.full_name if message is not None else "request message"

    def parse(raw: bytes) -> Any:
        try:
            return deserialize(raw)
        except DecodeError as e:
            raise InvalidInput(f"the {method} request ({len(raw)} bytes) is not a valid protobuf message: "
                               f"{e}; send a serialized {expected}") from None

    return parse

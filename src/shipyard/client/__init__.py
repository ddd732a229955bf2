"""A small Python client for shipyard (and any KServe V2 server): numpy in, numpy out.

    from shipyard.client import Client
    with Client("grpc://127.0.0.1:8001") as c:          # or "http://127.0.0.1:8000"
        logits = c.infer("digits", pixels)["logits"]

`AsyncClient` has the same methods as coroutines. Errors come back as shipyard's own classes
(NotFound, InvalidInput, Unauthenticated, PermissionDenied, RateLimited, Unavailable, ...).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shipyard.client import wire
from shipyard.client.wire import Inputs
from shipyard.errors import Unavailable
from shipyard.protocol import messages_pb2 as pb
from shipyard.protocol.v2 import HEALTH_READY, MODEL, model_path


class _Base:
    def __init__(self, url: str, api_key: str | None = None, timeout: float = 60.0) -> None:
        self.kind, self.target = wire.parse_url(url)
        self.timeout = timeout
        self.headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.metadata = tuple(self.headers.items())
        self._inputs: dict[str, list[str]] = {}

    def _grpc_methods(self, channel: Any) -> dict[str, Any]:
        def unary(name: str, req: Any, resp: Any) -> Any:
            return channel.unary_unary(wire.SERVICE + name, request_serializer=req.SerializeToString,
                                       response_deserializer=resp.FromString)

        return {
            "infer": unary("ModelInfer", pb.ModelInferRequest, pb.ModelInferResponse),
            "metadata": unary("ModelMetadata", pb.ModelMetadataRequest, pb.ModelMetadataResponse),
            "ready": unary("ServerReady", pb.ServerReadyRequest, pb.ServerReadyResponse),
            "model_ready": unary("ModelReady", pb.ModelReadyRequest, pb.ModelReadyResponse),
        }

    @staticmethod
    def _meta_doc(m: Any) -> dict[str, Any]:
        def specs(ts: Any) -> list[dict[str, Any]]:
            return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in ts]

        return {"name": m.name, "versions": list(m.versions), "platform": m.platform,
                "inputs": specs(m.inputs), "outputs": specs(m.outputs)}


class Client(_Base):
    """Blocking client over HTTP (V2 REST, binary tensors) or gRPC (V2, raw contents)."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 60.0) -> None:
        super().__init__(url, api_key, timeout)
        if self.kind == "grpc":
            import grpc

            self._channel = grpc.insecure_channel(self.target, options=[("grpc.max_receive_message_length", -1)])
            self._rpc = self._grpc_methods(self._channel)
            self._grpc_error = grpc.RpcError
        else:
            import httpx

            self._http = httpx.Client(base_url=self.target, headers=self.headers, timeout=timeout)

    def _call(self, name: str, request: Any) -> Any:
        try:
            return self._rpc[name](request, timeout=self.timeout, metadata=self.metadata)
        except self._grpc_error as e:
            raise wire.grpc_error(e) from None

    def _send(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        try:
            return self._http.request(method, path, **kwargs)
        except httpx.TransportError as e:
            raise Unavailable(f"cannot reach {self.target}: {type(e).__name__}: {e}") from None

    def _get(self, path: str) -> Any:
        r = self._send("GET", path)
        if r.status_code != 200:
            raise wire.http_error(r.status_code, r.content, r.headers)
        return r.json()

    def model_metadata(self, model: str, version: int | None = None) -> dict[str, Any]:
        if self.kind == "grpc":
            return self._meta_doc(self._call("metadata", pb.ModelMetadataRequest(name=model, version=str(version or ""))))
        return dict(self._get(model_path(model, version)))

    def ready(self, model: str | None = None) -> bool:
        if self.kind == "grpc":
            if model is None:
                return bool(self._call("ready", pb.ServerReadyRequest()).ready)
            return bool(self._call("model_ready", pb.ModelReadyRequest(name=model)).ready)
        path = HEALTH_READY if model is None else MODEL.format(model=model) + "/ready"
        return bool(self._send("GET", path).status_code == 200)

    def _input_names(self, model: str, inputs: Inputs) -> list[str] | None:
        if isinstance(inputs, dict):
            return None
        if model not in self._inputs:
            self._inputs[model] = [s["name"] for s in self.model_metadata(model)["inputs"]]
        return self._inputs[model]

    def infer(self, model: str, inputs: Inputs, version: int | None = None,
              outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """Run the model on `inputs` ({name: array}, or one array for a one-input model)."""
        tensors = wire.tensors_of(inputs, self._input_names(model, inputs))
        if self.kind == "grpc":
            return wire.grpc_response(self._call("infer", wire.grpc_request(model, version, tensors, outputs)))
        body, headers = wire.http_request(tensors, outputs)
        r = self._send("POST", model_path(model, version) + "/infer", content=body, headers=headers)
        if r.status_code != 200:
            raise wire.http_error(r.status_code, r.content, r.headers)
        return wire.http_response(r.content, r.headers)

    def close(self) -> None:
        if self.kind == "grpc":
            self._channel.close()
        else:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_Base):
    """The same client for asyncio: `await c.infer(...)`; many calls may run at once."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 60.0) -> None:
        super().__init__(url, api_key, timeout)
        if self.kind == "grpc":
            import grpc

            self._channel = grpc.aio.insecure_channel(self.target, options=[("grpc.max_receive_message_length", -1)])
            self._rpc = self._grpc_methods(self._channel)
            self._grpc_error = grpc.RpcError
        else:
            import httpx

            self._http = httpx.AsyncClient(base_url=self.target, headers=self.headers, timeout=timeout)

    async def _call(self, name: str, request: Any) -> Any:
        try:
            return await self._rpc[name](request, timeout=self.timeout, metadata=self.metadata)
        except self._grpc_error as e:
            raise wire.grpc_error(e) from None

    async def model_metadata(self, model: str, version: int | None = None) -> dict[str, Any]:
        if self.kind == "grpc":
            m = await self._call("metadata", pb.ModelMetadataRequest(name=model, version=str(version or "")))
            return self._meta_doc(m)
        r = await self._http.get(model_path(model, version))
        if r.status_code != 200:
            raise wire.http_error(r.status_code, r.content, r.headers)
        return dict(r.json())

    async def ready(self, model: str | None = None) -> bool:
        if self.kind == "grpc":
            if model is None:
                return bool((await self._call("ready", pb.ServerReadyRequest())).ready)
            return bool((await self._call("model_ready", pb.ModelReadyRequest(name=model))).ready)
        path = HEALTH_READY if model is None else MODEL.format(model=model) + "/ready"
        return (await self._http.get(path)).status_code == 200

    async def infer(self, model: str, inputs: Inputs, version: int | None = None,
                    outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        names = None
        if not isinstance(inputs, dict):
            if model not in self._inputs:
                self._inputs[model] = [s["name"] for s in (await self.model_metadata(model))["inputs"]]
            names = self._inputs[model]
        tensors = wire.tensors_of(inputs, names)
        if self.kind == "grpc":
            reply = await self._call("infer", wire.grpc_request(model, version, tensors, outputs))
            return wire.grpc_response(reply)
        body, headers = wire.http_request(tensors, outputs)
        r = await self._http.post(model_path(model, version) + "/infer", content=body, headers=headers)
        if r.status_code != 200:
            raise wire.http_error(r.status_code, r.content, r.headers)
        return wire.http_response(r.content, r.headers)

    async def close(self) -> None:
        if self.kind == "grpc":
            await self._channel.close()
        else:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


__all__ = ["AsyncClient", "Client"]

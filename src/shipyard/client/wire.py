"""Encoding and decoding shared by the sync and asyncio clients: V2 REST with binary tensors, and
V2 gRPC with raw contents. Arrays travel as raw little-endian bytes both ways."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from shipyard.errors import InvalidInput, RateLimited, ShipyardError, Unavailable
from shipyard.protocol import messages_pb2 as pb
from shipyard.protocol.status import GRPC_CLASS, HTTP_CLASS
from shipyard.protocol.v2 import (
    BINARY_CONTENT_TYPE,
    BINARY_DATA,
    BINARY_DATA_OUTPUT,
    BINARY_DATA_SIZE,
    GRPC_SERVICE,
    HEADER_LENGTH,
)
from shipyard.tensors import Tensor, from_raw, to_raw

SERVICE = f"/{GRPC_SERVICE}/"

Inputs = dict[str, np.ndarray] | np.ndarray


def error(cls: type[ShipyardError], message: str, retry_after: float | None = None) -> ShipyardError:
    if cls is RateLimited:
        return RateLimited(message, retry_after or 1.0)
    if cls is Unavailable:
        return Unavailable(message, retry_after)
    return cls(message)


def http_error(status: int, body: bytes, headers: Any) -> ShipyardError:
    try:
        message = str(orjson.loads(body).get("error", body[:200]))
    except (orjson.JSONDecodeError, AttributeError):
        message = body[:200].decode("utf-8", "replace")
    retry = headers.get("retry-after")
    return error(HTTP_CLASS.get(status, ShipyardError), f"HTTP {status}: {message}",
                 float(retry) if retry and retry.isdigit() else None)


def tensors_of(inputs: Inputs, input_names: list[str] | None) -> list[Tensor]:
    if isinstance(inputs, dict):
        return [Tensor.from_numpy(n, a) for n, a in inputs.items()]
    if not input_names or len(input_names) != 1:
        raise InvalidInput("pass inputs as {name: array} for a model with several inputs")
    return [Tensor.from_numpy(input_names[0], inputs)]


def http_request(tensors: list[Tensor], outputs: list[str] | None) -> tuple[bytes, dict[str, str]]:
    chunks = [to_raw(t.data, t.datatype) for t in tensors]
    doc: dict[str, Any] = {
        "inputs": [{"name": t.name, "datatype": t.datatype, "shape": t.shape,
                    "parameters": {BINARY_DATA_SIZE: len(c)}} for t, c in zip(tensors, chunks, strict=True)],
        "parameters": {BINARY_DATA_OUTPUT: True},
    }
    if outputs:
        doc["outputs"] = [{"name": n, "parameters": {BINARY_DATA: True}} for n in outputs]
    head = orjson.dumps(doc)
    return b"".join([head, *chunks]), {HEADER_LENGTH: str(len(head)), "content-type": BINARY_CONTENT_TYPE}


def http_response(body: bytes, headers: Any) -> dict[str, np.ndarray]:
    length = headers.get(HEADER_LENGTH.lower())
    head_len = int(length) if length is not None else len(body)
    doc = orjson.loads(body[:head_len])
    out, offset = {}, head_len
    for o in doc["outputs"]:
        size = (o.get("parameters") or {}).get(BINARY_DATA_SIZE)
        if size is None:
            out[o["name"]] = np.array(o["data"]).reshape(o["shape"])
            continue
        out[o["name"]] = from_raw(body[offset : offset + size], o["datatype"], o["shape"], o["name"])
        offset += size
    return out


def grpc_request(model: str, version: int | None, tensors: list[Tensor], outputs: list[str] | None) -> Any:
    msg = pb.ModelInferRequest(model_name=model, model_version=str(version or ""))
    for t in tensors:
        msg.inputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
        msg.raw_input_contents.append(to_raw(t.data, t.datatype))
    for n in outputs or []:
        msg.outputs.add(name=n)
    return msg


def grpc_response(msg: Any) -> dict[str, np.ndarray]:
    return {o.name: from_raw(raw, o.datatype, list(o.shape), o.name)
            for o, raw in zip(msg.outputs, msg.raw_output_contents, strict=True)}


def grpc_error(e: Any) -> ShipyardError:
    code = e.code().name
    retry = None
    for key, value in e.trailing_metadata() or ():
        if key == "retry-after":
            retry = float(value) if str(value).isdigit() else None
    return error(GRPC_CLASS.get(code, ShipyardError), f"{code}: {e.details()}", retry)


def parse_url(url: str) -> tuple[str, str]:
    """('http', 'http://host:port') or ('grpc', 'host:port')."""
    if url.startswith("grpc://"):
        return "grpc", url[len("grpc://"):].rstrip("/")
    if url.startswith(("http://", "https://")):
        return "http", url.rstrip("/")
    raise InvalidInput(f"server URL {url!r} must start with http://, https:// or grpc://")

"""V2 REST wire format <-> core types. JSON via orjson; binary tensors straight into numpy."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from shipyard.errors import InvalidInput
from shipyard.protocol.v2 import (
    BINARY_CONTENT_TYPE,
    BINARY_DATA,
    BINARY_DATA_OUTPUT,
    BINARY_DATA_SIZE,
    HEADER_LENGTH,
    JSON_CONTENT_TYPE,
)
from shipyard.serve.channels.http_util import json_data
from shipyard.serve.channels.rest_v2.protocol import expect_dict, expect_list, expect_shape
from shipyard.serve.types import InferRequest, InferResponse, RequestedOutput, Route
from shipyard.tensors import Tensor, element_count, from_raw, numpy_dtype, to_raw


def decode_request(body: bytes, header_length: int | None, model: str, version: int | None,
                   route: Route | None) -> tuple[InferRequest, bool]:
    """Parse an infer request; returns it and whether outputs default to binary. A raw body
    (`header_length` 0) needs the `route` resolved for it: its signature types the bytes."""
    if header_length == 0:
        assert route is not None
        return _decode_raw(body, model, version, route), True
    if header_length is not None:
        if header_length < 0 or header_length > len(body):
            raise InvalidInput(
                f"{HEADER_LENGTH} is {header_length} but the body has only {len(body)} bytes"
            )
        head, binary = memoryview(body)[:header_length], memoryview(body)[header_length:]
    else:
        head, binary = memoryview(body), memoryview(b"")
    try:
        doc = orjson.loads(head)
    except orjson.JSONDecodeError as e:
        raise InvalidInput(f"request body is not valid JSON: {e}") from None
    doc = expect_dict(doc, "request body")
    params = expect_dict(doc.get("parameters") or {}, "'parameters'")
    inputs = expect_list(doc.get("inputs"), "'inputs'") if "inputs" in doc else None
    if not inputs:
        raise InvalidInput("request has no 'inputs'")
    offset = 0
    tensors = []
    for i, raw in enumerate(inputs):
        raw = expect_dict(raw, f"inputs[{i}]")
        name = raw.get("name")
        if not isinstance(name, str):
            raise InvalidInput(f"inputs[{i}] has no 'name'")
        datatype = raw.get("datatype")
        if not isinstance(datatype, str):
            raise InvalidInput(f"input '{name}' has no 'datatype'")
        numpy_dtype(datatype)  # names the valid ones when unknown
        shape = expect_shape(raw.get("shape"), f"input '{name}'")
        tparams = expect_dict(raw.get("parameters") or {}, f"input '{name}' 'parameters'")
        size = tparams.get(BINARY_DATA_SIZE)
        if size is not None:
            if not isinstance(size, int) or size < 0:
                raise InvalidInput(f"input '{name}': {BINARY_DATA_SIZE} must be a non-negative integer")
            if offset + size > len(binary):
                raise InvalidInput(
                    f"input '{name}' declares {size} binary bytes but only {len(binary) - offset} remain"
                )
            data = from_raw(binary[offset : offset + size], datatype, shape, name)
            offset += size
        elif "data" in raw:
            data = json_data(raw["data"], datatype, shape, name)
        else:
            raise InvalidInput(f"input '{name}' has neither 'data' nor '{BINARY_DATA_SIZE}'")
        tensors.append(Tensor(name, datatype, shape, data))
    if offset != len(binary):
        raise InvalidInput(f"{len(binary) - offset} binary bytes follow the inputs and belong to none")
    outputs = None
    if doc.get("outputs") is not None:
        outputs = []
        for i, raw in enumerate(expect_list(doc["outputs"], "'outputs'")):
            raw = expect_dict(raw, f"outputs[{i}]")
            if not isinstance(raw.get("name"), str):
                raise InvalidInput(f"outputs[{i}] has no 'name'")
            outputs.append(RequestedOutput(raw["name"], expect_dict(raw.get("parameters") or {}, "output 'parameters'")))
    request_id = doc.get("id")
    request = InferRequest(model=model, version=version, inputs=tensors, outputs=outputs,
                           id=str(request_id) if request_id is not None else None, parameters=params)
    return request, bool(params.get(BINARY_DATA_OUTPUT, False))


def _decode_raw(body: bytes, model: str, version: int | None, route: Route) -> InferRequest:
    """`Inference-Header-Content-Length: 0`: the whole body is the one input's raw tensor."""
    signature = route.signature
    if len(signature.inputs) != 1:
        n = len(signature.inputs)
        raise InvalidInput(f"a raw binary request needs a model with exactly one input; '{model}' has {n}")
    spec = signature.inputs[0]
    if spec.datatype == "BYTES":
        raise InvalidInput("a raw binary request cannot carry a BYTES input; send a JSON header")
    itemsize = numpy_dtype(spec.datatype).itemsize
    fixed = [d for d in spec.shape[1:]]
    if -1 in fixed or not spec.shape or spec.shape[0] != -1 and -1 in spec.shape:
        raise InvalidInput(f"a raw binary request needs a fixed shape apart from the batch; input is {spec.shape}")
    row = element_count(fixed) * itemsize
    if spec.shape[0] == -1:
        if row == 0 or len(body) % row:
            raise InvalidInput(f"raw body of {len(body)} bytes is not a whole number of rows of {row} bytes for {spec.describe()}")
        shape = [len(body) // row, *fixed]
    else:
        shape = list(spec.shape)
    data = from_raw(body, spec.datatype, shape, spec.name)
    return InferRequest(model=model, version=version, inputs=[Tensor(spec.name, spec.datatype, shape, data)],
                        route=route)


def encode_response(response: InferResponse, request: InferRequest, binary_default: bool) -> tuple[bytes, dict[str, str]]:
    wanted = {o.name: o.parameters for o in request.outputs or []}
    outputs = []
    chunks: list[bytes] = []
    for t in response.outputs:
        params = wanted.get(t.name, {})
        binary = bool(params.get(BINARY_DATA, binary_default))
        out: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": t.shape}
        if binary:
            raw = to_raw(t.data, t.datatype)
            out["parameters"] = {BINARY_DATA_SIZE: len(raw)}
            chunks.append(raw)
        elif t.datatype == "BYTES":
            out["data"] = [b.decode("utf-8", "replace") if isinstance(b, bytes) else str(b) for b in t.data.reshape(-1)]
        else:
            out["data"] = np.ascontiguousarray(t.data).reshape(-1)
        outputs.append(out)
    doc: dict[str, Any] = {"model_name": response.model, "model_version": str(response.version), "outputs": outputs}
    if response.id is not None:
        doc["id"] = response.id
    head = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return head, {"content-type": JSON_CONTENT_TYPE}
    return b"".join([head, *chunks]), {
        "content-type": BINARY_CONTENT_TYPE,
        HEADER_LENGTH: str(len(head)),
    }


def config_document(cfg: dict[str, Any]) -> dict[str, Any]:
    """The data plane's model config in Triton's JSON form (the gRPC channel sends the same as a
    ModelConfig message): `TYPE_*` data types, BYTES as TYPE_STRING, the version policy as an object."""
    def tensors(specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"name": s["name"], "dims": s["dims"],
                 "data_type": "TYPE_STRING" if s["datatype"] == "BYTES" else f"TYPE_{s['datatype']}"}
                for s in specs]

    policy = cfg["version_policy"]
    doc: dict[str, Any] = {
        "name": cfg["name"], "platform": cfg["platform"], "backend": cfg["backend"],
        "max_batch_size": cfg["max_batch_size"],
        "version_policy": {"all": {}} if policy == "all" else (
            {"specific": {"versions": cfg["versions"]}} if policy == "specific" else {"latest": {"num_versions": 1}}),
        "input": tensors(cfg["inputs"]), "output": tensors(cfg["outputs"]),
        "instance_group": [{"name": cfg["name"], "count": 1, "kind": "KIND_CPU"}],
    }
    if cfg["max_batch_size"] > 0:
        doc["dynamic_batching"] = {"max_queue_delay_microseconds": cfg["max_queue_delay_us"]}
    return doc

"""gRPC V2 messages <-> core types. Raw contents go straight through `np.frombuffer`; answers
always travel as `raw_output_contents`, as Triton sends them and tritonclient reads them."""

from __future__ import annotations

from typing import Any

import numpy as np

from shipyard.errors import InvalidInput, shown
from shipyard.protocol import messages_pb2 as pb
from shipyard.protocol import v2
from shipyard.serve.types import InferRequest, InferResponse, RequestedOutput
from shipyard.tensors import Tensor, check_shape, element_count, from_raw, numpy_dtype, to_bytes_array, to_raw

# Which typed-contents field carries each datatype (16-bit floats have none: raw only).
CONTENTS_FIELD = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}
DATATYPE_ENUM = {
    "BOOL": 1, "UINT8": 2, "UINT16": 3, "UINT32": 4, "UINT64": 5, "INT8": 6, "INT16": 7, "INT32": 8,
    "INT64": 9, "FP16": 10, "FP32": 11, "FP64": 12, "BYTES": 13, "BF16": 14,
}


def version_of(text: str) -> int | None:
    """The proto's string version: empty means 'let the server choose'."""
    return v2.parse_version(text) if text else None


def params_of(params: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, p in params.items():
        which = p.WhichOneof("parameter_choice")
        out[key] = getattr(p, which) if which else None
    return out


def _typed(tensor: Any, shape: list[int]) -> np.ndarray:
    """An input given as typed contents (slow path: protobuf's repeated fields)."""
    name, datatype = tensor.name, tensor.datatype
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidInput(f"input '{name}' is {datatype}, which has no typed contents field; "
                           "send it in raw_input_contents")
    values = getattr(tensor.contents, field)
    count = element_count(shape)
    if len(values) != count:
        raise InvalidInput(f"input '{name}' has {len(values)} elements in {field}; shape {shape} needs {count}")
    if datatype == "BYTES":
        return to_bytes_array(np.array(list(values), dtype=object)).reshape(shape)
    dtype = numpy_dtype(datatype)
    wide = np.array(values, dtype=np.int64 if field in ("int_contents", "uint_contents") else dtype)
    if wide.dtype != dtype and wide.size:
        info = np.iinfo(dtype)
        lo, hi = int(wide.min()), int(wide.max())
        if lo < info.min or hi > info.max:
            raise InvalidInput(f"input '{name}': values [{lo}, {hi}] do not fit {datatype} [{info.min}, {info.max}]")
    return wide.astype(dtype, copy=False).reshape(shape)


def decode_request(msg: Any) -> InferRequest:
    """A ModelInferRequest as a core request; every malformed part is named."""
    if not msg.model_name:
        raise InvalidInput("request has no model_name")
    version = version_of(msg.model_version)
    if not msg.inputs:
        raise InvalidInput("request has no inputs")
    raw = msg.raw_input_contents
    if raw and len(raw) != len(msg.inputs):
        raise InvalidInput(f"request has {len(msg.inputs)} inputs but {len(raw)} raw_input_contents; "
                           "give one buffer per input, in the order of 'inputs'")
    tensors = []
    for i, t in enumerate(msg.inputs):
        if not t.name:
            raise InvalidInput(f"inputs[{i}] has no name")
        numpy_dtype(t.datatype)  # names the valid ones when unknown
        shape = list(t.shape)
        if any(d < 0 for d in shape):
            raise InvalidInput(f"input '{t.name}' shape must be non-negative integers, got {shown(shape)}")
        check_shape(shape, f"input '{t.name}'")
        if raw:
            if t.HasField("contents"):
                raise InvalidInput(f"input '{t.name}' sets contents while the request uses raw_input_contents; "
                                   "use one or the other")
            data = from_raw(raw[i], t.datatype, shape, t.name)
        elif t.HasField("contents"):
            data = _typed(t, shape)
        else:
            raise InvalidInput(f"input '{t.name}' has no data: set its contents or raw_input_contents")
        tensors.append(Tensor(t.name, t.datatype, shape, data))
    outputs = [RequestedOutput(o.name, params_of(o.parameters)) for o in msg.outputs] or None
    return InferRequest(model=msg.model_name, version=version, inputs=tensors, outputs=outputs,
                        id=msg.id or None, parameters=params_of(msg.parameters))


def encode_response(response: InferResponse) -> Any:
    msg = pb.ModelInferResponse(model_name=response.model, model_version=str(response.version),
                                id=response.id or "")
    for t in response.outputs:
        msg.outputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
        msg.raw_output_contents.append(to_raw(t.data, t.datatype))
    return msg


def metadata_message(meta: dict[str, Any]) -> Any:
    def tensors(specs: list[dict[str, Any]]) -> list[Any]:
        return [pb.ModelMetadataResponse.TensorMetadata(name=s["name"], datatype=s["datatype"], shape=s["shape"])
                for s in specs]

    return pb.ModelMetadataResponse(name=meta["name"], versions=meta["versions"], platform=meta["platform"],
                                    inputs=tensors(meta["inputs"]), outputs=tensors(meta["outputs"]))


def stats_message(rows: list[dict[str, Any]]) -> Any:
    msg = pb.ModelStatisticsResponse()
    for row in rows:
        s = msg.model_stats.add(name=row["name"], version=row["version"])
        inf = row.get("inference_stats")
        if inf is None:
            continue
        s.inference_count = row["inference_count"]
        s.execution_count = row["execution_count"]
        s.last_inference = row.get("last_inference", 0)
        for key in ("success", "fail", "queue", "compute_infer"):
            d = getattr(s.inference_stats, key)
            d.count = inf[key]["count"]
            d.ns = inf[key].get("ns", 0)
        for b in row["batch_stats"]:
            s.batch_stats.add(batch_size=b["batch_size"]).compute_infer.count = b["compute_infer"]["count"]
    return msg


def config_message(cfg: dict[str, Any]) -> Any:
    c = pb.ModelConfig(name=cfg["name"], platform=cfg["platform"], backend=cfg["backend"],
                       max_batch_size=cfg["max_batch_size"])
    policy = cfg["version_policy"]
    if policy == "all":
        c.version_policy.all.SetInParent()
    elif policy == "specific":
        c.version_policy.specific.versions.extend(cfg["versions"])
    else:
        c.version_policy.latest.num_versions = 1
    for spec in cfg["inputs"]:
        c.input.add(name=spec["name"], data_type=DATATYPE_ENUM[spec["datatype"]], dims=spec["dims"])
    for spec in cfg["outputs"]:
        c.output.add(name=spec["name"], data_type=DATATYPE_ENUM[spec["datatype"]], dims=spec["dims"])
    if cfg["max_batch_size"] > 0:
        c.dynamic_batching.max_queue_delay_microseconds = cfg["max_queue_delay_us"]
    c.instance_group.add(name=cfg["name"], count=1, kind=2)
    return pb.ModelConfigResponse(config=c)

"""V1 JSON <-> core types, using the model's signature to type the values (V1 carries no types)."""

from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np

from shipyard.errors import InvalidInput, shown
from shipyard.repository import TensorSpec
from shipyard.serve.channels.http_util import json_data  # the same JSON -> numpy rules as V2
from shipyard.serve.channels.rest_v1.protocol import B64, INPUTS, INSTANCES, OUTPUTS, PREDICTIONS
from shipyard.serve.types import InferRequest, InferResponse, Route
from shipyard.tensors import Tensor


def _unb64(value: Any, name: str) -> Any:
    if isinstance(value, list):
        return [_unb64(v, name) for v in value]
    if isinstance(value, dict):
        if set(value) != {B64} or not isinstance(value[B64], str):
            raise InvalidInput(f"input '{name}': an object value must be {{\"b64\": \"<base64>\"}}")
        try:
            return base64.b64decode(value[B64], validate=True)
        except binascii.Error as e:
            raise InvalidInput(f"input '{name}': invalid base64: {e}") from None
    return value


def tensor_of(spec: TensorSpec, value: Any) -> Tensor:
    """One input's JSON value (nested lists; BYTES as strings or {"b64": ...}) as a tensor of its spec."""
    if spec.datatype == "BYTES":
        try:
            nested = np.array(_unb64(value, spec.name), dtype=object)
        except ValueError as e:  # ragged nesting
            raise InvalidInput(f"input '{spec.name}': data is not a regular array: {e}") from None
        flat = [v.encode() if isinstance(v, str) else v for v in nested.reshape(-1)]
        if not all(isinstance(v, bytes) for v in flat):
            raise InvalidInput(f"input '{spec.name}': BYTES values must be strings or {{\"b64\": ...}}")
        array = np.empty(len(flat), dtype=object)
        array[:] = flat
        return Tensor(spec.name, "BYTES", list(nested.shape), array.reshape(nested.shape))
    try:
        shape = list(np.shape(value))
    except ValueError as e:  # ragged nesting
        raise InvalidInput(f"input '{spec.name}': data is not a regular array: {e}") from None
    return Tensor(spec.name, spec.datatype, shape, json_data(value, spec.datatype, shape, spec.name))


def decode_request(doc: Any, model: str, version: int | None, route: Route) -> tuple[InferRequest, bool]:
    """Returns the core request (answered from `route`, whose signature typed it) and whether the
    answer uses the row format."""
    if not isinstance(doc, dict):
        raise InvalidInput(f"request body must be a JSON object with '{INSTANCES}' or '{INPUTS}'")
    if (INSTANCES in doc) == (INPUTS in doc):
        raise InvalidInput(f"request body must have exactly one of '{INSTANCES}' (rows) or '{INPUTS}' (columns)")
    specs = route.signature.inputs
    names = [s.name for s in specs]
    rows = INSTANCES in doc
    if rows:
        instances = doc[INSTANCES]
        if not isinstance(instances, list) or not instances:
            raise InvalidInput(f"'{INSTANCES}' must be a non-empty list of rows")
        if all(isinstance(r, dict) for r in instances) and not (len(specs) == 1 and specs[0].datatype == "BYTES"):
            columns: dict[str, list[Any]] = {n: [] for n in names}
            for i, row in enumerate(instances):
                if set(row) != set(names):
                    raise InvalidInput(f"instances[{i}] has keys {shown(sorted(row))}; model '{model}' takes {names}")
                for n in names:
                    columns[n].append(row[n])
        elif len(specs) == 1:
            columns = {names[0]: instances}
        else:
            raise InvalidInput(f"model '{model}' takes {len(specs)} inputs {names}: each instance must be an "
                               "object naming them")
    else:
        value = doc[INPUTS]
        if isinstance(value, dict) and not (set(value) == {B64}):
            if set(value) != set(names):
                raise InvalidInput(f"'{INPUTS}' has keys {shown(sorted(value))}; model '{model}' takes {names}")
            columns = value
        elif len(specs) == 1:
            columns = {names[0]: value}
        else:
            raise InvalidInput(f"model '{model}' takes {len(specs)} inputs {names}: '{INPUTS}' must be an "
                               "object naming them")
    tensors = [tensor_of(spec, columns[spec.name]) for spec in specs]
    return InferRequest(model=model, version=version, inputs=tensors, route=route), rows


def _jsonable(array: np.ndarray) -> Any:
    if array.dtype == object:
        def one(b: Any) -> Any:
            if isinstance(b, bytes):
                try:
                    return b.decode()
                except UnicodeDecodeError:
                    return {B64: base64.b64encode(b).decode()}
            return b
        return np.vectorize(one, otypes=[object])(array).tolist() if array.size else array.tolist()
    return array.tolist()


def encode_response(response: InferResponse, rows: bool) -> dict[str, Any]:
    outs = {t.name: t.data for t in response.outputs}
    if not rows:
        if len(outs) == 1:
            return {OUTPUTS: _jsonable(next(iter(outs.values())))}
        return {OUTPUTS: {n: _jsonable(a) for n, a in outs.items()}}
    if len(outs) == 1:
        return {PREDICTIONS: _jsonable(next(iter(outs.values())))}
    n = min(a.shape[0] if a.ndim else 1 for a in outs.values())
    lists = {k: _jsonable(a) for k, a in outs.items()}
    return {PREDICTIONS: [{k: v[i] for k, v in lists.items()} for i in range(n)]}

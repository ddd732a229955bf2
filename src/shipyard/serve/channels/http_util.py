"""Small pieces every HTTP channel needs the same way."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from shipyard.errors import Disconnected, InvalidInput, PayloadTooLarge
from shipyard.protocol import v2
from shipyard.serve.channels.http_encoding import decode_body
from shipyard.tensors import element_count, numpy_dtype, to_bytes_array

log = logging.getLogger("shipyard.serve")
# Compressed bodies up to this size are decoded on the event loop: at most about 8 MB inflated
# (deflate expands 1,032 times at most), a few milliseconds; larger ones in the work threads.
INLINE_DECODE_BYTES = 8 * 1024
# Which JSON-decoded numpy kinds each tensor kind accepts: ints for floats, never floats for ints.

_JSON_KINDS = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}
_KIND_NAMES = {"b": "boolean", "i": "integer", "u": "integer", "f": "floating-point", "U": "string", "O": "mixed"}


def json_response(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """orjson, not the stdlib: numpy-derived floats and large bodies encode several times faster."""
    return Response(orjson.dumps(doc), status_code=status, media_type="application/json", headers=headers)


def parse_version(text: str | None) -> int | None:
    """A version path segment: None (absent) or a positive integer, else a 400 naming it."""
    return None if text is None else v2.parse_version(text)


async def read_body(request: Request) -> bytes:
    """The body, refused with 413 as soon as it passes the configured limit; a compressed one is
    decoded within the same limit (`http_encoding.decode_body`). A client that hangs up before
    sending all of it raises Disconnected (counted as cancelled), logged here in one INFO line: it
    is the client's choice, not the server's failure."""
    limit: int = request.app.state.settings.max_request_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes is over the limit of {limit} bytes (--max-request-bytes)")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body is over the limit of {limit} bytes (--max-request-bytes)")
            chunks.append(chunk)
    except ClientDisconnect:
        of = f" of {declared}" if declared is not None else ""
        log.info("client left during the upload of %s %s (%d%s bytes read)",
                 request.method, request.url.path, size, of)
        raise Disconnected(f"the client closed the connection after {size}{of} bytes of its request") from None
    body = b"".join(chunks)
    if len(body) > INLINE_DECODE_BYTES and "content-encoding" in request.headers:
        # Inflating can take tens of milliseconds (zlib lets go of the GIL meanwhile): off the loop.
        return await request.app.state.dataplane.offload(decode_body, request.headers, body, limit)
    return decode_body(request.headers, body, limit)


def _has_float(data: Any) -> bool:
    if isinstance(data, list):
        return any(_has_float(x) for x in data)
    return isinstance(data, float)


def json_data(data: Any, datatype: str, shape: list[int], name: str) -> np.ndarray:
    """JSON-decoded tensor data as an array of the tensor's datatype and shape, with the same rules
    on every channel: ints may fill a float tensor, never floats an int one; values must fit."""
    count = element_count(shape)
    if datatype == "BYTES":
        flat = np.asarray(data, dtype=object).reshape(-1) if isinstance(data, list) else np.asarray([data], dtype=object)
        if flat.size != count:
            raise InvalidInput(f"input '{name}' has {flat.size} elements; shape {shape} needs {count}")
        if not all(isinstance(x, str) for x in flat):
            raise InvalidInput(f"input '{name}': BYTES data in JSON must be strings")
        return to_bytes_array(flat).reshape(shape)
    dtype = numpy_dtype(datatype)
    try:
        array = np.array(data)
    except (ValueError, TypeError) as e:  # ragged nesting
        raise InvalidInput(f"input '{name}': data is not a regular array: {e}") from None
    kind = array.dtype.kind
    if kind == "f" and dtype.kind in "iu" and not _has_float(data):
        # numpy falls back to float64 for ints past int64 (large UINT64 values): keep them exact.
        try:
            array, kind = np.array(data, dtype=dtype), dtype.kind
        except OverflowError:
            raise InvalidInput(f"input '{name}': values do not fit {datatype}") from None
    if array.size and kind not in _JSON_KINDS[dtype.kind]:
        raise InvalidInput(
            f"input '{name}': data holds {_KIND_NAMES.get(kind, array.dtype.name)} values; "
            f"the tensor is {datatype}"
        )
    if dtype.kind in "iu" and array.size:
        info = np.iinfo(dtype)
        lo, hi = array.min(), array.max()
        if lo < info.min or hi > info.max:
            raise InvalidInput(
                f"input '{name}': values [{lo}, {hi}] do not fit {datatype} [{info.min}, {info.max}]"
            )
    array = array.astype(dtype, copy=False)
    if array.size != count:
        raise InvalidInput(f"input '{name}' has {array.size} elements; shape {shape} needs {count}")
    return array.reshape(shape)

"""The one in-memory tensor type and the V2 datatype <-> numpy mapping.

A `Tensor` always holds a numpy array, so binary request bodies and raw gRPC contents go straight
through `np.frombuffer`, never through Python lists. BYTES tensors are numpy object arrays of `bytes`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shipyard.errors import InvalidInput, shown

# V2 datatype -> numpy dtype. BYTES maps to object (elements are `bytes`).
V2_TO_NUMPY: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
NUMPY_TO_V2: dict[np.dtype[Any], str] = {v: k for k, v in V2_TO_NUMPY.items()}
DATATYPES = tuple(V2_TO_NUMPY)


def numpy_dtype(datatype: str) -> np.dtype[Any]:
    try:
        return V2_TO_NUMPY[datatype]
    except KeyError:
        raise InvalidInput(
            f"unknown datatype {shown(datatype)}; expected one of {', '.join(DATATYPES)}"
        ) from None


def v2_datatype(dtype: np.dtype[Any]) -> str:
    dtype = np.dtype(dtype)
    if dtype.kind in ("U", "S", "O"):
        return "BYTES"
    try:
        return NUMPY_TO_V2[dtype]
    except KeyError:
        raise InvalidInput(f"numpy dtype {dtype} has no V2 datatype") from None


# numpy refuses an array whose dimensions, zeros left out, multiply past what memory can address
# ("array is too big", even with no elements), at 8 bytes an element at most.
MAX_DIMENSION_PRODUCT = 2**60


def check_shape(shape: list[int], what: str) -> list[int]:
    """A request's shape: non-negative integers that numpy can make an array of (a zero
    dimension does not make [0, 2**62] possible: numpy refuses it, empty or not)."""
    if any(d < 0 for d in shape):
        raise InvalidInput(f"{what} 'shape' must be a list of non-negative integers, got {shown(shape)}")
    product = 1
    for d in shape:
        product *= max(int(d), 1)
    if product > MAX_DIMENSION_PRODUCT:
        raise InvalidInput(f"{what} has shape {shown(shape)}, whose dimensions (zeros aside) multiply past "
                           f"2**60, the most an array can address; send the tensor's real shape")
    return shape


def element_count(shape: list[int] | tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


@dataclass(slots=True)
class Tensor:
    """A named tensor: V2 datatype, shape and the numpy array holding it."""

    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray
    parameters: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_numpy(cls, name: str, array: np.ndarray) -> Tensor:
        array = np.asarray(array)
        if array.dtype.kind in ("U", "S"):
            array = to_bytes_array(array)
        return cls(name, v2_datatype(array.dtype), list(array.shape), array)


def to_bytes_array(array: np.ndarray) -> np.ndarray:
    """Any string-like array as an object array of `bytes` (the BYTES representation)."""
    flat = [x.encode() if isinstance(x, str) else bytes(x) for x in np.asarray(array).reshape(-1)]
    out = np.empty(len(flat), dtype=object)
    out[:] = flat
    return out.reshape(np.shape(array))


def serialize_bytes(array: np.ndarray) -> bytes:
    """BYTES elements as the binary extension writes them: 4-byte little-endian length, then the bytes."""
    parts: list[bytes] = []
    for item in np.asarray(array, dtype=object).reshape(-1):
        b = item.encode() if isinstance(item, str) else bytes(item)
        parts.append(len(b).to_bytes(4, "little"))
        parts.append(b)
    return b"".join(parts)


def deserialize_bytes(buffer: bytes | memoryview, count: int, name: str) -> np.ndarray:
    """Parse `count` length-prefixed BYTES elements; every byte of `buffer` must be used."""
    view = memoryview(buffer)
    # Elements are collected before the array is made: a shape may claim far more elements than
    # the bytes hold, and an array of that many would be allocated before the first check.
    items: list[bytes] = []
    pos = 0
    for i in range(count):
        if pos + 4 > len(view):
            raise InvalidInput(
                f"input '{name}': BYTES data ends after {i} of {count} elements"
            )
        n = int.from_bytes(view[pos : pos + 4], "little")
        pos += 4
        if pos + n > len(view):
            raise InvalidInput(
                f"input '{name}': BYTES element {i} claims {n} bytes but only {len(view) - pos} remain"
            )
        items.append(bytes(view[pos : pos + n]))
        pos += n
    if pos != len(view):
        raise InvalidInput(
            f"input '{name}': {len(view) - pos} bytes left over after {count} BYTES elements"
        )
    out = np.empty(count, dtype=object)
    out[:] = items
    return out


def from_raw(buffer: bytes | memoryview, datatype: str, shape: list[int], name: str) -> np.ndarray:
    """Decode raw little-endian tensor bytes (binary extension, gRPC raw contents) without copying."""
    count = element_count(shape)
    if datatype == "BYTES":
        return deserialize_bytes(buffer, count, name).reshape(shape)
    dtype = numpy_dtype(datatype)
    expected = count * dtype.itemsize
    if len(buffer) != expected:
        raise InvalidInput(
            f"input '{name}' has {len(buffer)} bytes of data; shape {shape} of {datatype} needs {expected}"
        )
    return np.frombuffer(buffer, dtype=dtype.newbyteorder("<")).reshape(shape)


def to_raw(array: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        return serialize_bytes(array)
    return np.ascontiguousarray(array, dtype=numpy_dtype(datatype).newbyteorder("<")).tobytes()

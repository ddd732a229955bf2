"""The one tensor type: V2 datatype <-> numpy, raw little-endian bytes, BYTES length prefixes."""

from __future__ import annotations

import numpy as np
import pytest

from shipyard.errors import InvalidInput
from shipyard.tensors import (
    DATATYPES,
    Tensor,
    deserialize_bytes,
    from_raw,
    numpy_dtype,
    serialize_bytes,
    to_raw,
    v2_datatype,
)

# Every V2 datatype, the numpy type it must map to, and a sample that exercises its range.
SAMPLES: dict[str, tuple[type, np.ndarray]] = {
    "BOOL": (np.bool_, np.array([[True, False, True], [False, False, True]])),
    "UINT8": (np.uint8, np.array([[0, 1, 255], [7, 128, 254]], dtype=np.uint8)),
    "UINT16": (np.uint16, np.array([[0, 1, 65535], [256, 2, 3]], dtype=np.uint16)),
    "UINT32": (np.uint32, np.array([[0, 1, 2**32 - 1], [2**16, 5, 6]], dtype=np.uint32)),
    "UINT64": (np.uint64, np.array([[0, 1, 2**64 - 1], [2**40, 5, 6]], dtype=np.uint64)),
    "INT8": (np.int8, np.array([[-128, 0, 127], [-1, 1, 2]], dtype=np.int8)),
    "INT16": (np.int16, np.array([[-32768, 0, 32767], [-1, 1, 2]], dtype=np.int16)),
    "INT32": (np.int32, np.array([[-(2**31), 0, 2**31 - 1], [-1, 1, 2]], dtype=np.int32)),
    "INT64": (np.int64, np.array([[-(2**63), 0, 2**63 - 1], [-1, 1, 2]], dtype=np.int64)),
    "FP16": (np.float16, np.array([[0.5, -2.0, 65504.0], [np.inf, -0.0, 1e-3]], dtype=np.float16)),
    "FP32": (np.float32, np.array([[0.1, -2.5, 3.4e38], [np.inf, -np.inf, 1e-30]], dtype=np.float32)),
    "FP64": (np.float64, np.array([[0.1, -2.5, 1e308], [np.pi, -np.e, 5e-324]], dtype=np.float64)),
    "BYTES": (np.object_, np.array([[b"", b"a", b"\x00\xff"], ["caf\u00e9".encode(), b"x" * 300, b""]], dtype=object)),
}


def test_samples_cover_every_datatype() -> None:
    assert set(SAMPLES) == set(DATATYPES)
    assert len(DATATYPES) == 13


@pytest.mark.parametrize("datatype", DATATYPES)
def test_datatype_maps_to_numpy_and_back(datatype: str) -> None:
    expected, sample = SAMPLES[datatype]
    dtype = numpy_dtype(datatype)
    assert dtype == np.dtype(expected)
    assert v2_datatype(dtype) == datatype
    assert v2_datatype(sample.dtype) == datatype
    # Byte-order-marked dtypes (what from_raw hands out) map back as well.
    if datatype != "BYTES":
        assert v2_datatype(dtype.newbyteorder("<")) == datatype


def test_string_dtypes_are_bytes() -> None:
    assert v2_datatype(np.dtype("U5")) == "BYTES"
    assert v2_datatype(np.dtype("S3")) == "BYTES"


def test_unknown_datatype_and_dtype_are_invalid_input() -> None:
    with pytest.raises(InvalidInput, match=r"unknown datatype 'FP8'.*FP32"):
        numpy_dtype("FP8")
    with pytest.raises(InvalidInput, match=r"unknown datatype 'fp32'"):
        numpy_dtype("fp32")  # V2 datatypes are upper case
    with pytest.raises(InvalidInput, match=r"complex128 has no V2 datatype"):
        v2_datatype(np.dtype(np.complex128))


@pytest.mark.parametrize("datatype", DATATYPES)
def test_raw_round_trip(datatype: str) -> None:
    _, sample = SAMPLES[datatype]
    raw = to_raw(sample, datatype)
    assert isinstance(raw, bytes)
    if datatype != "BYTES":
        assert len(raw) == sample.size * numpy_dtype(datatype).itemsize
    back = from_raw(raw, datatype, list(sample.shape), "x")
    assert back.shape == sample.shape
    assert v2_datatype(back.dtype) == datatype
    if datatype == "BYTES":
        assert back.tolist() == sample.tolist()
    else:
        np.testing.assert_array_equal(back, sample)
        # Decoding must not copy: the array is a view over the buffer.
        assert not back.flags.owndata


def test_raw_is_little_endian() -> None:
    assert to_raw(np.array([1], dtype=np.int32), "INT32") == b"\x01\x00\x00\x00"
    big = np.array([1, 258], dtype=">u2")
    assert to_raw(big, "UINT16") == b"\x01\x00\x02\x01"
    assert from_raw(b"\x02\x01", "UINT16", [1], "x")[0] == 258


def test_raw_converts_to_the_declared_datatype() -> None:
    assert to_raw(np.array([1.5, 2.0], dtype=np.float64), "FP32") == np.array([1.5, 2.0], "<f4").tobytes()


def test_from_raw_accepts_memoryview_and_scalars() -> None:
    raw = memoryview(np.arange(6, dtype=np.float32).tobytes())
    np.testing.assert_array_equal(from_raw(raw, "FP32", [2, 3], "x"), np.arange(6, dtype=np.float32).reshape(2, 3))
    assert from_raw(np.float64(2.5).tobytes(), "FP64", [], "x").shape == ()
    assert from_raw(b"", "INT8", [0, 4], "x").shape == (0, 4)


def test_bytes_serialization_uses_little_endian_length_prefixes() -> None:
    array = np.array([b"ab", b"", b"xyz"], dtype=object)
    raw = serialize_bytes(array)
    assert raw == b"\x02\x00\x00\x00ab" + b"\x00\x00\x00\x00" + b"\x03\x00\x00\x00xyz"
    assert deserialize_bytes(raw, 3, "x").tolist() == [b"ab", b"", b"xyz"]


def test_bytes_serialization_encodes_str_as_utf8() -> None:
    raw = serialize_bytes(np.array(["h\u00e9", ""], dtype=object))
    assert raw == b"\x03\x00\x00\x00h\xc3\xa9\x00\x00\x00\x00"


def test_bytes_of_only_empty_strings() -> None:
    raw = serialize_bytes(np.array([b"", b"", b""], dtype=object))
    assert raw == b"\x00" * 12
    assert deserialize_bytes(raw, 3, "x").tolist() == [b"", b"", b""]
    assert deserialize_bytes(b"", 0, "x").tolist() == []


def test_bytes_elements_are_bytes_objects() -> None:
    out = from_raw(serialize_bytes(np.array([b"a", b"b"], dtype=object)), "BYTES", [2, 1], "x")
    assert out.dtype == object and out.shape == (2, 1)
    assert all(type(v) is bytes for v in out.reshape(-1))


def test_wrong_byte_count_names_input_shape_and_need() -> None:
    with pytest.raises(InvalidInput) as e:
        from_raw(b"\x00" * 7, "FP32", [2], "pixels")
    assert e.value.message == "input 'pixels' has 7 bytes of data; shape [2] of FP32 needs 8"
    with pytest.raises(InvalidInput, match=r"has 9 bytes.*needs 8"):
        from_raw(b"\x00" * 9, "INT64", [1], "x")
    with pytest.raises(InvalidInput, match=r"has 1 bytes.*needs 0"):
        from_raw(b"\x00", "BOOL", [0], "x")


def test_from_raw_unknown_datatype() -> None:
    with pytest.raises(InvalidInput, match="unknown datatype 'INT4'"):
        from_raw(b"\x00", "INT4", [1], "x")


def test_truncated_bytes_length_prefix() -> None:
    raw = serialize_bytes(np.array([b"ab"], dtype=object)) + b"\x05\x00"
    with pytest.raises(InvalidInput) as e:
        deserialize_bytes(raw, 2, "words")
    assert e.value.message == "input 'words': BYTES data ends after 1 of 2 elements"


def test_truncated_bytes_element() -> None:
    raw = b"\x05\x00\x00\x00abc"
    with pytest.raises(InvalidInput) as e:
        from_raw(raw, "BYTES", [1], "words")
    assert e.value.message == "input 'words': BYTES element 0 claims 5 bytes but only 3 remain"


def test_bytes_with_leftover_bytes() -> None:
    raw = serialize_bytes(np.array([b"ab", b"c"], dtype=object)) + b"zz"
    with pytest.raises(InvalidInput) as e:
        from_raw(raw, "BYTES", [2], "words")
    assert e.value.message == "input 'words': 2 bytes left over after 2 BYTES elements"


def test_bytes_count_follows_the_shape() -> None:
    raw = serialize_bytes(np.array([b"a", b"b", b"c"], dtype=object))
    with pytest.raises(InvalidInput, match="left over after 2 BYTES elements"):
        from_raw(raw, "BYTES", [2], "x")
    with pytest.raises(InvalidInput, match="ends after 3 of 4 elements"):
        from_raw(raw, "BYTES", [2, 2], "x")


def test_a_bytes_shape_larger_than_its_data_is_refused_before_allocating() -> None:
    """An array for 2**40 elements was allocated before the data was read (issue 13 D6)."""
    with pytest.raises(InvalidInput, match="ends after 1 of 1099511627776 elements"):
        from_raw(serialize_bytes(np.array([b"a"], dtype=object)), "BYTES", [1, 2**40], "x")


def test_tensor_from_numpy() -> None:
    t = Tensor.from_numpy("x", np.zeros((2, 3), dtype=np.int16))
    assert (t.name, t.datatype, t.shape) == ("x", "INT16", [2, 3])
    s = Tensor.from_numpy("s", np.array([["a", "bc"]]))
    assert (s.datatype, s.shape) == ("BYTES", [1, 2])
    assert s.data.dtype == object and s.data.tolist() == [[b"a", b"bc"]]

"""Compressed request bodies and answers on the HTTP channels (issue 13): tritonclient.http's
request and response compression, and raw httpx for what no client sends on purpose (a zip bomb,
an unknown coding, a corrupt stream)."""

from __future__ import annotations

import gzip
import zlib

import httpx
import numpy as np
import pytest
import tritonclient.http as http

from tests.fixtures import ServerProcess, digits_test

LIMIT = 1 << 20  # the `server` fixture's --max-request-bytes


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> http.InferenceServerClient:
    return http.InferenceServerClient(f"127.0.0.1:{server.port}")


def _logits(client: http.InferenceServerClient, pixels: np.ndarray, binary: bool, **compression: str) -> np.ndarray:
    x = http.InferInput("pixels", list(pixels.shape), "FP32")
    x.set_data_from_numpy(pixels, binary_data=binary)
    out = http.InferRequestedOutput("logits", binary_data=binary)
    result = client.infer("digits", [x], outputs=[out], **compression)
    logits: np.ndarray = result.as_numpy("logits")
    return logits


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_tritonclient_request_and_response_compression(client: http.InferenceServerClient, algorithm: str,
                                                       binary: bool) -> None:
    """Before: 400 'request body is not valid JSON' for every compressed request."""
    pixels = digits_test()[0][:64]
    plain = _logits(client, pixels, binary)
    np.testing.assert_array_equal(_logits(client, pixels, binary, request_compression_algorithm=algorithm), plain)
    np.testing.assert_array_equal(_logits(client, pixels, binary, response_compression_algorithm=algorithm), plain)
    both = _logits(client, pixels, binary, request_compression_algorithm=algorithm,
                   response_compression_algorithm=algorithm)
    np.testing.assert_array_equal(both, plain)


def _infer_doc(rows: int) -> bytes:
    data = np.arange(rows * 3, dtype=np.float32).tolist()
    return httpx.Request("POST", "http://x", json={
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [rows, 3], "data": data}]}).content


@pytest.mark.parametrize(("coding", "pack"), [
    ("gzip", gzip.compress),
    ("deflate", zlib.compress),  # RFC 1950, as tritonclient sends it
    ("deflate", lambda b: zlib.compress(b, wbits=-zlib.MAX_WBITS)),  # raw RFC 1951, as some clients do
    ("gzip", lambda b: gzip.compress(b[:100]) + gzip.compress(b[100:])),  # two gzip members
], ids=["gzip", "zlib-deflate", "raw-deflate", "gzip-members"])
def test_compressed_bodies_are_decoded(server: ServerProcess, coding: str, pack: object) -> None:
    body = _infer_doc(4)
    r = httpx.post(f"{server.url}/v2/models/id_fp32/infer", content=pack(body),  # type: ignore[operator]
                   headers={"content-encoding": coding, "content-type": "application/json"}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == np.arange(12, dtype=np.float32).tolist()


def test_answers_are_compressed_when_asked_and_only_then(server: ServerProcess) -> None:
    url, body = f"{server.url}/v2/models/id_fp32/infer", _infer_doc(200)
    for asked, coding in [("gzip", "gzip"), ("deflate", "deflate"), ("gzip, deflate", "gzip"),
                          ("identity", None), ("gzip;q=0", None)]:
        r = httpx.post(url, content=body, headers={"accept-encoding": asked}, timeout=30)
        assert r.status_code == 200, r.text
        assert r.headers.get("content-encoding") == coding, asked
        assert len(r.json()["outputs"][0]["data"]) == 600  # httpx decodes what it was sent
    small = httpx.post(url, content=_infer_doc(1), headers={"accept-encoding": "gzip"}, timeout=30)
    assert "content-encoding" not in small.headers  # under a packet: not worth it


def test_zip_bomb_is_stopped_at_the_limit(server: ServerProcess) -> None:
    bomb = gzip.compress(b"[" + b" " * (64 * LIMIT) + b"]")  # 64 MiB that packs to about 64 KiB
    assert len(bomb) < LIMIT
    for path in ("/v2/models/id_fp32/infer", "/v1/models/id_fp32:predict"):
        r = httpx.post(f"{server.url}{path}", content=bomb, headers={"content-encoding": "gzip"}, timeout=30)
        assert r.status_code == 413, r.text
        assert f"limit of {LIMIT} bytes" in r.json()["error"] and "--max-request-bytes" in r.json()["error"]
    assert httpx.get(f"{server.url}/v2/health/live", timeout=10).status_code == 200


def test_unknown_coding_is_415_naming_it_and_the_accepted_ones(server: ServerProcess) -> None:
    r = httpx.post(f"{server.url}/v2/models/id_fp32/infer", content=_infer_doc(1),
                   headers={"content-encoding": "br"}, timeout=30)
    assert r.status_code == 415, r.text
    assert "'br'" in r.json()["error"] and "gzip, deflate" in r.json()["error"]
    # The OpenAI channel answers the same status in its own error shape.
    r = httpx.post(f"{server.url}/v1/completions", content=b"{}", headers={"content-encoding": "zstd"}, timeout=30)
    assert r.status_code == 415 and "'zstd'" in r.json()["error"]["message"], r.text


@pytest.mark.parametrize(("coding", "body"), [
    ("gzip", b"\x1f\x8b\x08\x00garbage-not-deflate-data"),
    ("gzip", gzip.compress(b'{"inputs": []}')[:-12]),  # cut short
    ("deflate", b"\x78\x9c\xff\xff\xff"),
    ("gzip", b'{"inputs": []}'),  # said gzip, sent plain
], ids=["garbage", "truncated", "bad-deflate", "not-compressed"])
def test_corrupt_streams_are_400(server: ServerProcess, coding: str, body: bytes) -> None:
    r = httpx.post(f"{server.url}/v2/models/id_fp32/infer", content=body,
                   headers={"content-encoding": coding}, timeout=30)
    assert r.status_code == 400, r.text
    assert coding in r.json()["error"]

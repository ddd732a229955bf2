"""Every V2 datatype round-trips through the server, as JSON and as binary tensors."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import tritonclient.http as http

from tests.fixtures import ServerProcess
from tests.serve.conftest import ONNX_TYPES


def sample(datatype: str) -> np.ndarray:
    rng = np.random.default_rng(0)
    if datatype == "BYTES":
        return np.array([[b"", b"hello", "\u00e9t\u00e9".encode()], [b"a", b"bb", b"ccc"]], dtype=object)
    if datatype == "BOOL":
        return rng.random((2, 3)) > 0.5
    dtype = {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64}.get(datatype)
    if dtype is not None:
        return rng.standard_normal((2, 3)).astype(dtype)
    info = np.iinfo(datatype.lower())
    return np.array([[info.min, 0, info.max], [1, 2, 3]], dtype=datatype.lower())


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> http.InferenceServerClient:
    return http.InferenceServerClient(f"127.0.0.1:{server.port}")


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("datatype", list(ONNX_TYPES))
def test_round_trip(client: http.InferenceServerClient, datatype: str, binary: bool) -> None:
    data = sample(datatype)
    x = http.InferInput("x", list(data.shape), datatype)
    x.set_data_from_numpy(data, binary_data=binary)
    result = client.infer(f"id_{datatype.lower()}", [x], outputs=[http.InferRequestedOutput("y", binary_data=binary)])
    out = result.as_numpy("y")
    assert out.shape == data.shape
    if datatype == "BYTES":
        assert [v if isinstance(v, bytes) else v.encode() for v in out.reshape(-1)] == list(data.reshape(-1))
    else:
        assert out.dtype == data.dtype
        np.testing.assert_array_equal(out, data)


def test_json_bool_and_bytes_data(server: ServerProcess) -> None:
    body = {"inputs": [{"name": "x", "datatype": "BOOL", "shape": [1, 3], "data": [True, False, True]}]}
    r = httpx.post(f"{server.url}/v2/models/id_bool/infer", json=body)
    assert r.json()["outputs"][0]["data"] == [True, False, True]
    body = {"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1, 3], "data": ["a", "", "ü"]}]}
    r = httpx.post(f"{server.url}/v2/models/id_bytes/infer", json=body)
    assert r.json()["outputs"][0]["data"] == ["a", "", "ü"]
    body = {"inputs": [{"name": "x", "datatype": "BOOL", "shape": [1, 3], "data": [1, 0, 1]}]}
    r = httpx.post(f"{server.url}/v2/models/id_bool/infer", json=body)
    assert r.status_code == 400 and "BOOL" in r.json()["error"]

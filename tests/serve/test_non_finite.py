"""Issue 13 D12: NaN and infinity in float tensors. An FP32 `1e300` in JSON answered 200 with
every output `null`, and binary NaN/Inf inputs answered NaN outputs, with nothing counted. Now
they are counted (shipyard_non_finite_total) and a model may refuse them (reject_non_finite)."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator

import httpx
import numpy as np
import onnx
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.utils import InferenceServerException

from shipyard.config import ModelConfig
from shipyard.repository import Repository
from shipyard.runtimes.importer import import_model
from tests.fixtures import ServerProcess, identity_onnx


@pytest.fixture(scope="module")
def nf_server(serve_repo: Repository, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """`id_fp32` as it comes (counts), and `strict`, the same identity with reject_non_finite."""
    base = tmp_path_factory.mktemp("nonfinite")
    root = base / "repo"
    shutil.copytree(serve_repo.root / "id_fp32", root / "id_fp32")
    repo = Repository(root)
    import_model(repo, identity_onnx(base / "strict.onnx", onnx.TensorProto.FLOAT, ["batch", 3]), "strict")
    repo.write_model_config("strict", ModelConfig(reject_non_finite=True))
    proc = ServerProcess(root)
    yield proc
    assert proc.stop() == 0, proc.output()


def counted(server: ServerProcess, model: str, direction: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    m = re.search(rf'^shipyard_non_finite_total\{{direction="{direction}",model="{model}",version="1"\}} (\S+)$',
                  text, re.M)
    return float(m.group(1)) if m else 0.0


def _json_infer(server: ServerProcess, model: str, data: list[float]) -> httpx.Response:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [len(data) // 3, 3], "data": data}]}
    return httpx.post(f"{server.url}/v2/models/{model}/infer", json=body, timeout=30)


def _binary(array: np.ndarray) -> list[thttp.InferInput]:
    x = thttp.InferInput("x", list(array.shape), "FP32")
    x.set_data_from_numpy(array, binary_data=True)
    return [x]


def bad_array() -> np.ndarray:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    a[1, 2], a[1, 0] = np.inf, np.nan
    return a


def test_json_overflow_is_counted_in_and_out(nf_server: ServerProcess) -> None:
    before = counted(nf_server, "id_fp32", "input"), counted(nf_server, "id_fp32", "output")
    r = _json_infer(nf_server, "id_fp32", [1e300, 1.0, 2.0])
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == [None, 1.0, 2.0]  # JSON has no infinity: null, as before
    assert counted(nf_server, "id_fp32", "input") == before[0] + 1
    assert counted(nf_server, "id_fp32", "output") == before[1] + 1
    finite = _json_infer(nf_server, "id_fp32", [0.5, 1.0, 2.0])
    assert finite.status_code == 200 and counted(nf_server, "id_fp32", "input") == before[0] + 1


def test_binary_nan_and_inf_are_counted(nf_server: ServerProcess) -> None:
    client = thttp.InferenceServerClient(f"127.0.0.1:{nf_server.port}")
    before = counted(nf_server, "id_fp32", "input")
    out = client.infer("id_fp32", _binary(bad_array())).as_numpy("y")
    assert np.isnan(out[1, 0]) and np.isinf(out[1, 2])
    assert counted(nf_server, "id_fp32", "input") == before + 2


def test_reject_non_finite_over_rest_json(nf_server: ServerProcess) -> None:
    r = _json_infer(nf_server, "strict", [0.0, 1.0, 2.0, 3.0, 1e300, 5.0])
    assert r.status_code == 400, r.text
    message = r.json()["error"]
    assert "input 'x'" in message and "index [1, 1]" in message and "reject_non_finite" in message
    assert "inf" in message
    ok = _json_infer(nf_server, "strict", [0.0, 1.0, 2.0])
    assert ok.status_code == 200 and ok.json()["outputs"][0]["data"] == [0.0, 1.0, 2.0]


def test_reject_non_finite_over_rest_binary(nf_server: ServerProcess) -> None:
    client = thttp.InferenceServerClient(f"127.0.0.1:{nf_server.port}")
    with pytest.raises(InferenceServerException) as e:
        client.infer("strict", _binary(bad_array()))
    assert e.value.status() == "400"
    assert "2 non-finite values" in e.value.message() and "index [1, 0]" in e.value.message()


def test_reject_non_finite_over_grpc_and_counting(nf_server: ServerProcess) -> None:
    client = tgrpc.InferenceServerClient(nf_server.grpc_url)
    x = tgrpc.InferInput("x", [2, 3], "FP32")
    x.set_data_from_numpy(bad_array())
    with pytest.raises(InferenceServerException) as e:
        client.infer("strict", [x])
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "index [1, 0]" in e.value.message() and "nan" in e.value.message()
    before = counted(nf_server, "id_fp32", "output")
    out = client.infer("id_fp32", [x]).as_numpy("y")
    assert np.isnan(out[1, 0])
    assert counted(nf_server, "id_fp32", "output") == before + 2
    assert counted(nf_server, "strict", "input") >= 2  # a refused request's values are counted too

"""The V2 REST channel against a real server, through tritonclient.http and raw httpx."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import tritonclient.http as http
from tritonclient.utils import InferenceServerException

from shipyard.optimize.evaluate import open_runtime
from shipyard.repository import Repository
from shipyard.zoo import digits
from tests.fixtures import ServerProcess, digits_test


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> http.InferenceServerClient:
    return http.InferenceServerClient(f"127.0.0.1:{server.port}", concurrency=8)


def classify(client: http.InferenceServerClient, pixels: np.ndarray, binary: bool, version: str = "") -> np.ndarray:
    x = http.InferInput("pixels", list(pixels.shape), "FP32")
    x.set_data_from_numpy(pixels, binary_data=binary)
    out = http.InferRequestedOutput("logits", binary_data=binary)
    result = client.infer("digits", [x], model_version=version, outputs=[out])
    logits: np.ndarray = result.as_numpy("logits")
    return logits


def in_process_logits(repo: Repository, version: int, pixels: np.ndarray) -> np.ndarray:
    m = repo.manifest("digits", version)
    rt = open_runtime(repo.path("digits", version), m.format, m.signature, threads=1)
    return rt.infer({"pixels": pixels}, ["logits"])["logits"]


def test_health_and_server_metadata(client: http.InferenceServerClient, server: ServerProcess) -> None:
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "shipyard"
    assert {"binary_tensor_data", "model_repository"} <= set(meta["extensions"])
    assert httpx.get(f"{server.url}/v2/health/live").json() == {"live": True}


def test_model_metadata_and_versions(client: http.InferenceServerClient) -> None:
    meta = client.get_model_metadata("digits")
    assert meta["versions"] == ["1", "2"]
    assert meta["platform"] == "onnx"  # default version: the highest ready one
    assert meta["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    assert client.get_model_metadata("digits", "1")["platform"] == "torch-export"
    assert client.is_model_ready("digits") and client.is_model_ready("digits", "1")


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_accuracy_through_server_equals_in_process(client: http.InferenceServerClient, serve_repo: Repository, binary: bool) -> None:
    pixels, labels = digits_test()
    for version in (1, 2):
        served = classify(client, pixels, binary, str(version))
        local = in_process_logits(serve_repo, version, pixels)
        np.testing.assert_allclose(served, local, rtol=1e-5, atol=1e-5)
        assert digits.accuracy(served, labels) == digits.accuracy(local, labels) >= 0.97


def test_32_concurrent_clients_each_get_their_own_rows(server: ServerProcess, serve_repo: Repository) -> None:
    """Every test image sent by 32 concurrent clients, batching on: each answer matches its own
    request, and the server really ran batches larger than one."""
    pixels, labels = digits_test()
    local = in_process_logits(serve_repo, 2, pixels)
    before = httpx.get(f"{server.url}/v2/models/digits/versions/2/stats").json()["model_stats"][0]

    def one(i: int) -> tuple[int, np.ndarray]:
        c = http.InferenceServerClient(f"127.0.0.1:{server.port}")
        rows = pixels[i : i + 1 + i % 3]  # 1 to 3 rows per request: uneven requests in one batch
        return i, classify(c, rows, binary=i % 2 == 0)

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(one, range(len(pixels))))
    correct = 0
    for i, logits in results:
        n = len(pixels[i : i + 1 + i % 3])
        np.testing.assert_allclose(logits, local[i : i + n], rtol=1e-4, atol=1e-4)
        correct += int(logits[0].argmax() == labels[i])
    assert correct / len(pixels) == digits.accuracy(local, labels)
    after = httpx.get(f"{server.url}/v2/models/digits/versions/2/stats").json()["model_stats"][0]
    assert after["inference_count"] - before["inference_count"] == len(pixels)
    batches = {int(k): v - before["batch_sizes"].get(k, 0) for k, v in after["batch_sizes"].items()}
    assert max(k for k, v in batches.items() if v > 0) > 3, batches


def test_two_inputs_two_outputs_and_requested_outputs(client: http.InferenceServerClient) -> None:
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    b = np.ones((2, 4), dtype=np.float32)
    ins = [http.InferInput("a", [2, 4], "FP32"), http.InferInput("b", [2, 4], "FP32")]
    ins[0].set_data_from_numpy(a)
    ins[1].set_data_from_numpy(b, binary_data=False)
    result = client.infer("two", ins)
    np.testing.assert_array_equal(result.as_numpy("y"), a * 2 + b)
    np.testing.assert_array_equal(result.as_numpy("sum"), a.sum(1, keepdims=True))
    only = client.infer("two", ins, outputs=[http.InferRequestedOutput("sum")])
    assert only.as_numpy("y") is None
    np.testing.assert_array_equal(only.as_numpy("sum"), a.sum(1, keepdims=True))


def test_binary_data_output_request_parameter(server: ServerProcess) -> None:
    """`binary_data_output: true` with JSON inputs: every output comes back as raw bytes."""
    body = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": [0.0] * 64}],
            "parameters": {"binary_data_output": True}}
    r = httpx.post(f"{server.url}/v2/models/digits/infer", json=body)
    assert r.status_code == 200
    n = int(r.headers["inference-header-content-length"])
    head = r.content[:n]
    import orjson

    doc = orjson.loads(head)
    assert doc["outputs"][0]["parameters"]["binary_data_size"] == 40
    assert np.frombuffer(r.content[n:], dtype="<f4").shape == (10,)


def test_raw_binary_body_for_single_input_model(server: ServerProcess, serve_repo: Repository) -> None:
    """`Inference-Header-Content-Length: 0`: the body is the one input's tensor, batch from length."""
    pixels, _ = digits_test()
    r = httpx.post(f"{server.url}/v2/models/digits/infer", content=pixels[:3].tobytes(),
                   headers={"Inference-Header-Content-Length": "0"})
    assert r.status_code == 200, r.text
    n = int(r.headers["inference-header-content-length"])
    logits = np.frombuffer(r.content[n:], dtype="<f4").reshape(3, 10)
    np.testing.assert_allclose(logits, in_process_logits(serve_repo, 2, pixels[:3]), rtol=1e-5, atol=1e-5)


def test_request_id_and_nested_json_data(server: ServerProcess) -> None:
    data = [[[[0.25] * 8] * 8]]
    body = {"id": "req-7", "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": data}]}
    r = httpx.post(f"{server.url}/v2/models/digits/infer", json=body)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["id"] == "req-7" and doc["model_name"] == "digits" and doc["model_version"] == "2"
    assert doc["outputs"][0]["shape"] == [1, 10] and len(doc["outputs"][0]["data"]) == 10


def test_repository_index_load_unload(client: http.InferenceServerClient, server: ServerProcess) -> None:
    index = {(m["name"], m["version"]): m for m in client.get_model_repository_index()}
    assert index[("digits", "2")]["state"] == "READY"
    assert index[("broken", "1")]["state"] == "UNAVAILABLE"
    assert "checksum" in index[("broken", "1")]["reason"]
    client.unload_model("two")
    assert not client.is_model_ready("two")
    with pytest.raises(InferenceServerException, match="not loaded"):
        client.infer("two", [http.InferInput("a", [1, 4], "FP32").set_data_from_numpy(np.zeros((1, 4), np.float32)),
                             http.InferInput("b", [1, 4], "FP32").set_data_from_numpy(np.zeros((1, 4), np.float32))])
    client.load_model("two")
    assert client.is_model_ready("two")
    r = httpx.post(f"{server.url}/v2/repository/index", json={"ready": True})
    assert all(m["state"] == "READY" for m in r.json()) and any(m["name"] == "two" for m in r.json())


def test_adaptive_batching_answers_each_client_its_own_rows(serve_repo: Repository) -> None:
    server = ServerProcess(serve_repo.root, "--models", "digits", "--adaptive")
    try:
        pixels, _ = digits_test()
        local = in_process_logits(serve_repo, 2, pixels)

        def one(i: int) -> np.ndarray:
            return classify(http.InferenceServerClient(f"127.0.0.1:{server.port}"), pixels[i : i + 1], binary=True)

        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(one, range(200)))
        for i, logits in enumerate(results):
            np.testing.assert_allclose(logits, local[i : i + 1], rtol=1e-4, atol=1e-4)
        sizes = httpx.get(f"{server.url}/v2/models/digits/versions/2/stats").json()["model_stats"][0]["batch_sizes"]
        assert sum(int(k) * v for k, v in sizes.items()) == 200
    finally:
        assert server.stop() == 0


def test_model_config_over_http(client: http.InferenceServerClient, server: ServerProcess) -> None:
    """tritonclient.http's get_model_config got 404 (gRPC had it): the same config, as Triton's JSON."""
    cfg = client.get_model_config("digits")
    assert cfg["name"] == "digits" and cfg["max_batch_size"] == 32 and cfg["platform"] == "onnx"
    assert [(i["name"], i["data_type"], i["dims"]) for i in cfg["input"]] == [("pixels", "TYPE_FP32", [1, 8, 8])]
    assert [(o["name"], o["data_type"]) for o in cfg["output"]] == [("logits", "TYPE_FP32")]
    assert "dynamic_batching" in cfg and set(cfg["version_policy"]) <= {"all", "latest", "specific"}
    assert client.get_model_config("digits", "1")["platform"] == "torch-export"
    assert client.get_model_config("id_bytes")["input"][0]["data_type"] == "TYPE_STRING"
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        client.get_model_config("nope")
    assert httpx.get(f"{server.url}/v2/models/digits/versions/x/config").status_code == 400


def test_the_health_paths_other_servers_use(server: ServerProcess) -> None:
    """vLLM, TGI and SGLang's `GET /health` (GuideLLM waits for it) and KServe V1's `GET /`."""
    r = httpx.get(f"{server.url}/health", timeout=10)
    assert r.status_code == 200 and r.content == b""
    r = httpx.get(f"{server.url}/", timeout=10)
    assert r.status_code == 200 and r.json() == {"status": "alive"}

"""TF Serving / KServe V1 REST (`:predict`, model status) against a real server, with httpx."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest

from shipyard.repository import Repository
from tests.fixtures import ServerProcess, digits_test
from tests.serve.test_rest_v2 import in_process_logits


def test_instances_and_inputs_formats_match_in_process(server: ServerProcess, serve_repo: Repository) -> None:
    pixels, labels = digits_test()
    expected = in_process_logits(serve_repo, 2, pixels[:8])
    rows = httpx.post(f"{server.url}/v1/models/digits:predict", json={"instances": pixels[:8].tolist()}, timeout=30)
    assert rows.status_code == 200, rows.text
    np.testing.assert_allclose(np.array(rows.json()["predictions"]), expected, rtol=1e-4, atol=1e-4)
    cols = httpx.post(f"{server.url}/v1/models/digits/versions/1:predict",
                      json={"inputs": {"pixels": pixels[:8].tolist()}}, timeout=30)
    assert cols.status_code == 200, cols.text
    logits = np.array(cols.json()["outputs"])
    np.testing.assert_allclose(logits, in_process_logits(serve_repo, 1, pixels[:8]), rtol=1e-4, atol=1e-4)
    assert (logits.argmax(1) == labels[:8]).mean() > 0.7


def test_named_inputs_and_several_outputs(server: ServerProcess) -> None:
    a, b = [[1.0, 2, 3, 4], [0, 0, 0, 1]], [[1.0, 1, 1, 1], [2, 2, 2, 2]]
    r = httpx.post(f"{server.url}/v1/models/two:predict",
                   json={"instances": [{"a": a[0], "b": b[0]}, {"a": a[1], "b": b[1]}]}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["predictions"] == [{"y": [3.0, 5.0, 7.0, 9.0], "sum": [10.0]}, {"y": [2.0, 2.0, 2.0, 4.0], "sum": [1.0]}]
    r = httpx.post(f"{server.url}/v1/models/two:predict", json={"inputs": {"a": a, "b": b}}, timeout=30)
    assert r.json()["outputs"]["sum"] == [[10.0], [1.0]]


def test_bytes_as_strings_and_b64(server: ServerProcess) -> None:
    raw = b"\x01\x02"
    r = httpx.post(f"{server.url}/v1/models/id_bytes:predict",
                   json={"instances": [["a", "b", {"b64": base64.b64encode(raw).decode()}]]}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["predictions"] == [["a", "b", raw.decode()]]


def test_model_status(server: ServerProcess) -> None:
    doc = httpx.get(f"{server.url}/v1/models/digits", timeout=10).json()
    assert doc["ready"] is True and doc["name"] == "digits"
    assert [(s["version"], s["state"]) for s in doc["model_version_status"]] == [("2", "AVAILABLE"), ("1", "AVAILABLE")]
    one = httpx.get(f"{server.url}/v1/models/digits/versions/1", timeout=10).json()
    assert [s["version"] for s in one["model_version_status"]] == ["1"]
    broken = httpx.get(f"{server.url}/v1/models/broken", timeout=10).json()
    assert broken["ready"] is False and "checksum" in broken["model_version_status"][0]["status"]["error_message"]


@pytest.mark.parametrize(
    ("path", "body", "status", "words"),
    [
        ("/v1/models/nope:predict", {"instances": [1]}, 404, ["unknown model 'nope'"]),
        ("/v1/models/digits:predict", {}, 400, ["exactly one of 'instances'"]),
        ("/v1/models/digits:predict", {"instances": [], "inputs": []}, 400, ["exactly one of"]),
        ("/v1/models/digits:predict", {"instances": []}, 400, ["non-empty list"]),
        ("/v1/models/digits:predict", {"instances": [[1, 2], [3]]}, 400, ["not a regular array"]),
        ("/v1/models/digits:predict", {"instances": [[1.0] * 65]}, 400, ["shape [1, 65]", "[-1, 1, 8, 8]"]),
        ("/v1/models/digits:predict", {"instances": [["x"] * 64]}, 400, ["string values", "FP32"]),
        ("/v1/models/two:predict", {"instances": [{"a": [1.0] * 4}]}, 400, ["has keys ['a']", "takes ['a', 'b']"]),
        ("/v1/models/two:predict", {"instances": [[1.0] * 4]}, 400, ["takes 2 inputs"]),
        ("/v1/models/id_bytes:predict", {"instances": [[{"b64": "!!"}, "a", "b"]]}, 400, ["invalid base64"]),
        ("/v1/models/digits/versions/0:predict", {"instances": [1]}, 400, ["positive integer"]),
        ("/v1/models/digits/versions/9:predict", {"instances": [1]}, 404, ["no loaded version 9"]),
        # Issue 13 D10: an Arabic-Indic one passes str.isdigit() and int() reads it as 1.
        ("/v1/models/digits/versions/%D9%A1:predict", {"instances": [[0.5] * 64]}, 400, ["positive integer"]),
        ("/v1/models/broken:predict", {"instances": [1]}, 503, ["checksum"]),
    ],
)
def test_bad_requests(server: ServerProcess, path: str, body: object, status: int, words: list[str]) -> None:
    r = httpx.post(f"{server.url}{path}", json=body, timeout=30)
    assert r.status_code == status, r.text
    for w in words:
        assert w in r.json()["error"], r.json()


def test_not_json_and_unknown_v1_paths(server: ServerProcess) -> None:
    r = httpx.post(f"{server.url}/v1/models/digits:predict", content=b"{nope", timeout=10)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
    assert httpx.get(f"{server.url}/v1/other", timeout=10).status_code == 404  # /v1 is not a catch-all


# -- issue 13: TF Serving's metadata, classify, regress and label paths ------------------------
def test_metadata_as_tf_serving_writes_it(server: ServerProcess) -> None:
    """Before: 404, no such path."""
    doc = httpx.get(f"{server.url}/v1/models/digits/metadata", timeout=10).json()
    assert doc["model_spec"] == {"name": "digits", "signature_name": "", "version": "2"}
    sig = doc["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sig["method_name"] == "tensorflow/serving/predict"
    assert sig["inputs"]["pixels"]["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in sig["inputs"]["pixels"]["tensor_shape"]["dim"]] == ["-1", "1", "8", "8"]
    assert [d["size"] for d in sig["outputs"]["logits"]["tensor_shape"]["dim"]] == ["-1", "10"]
    one = httpx.get(f"{server.url}/v1/models/digits/versions/1/metadata", timeout=10).json()
    assert one["model_spec"]["version"] == "1"
    strings = httpx.get(f"{server.url}/v1/models/id_bytes/metadata", timeout=10).json()
    assert strings["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]["x"]["dtype"] == "DT_STRING"


def test_classify_answers_label_score_pairs(server: ServerProcess, serve_repo: Repository) -> None:
    """Before: 405 'method POST is not allowed' (the path was read as a model 'digits:classify')."""
    pixels, labels = digits_test()
    body = {"examples": [{"pixels": p.reshape(-1).tolist()} for p in pixels[:8]]}  # flat, as tf.Example
    r = httpx.post(f"{server.url}/v1/models/digits:classify", json=body, timeout=30)
    assert r.status_code == 200, r.text
    result = r.json()["result"]
    assert len(result) == 8 and all([c for c, _ in row] == [str(i) for i in range(10)] for row in result)
    scores = np.array([[s for _, s in row] for row in result])
    np.testing.assert_allclose(scores, in_process_logits(serve_repo, 2, pixels[:8]), rtol=1e-4, atol=1e-4)
    assert (scores.argmax(1) == labels[:8]).mean() > 0.7
    v1 = httpx.post(f"{server.url}/v1/models/digits/versions/1:classify", json=body, timeout=30)
    assert v1.status_code == 200 and len(v1.json()["result"]) == 8


def test_regress_and_context(server: ServerProcess) -> None:
    """`two` has one output of one value per example (sum): that is the regression."""
    body = {"context": {"b": [1.0, 1, 1, 1]}, "examples": [{"a": [1.0, 2, 3, 4]}, {"a": [0, 0, 0, 1]}]}
    r = httpx.post(f"{server.url}/v1/models/two:regress", json=body, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json() == {"result": [10.0, 1.0]}  # sum = a.sum(1)


@pytest.mark.parametrize(
    ("path", "body", "status", "words"),
    [
        ("/v1/models/digits:regress", {"examples": [{"pixels": [0.0] * 64}]}, 400,
         [":regress needs", "logits", "use :predict"]),
        ("/v1/models/two:classify", {"examples": [{"a": [0.0] * 4, "b": [0.0] * 4}]}, 400, [":classify needs"]),
        ("/v1/models/digits:classify", {"instances": [[0.0] * 64]}, 400, ["'examples'"]),
        ("/v1/models/digits:classify", {"examples": [{"pixels": [0.0] * 10}]}, 400,
         ["10 values", "row of shape [1, 8, 8]"]),
        ("/v1/models/digits:classify", {"examples": [{"x": [0.0] * 64}]}, 400, ["takes ['pixels']"]),
        ("/v1/models/two:regress", {"context": {"b": [0.0] * 4}, "examples": [{"a": [0.0] * 4, "b": [1.0] * 4}]},
         400, ["repeats context features ['b']"]),
        ("/v1/models/nope:classify", {"examples": [{"x": 1}]}, 404, ["unknown model 'nope'"]),
        ("/v1/models/digits/labels/stable:predict", {"instances": [[0.0] * 64]}, 404,
         ["label 'stable'", "no version labels", "/v1/models/digits/versions/N"]),
    ],
)
def test_examples_and_labels_refusals(server: ServerProcess, path: str, body: object, status: int,
                                      words: list[str]) -> None:
    r = httpx.post(f"{server.url}{path}", json=body, timeout=30)
    assert r.status_code == status, r.text
    for w in words:
        assert w in r.json()["error"], r.json()


def test_label_status_and_metadata_paths_say_labels_are_not_supported(server: ServerProcess) -> None:
    for path in ("/v1/models/digits/labels/canary", "/v1/models/digits/labels/canary/metadata"):
        r = httpx.get(f"{server.url}{path}", timeout=10)
        assert r.status_code == 404 and "no version labels" in r.json()["error"], r.text

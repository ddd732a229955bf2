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

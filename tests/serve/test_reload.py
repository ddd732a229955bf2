"""Reloading a served model (issue 13 D5): the new set loads beside the old one and is swapped in
only when every version of it is ready; a failed reload answers the error and the old versions
keep serving."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest
import tritonclient.grpc as tgrpc
from tritonclient.utils import InferenceServerException

from shipyard.repository import Repository
from tests.fixtures import ServerProcess
from tests.serve.test_errors import post, queue_state, slow_request, still_serving, wait_for


def flip_one_byte(path: Path) -> bytes:
    """Flip one byte in the middle of a published file; the original bytes are returned."""
    original = path.read_bytes()
    data = bytearray(original)
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return original


def served_version(server: ServerProcess) -> str:
    r = httpx.post(f"{server.url}/v2/models/digits/infer", json={"inputs": [
        {"name": "pixels", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": [0.5] * 64}]})
    assert r.status_code == 200, r.text
    return str(r.json()["model_version"])


def test_a_failed_reload_keeps_the_old_versions_serving(fresh_repo: Repository) -> None:
    server = ServerProcess(fresh_repo.root, "--models", "digits")
    try:
        model = fresh_repo.path("digits", 2) / "model.onnx"
        original = flip_one_byte(model)

        r = post(server, "/v2/repository/models/digits/load")
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert "failed to load 'digits': version 2: " in error and "checksum" in error, error
        assert "the versions loaded before (1, 2) still serve" in error, error
        assert str(fresh_repo.root) not in error  # the server's folder is not a client's business
        # The version loaded before the file was damaged answers on, by name and by default.
        assert served_version(server) == "2"
        assert httpx.get(f"{server.url}/v2/models/digits/versions/2/ready").status_code == 200
        assert httpx.get(f"{server.url}/v2/models/digits/ready").status_code == 200

        client = tgrpc.InferenceServerClient(server.grpc_url)
        with pytest.raises(InferenceServerException) as e:
            client.load_model("digits")
        assert "StatusCode.INVALID_ARGUMENT" in str(e.value.status())
        assert "version 2" in str(e.value) and "checksum" in str(e.value)
        assert client.is_model_ready("digits") and client.is_model_ready("digits", "2")
        still_serving(server)

        # Once the file is whole again, a reload succeeds and swaps the new set in.
        model.write_bytes(original)
        r = post(server, "/v2/repository/models/digits/load")
        assert r.status_code == 200, r.text
        assert served_version(server) == "2"
    finally:
        assert server.stop() == 0, server.output()


def test_a_reload_lets_requests_on_the_old_set_finish(fresh_repo: Repository) -> None:
    server = ServerProcess(fresh_repo.root, "--models", "slow")
    try:
        body, headers = slow_request(4000)
        statuses: list[int] = []
        runner = threading.Thread(target=lambda: statuses.append(
            post(server, "/v2/models/slow/infer", content=body, headers=headers).status_code))
        runner.start()
        wait_for(lambda: queue_state(server) == {"queued": 0, "running": 1})
        r = post(server, "/v2/repository/models/slow/load")
        assert r.status_code == 200, r.text
        runner.join()
        assert statuses == [200]
        small, small_headers = slow_request(1)
        assert post(server, "/v2/models/slow/infer", content=small, headers=small_headers).status_code == 200
    finally:
        assert server.stop() == 0, server.output()


def test_a_garbage_manifest_is_unavailable_at_start_up_and_the_rest_serve(fresh_repo: Repository) -> None:
    (fresh_repo.path("digits", 1) / "manifest.json").write_text("{not json")
    server = ServerProcess(fresh_repo.root, "--models", "digits,two")
    try:
        index = {(m["name"], m["version"]): m for m in
                 httpx.post(f"{server.url}/v2/repository/index", json={}).json()}
        assert index[("digits", "1")]["state"] == "UNAVAILABLE"
        assert "manifest.json is not valid" in index[("digits", "1")]["reason"]
        assert str(fresh_repo.root) not in index[("digits", "1")]["reason"]
        assert index[("digits", "2")]["state"] == "READY" and index[("two", "1")]["state"] == "READY"
        assert served_version(server) == "2"
        r = httpx.get(f"{server.url}/v2/models/digits/versions/1/ready")
        assert r.status_code != 200
    finally:
        assert server.stop() == 0, server.output()

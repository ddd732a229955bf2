"""`shipyard serve --model-control poll`: versions and models published while the server runs are
served within a few polls, beside what serves, and one that fails leaves the served ones serving."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import torch

from shipyard.config import ModelConfig
from shipyard.repository import Repository
from shipyard.runtimes.importer import import_model
from tests.fixtures import ServerProcess, TwoInputs, export_onnx
from tests.repository.workers import SIGNATURE

BODY = {"inputs": [{"name": "a", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]},
                   {"name": "b", "datatype": "FP32", "shape": [1, 4], "data": [0, 0, 0, 0]}]}


def until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    """Wait for `condition` with a deadline (the poll interval is 0.5 s; loading takes a while)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not reached in {timeout} s: {what}"
        time.sleep(0.1)


def answered_by(server: ServerProcess, model: str = "two") -> str | None:
    r = httpx.post(f"{server.url}/v2/models/{model}/infer", json=BODY, timeout=30)
    return str(r.json()["model_version"]) if r.status_code == 200 else None


def index(server: ServerProcess) -> dict[tuple[str, str], dict[str, str]]:
    rows = httpx.post(f"{server.url}/v2/repository/index", json={}, timeout=30).json()
    return {(r["name"], r["version"]): r for r in rows}


@pytest.fixture
def two_onnx(tmp_path: Path) -> Path:
    return export_onnx(TwoInputs(), tmp_path / "two.onnx", {"a": torch.zeros(2, 4), "b": torch.zeros(2, 4)},
                       ["y", "sum"])


def test_poll_serves_new_versions_and_models_and_keeps_serving_through_failures(
        tmp_path: Path, two_onnx: Path) -> None:
    repo = Repository(tmp_path / "repo")
    import_model(repo, two_onnx, "two")
    server = ServerProcess(repo.root, "--model-control", "poll", "--poll-interval-s", "0.5")
    statuses: Counter[int] = Counter()
    versions: Counter[str] = Counter()
    stop = threading.Event()

    def hammer() -> None:  # a client that never names a version, all along
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                r = client.post(f"{server.url}/v2/models/two/infer", json=BODY)
                statuses[r.status_code] += 1
                if r.status_code == 200:
                    versions[str(r.json()["model_version"])] += 1
                time.sleep(0.01)

    client = threading.Thread(target=hammer)
    client.start()
    try:
        assert answered_by(server) == "1"
        import_model(repo, two_onnx, "two")  # version 2, published with the repository API
        until(lambda: answered_by(server) == "2", "version 2 served")
        until(lambda: ("two", "1") in index(server) and index(server)[("two", "1")]["state"] != "READY",
              "version 1 unloaded (version policy 'latest')")

        # A version that cannot load: the served one stays, the index says why.
        with repo.publish("two", "onnx", SIGNATURE) as staging:
            (staging.path / "model.onnx").write_bytes(b"this is not an ONNX model")
        until(lambda: index(server).get(("two", "3"), {}).get("state") == "UNAVAILABLE"
              and index(server)[("two", "3")]["reason"] != "not loaded", "version 3 tried")
        assert "failed to load" in index(server)[("two", "3")]["reason"]
        assert index(server)[("two", "2")]["state"] == "READY"
        assert answered_by(server) == "2"

        # A new model, then its removal.
        import_model(repo, two_onnx, "other")
        until(lambda: answered_by(server, "other") == "1", "a new model served")
        repo.remove("other", 1)
        until(lambda: httpx.get(f"{server.url}/v2/models/other/ready").status_code == 404, "removed model dropped")

        # A removed version goes; a config change (the version policy) loads the set it names.
        repo.remove("two", 3)
        until(lambda: ("two", "3") not in index(server), "version 3 gone")
        repo.write_model_config("two", ModelConfig(version_policy="all"))
        until(lambda: httpx.get(f"{server.url}/v2/models/two/versions/1/ready").status_code == 200,
              "version 1 served again under version_policy 'all'")
        assert answered_by(server) == "2"
    finally:
        stop.set()
        client.join()
        assert server.stop() == 0, server.output()
    # Through every swap and every failure, the client was answered, by 1 and then by 2.
    assert set(statuses) == {200}, statuses
    assert versions["1"] > 0 and versions["2"] > 0, versions


def test_model_control_none_serves_only_what_was_loaded(tmp_path: Path, two_onnx: Path) -> None:
    repo = Repository(tmp_path / "repo")
    import_model(repo, two_onnx, "two")
    server = ServerProcess(repo.root)
    try:
        import_model(repo, two_onnx, "two")
        import_model(repo, two_onnx, "other")
        time.sleep(2)  # a few poll intervals' worth: nothing may happen, so there is nothing to wait for
        assert answered_by(server) == "1" and answered_by(server, "other") is None
        assert httpx.post(f"{server.url}/v2/repository/models/two/load").status_code == 200
        assert answered_by(server) == "2"
    finally:
        assert server.stop() == 0, server.output()


def test_bad_model_control_is_one_line() -> None:
    from tests.cli.test_cli import fails, shipyard

    line = fails(shipyard("serve", "--model-control", "watch", "--repository", "/nonexistent"))
    assert "model_control" in line and "'none' or 'poll'" in line

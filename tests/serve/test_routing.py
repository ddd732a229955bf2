"""Traffic split (canary) and shadow traffic from config.json, changed while the server runs."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
import tritonclient.grpc as tgrpc
from prometheus_client.parser import text_string_to_metric_families

from shipyard.repository import Repository
from tests.fixtures import ServerProcess, digits_test

PIXELS = digits_test()[0][:1]
BODY = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": PIXELS.ravel().tolist()}]}


def write_config(repo: Path, routing: dict[str, object] | None) -> None:
    path = repo / "digits" / "config.json"
    doc = {"version_policy": "all", **({"routing": routing} if routing else {})}
    path.write_text(json.dumps(doc))
    t = time.time() + 1  # a distinct mtime even on coarse clocks
    os.utime(path, (t, t))


def versions(client: httpx.Client, n: int) -> Counter[str]:
    return Counter(client.post("/v2/models/digits/infer", json=BODY).json()["model_version"] for _ in range(n))


def shadow_counts(server: ServerProcess) -> dict[str, float]:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    fam = {f.name: f for f in text_string_to_metric_families(text)}["shipyard_shadow_comparisons"]
    return {s.labels["outcome"]: s.value for s in fam.samples if s.name.endswith("_total")}


@pytest.fixture
def repo_root(digits_repo: Repository, tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(digits_repo.root, root)
    return root


def test_canary_split_shadow_and_live_changes(repo_root: Path) -> None:
    write_config(repo_root, {"weights": {"1": 80, "2": 20}})
    server = ServerProcess(repo_root, "--models", "digits")
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            counts = versions(client, 300)
            # 20% of 300 = 60; binomial sd ~6.9: 3.5 sd each side.
            assert 36 <= counts["2"] <= 84 and counts["1"] + counts["2"] == 300, counts
            # A named version is never re-routed.
            assert client.post("/v2/models/digits/versions/2/infer", json=BODY).json()["model_version"] == "2"
            # The gRPC channel follows the same split (same data plane).
            c = tgrpc.InferenceServerClient(server.grpc_url)
            x = tgrpc.InferInput("pixels", [1, 1, 8, 8], "FP32")
            x.set_data_from_numpy(PIXELS)
            grpc_versions = Counter(c.infer("digits", [x]).get_response().model_version for _ in range(100))
            assert grpc_versions["1"] > 50 and grpc_versions["2"] > 3, grpc_versions

            # Move all traffic to v2 and mirror every request to v1: no restart.
            write_config(repo_root, {"weights": {"2": 1}, "shadow": {"version": 1, "fraction": 1.0}})
            deadline = time.monotonic() + 10
            # 20 answers in a row from v2: under the old 80/20 split that happens by chance with
            # p = 1e-14 (5 in a row, p = 3e-4 per try, once passed for the switch on a slow machine).
            while versions(client, 20) != Counter({"2": 20}):
                assert time.monotonic() < deadline, "the new split was not picked up"
                time.sleep(0.2)
            before = shadow_counts(server).get("agree", 0)
            assert versions(client, 40) == Counter({"2": 40})  # the shadow never answers
            time.sleep(0.5)
            after = shadow_counts(server)
            # v1 (torch.export) and v2 (ONNX) hold the same weights: their answers agree.
            assert after.get("agree", 0) - before >= 40 and after.get("disagree", 0) == 0, after

            # A broken config keeps the last good routing; a version that is not loaded is skipped.
            write_config(repo_root, {"weights": {"1": 1}})
            deadline = time.monotonic() + 10
            while versions(client, 5) != Counter({"1": 5}):
                assert time.monotonic() < deadline, "the new split was not picked up"
                time.sleep(0.2)
            (repo_root / "digits" / "config.json").write_text("{not json")
            time.sleep(1.2)
            assert versions(client, 10) == Counter({"1": 10})  # not the latest (2): the last good split
            write_config(repo_root, {"weights": {"7": 1}})
            time.sleep(1.2)
            assert versions(client, 10) == Counter({"2": 10})  # v7 does not exist: latest ready answers
    finally:
        assert server.stop() == 0, server.output()


def test_int8_shadow_agrees_when_the_classes_agree(repo_root: Path) -> None:
    """The comparison is task-aware (shipyard.tasks): an int8 shadow of the fp32 primary gives
    other numbers, but the same classes, so it agrees; raw outputs would all 'disagree'."""
    import numpy as np

    from shipyard.optimize.runner import optimize

    made = optimize(repo_root, "digits:2", preset_name="int8-static", threads=1, latency_budget_s=0.05)
    assert made.manifest.version == 3 and made.manifest.task == "multiclass"
    write_config(repo_root, {"weights": {"2": 1}, "shadow": {"version": 3, "fraction": 1.0}})
    server = ServerProcess(repo_root, "--models", "digits")
    pixels = digits_test()[0][:30]
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            def logits(version: int, x: np.ndarray) -> np.ndarray:
                body = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 1, 8, 8],
                                    "data": x.ravel().tolist()}]}
                r = client.post(f"/v2/models/digits/versions/{version}/infer", json=body).json()
                return np.asarray(r["outputs"][0]["data"], dtype=np.float32)

            same = [int(logits(2, x).argmax() == logits(3, x).argmax()) for x in pixels]
            raw = [bool(np.allclose(logits(2, x), logits(3, x), rtol=1e-3, atol=1e-4)) for x in pixels]
            assert not any(raw)  # int8 changes the numbers
            before = shadow_counts(server)
            for x in pixels:
                body = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": x.ravel().tolist()}]}
                assert client.post("/v2/models/digits/infer", json=body).json()["model_version"] == "2"
            deadline = time.monotonic() + 10
            while sum(shadow_counts(server).values()) - sum(before.values()) < len(pixels):
                assert time.monotonic() < deadline, "the shadow comparisons were not counted"
                time.sleep(0.2)
            after = shadow_counts(server)
            assert after.get("agree", 0) - before.get("agree", 0) == sum(same) >= 25, (after, same)
            assert after.get("disagree", 0) - before.get("disagree", 0) == len(pixels) - sum(same)
    finally:
        assert server.stop() == 0, server.output()

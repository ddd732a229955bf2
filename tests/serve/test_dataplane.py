"""The serving core in-process: a real ModelManager over a repository of tiny ONNX models and the
DataPlane on it, called directly (no server process), and the V2 REST channel on it through
Starlette's in-process test client."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from starlette.testclient import TestClient

from shipyard.config import Settings
from shipyard.errors import InvalidInput, NotFound, Unavailable
from shipyard.repository import Repository
from shipyard.runtimes.importer import import_model
from shipyard.serve.app import create_app
from shipyard.serve.dataplane import DataPlane
from shipyard.serve.manager import ModelManager
from shipyard.serve.types import InferRequest
from shipyard.tensors import Tensor
from tests.fixtures import identity_onnx


@pytest.fixture
def split_repo(tmp_path: Path) -> Repository:
    """'pair': v1 takes x FP32 [-1, 2], v2 takes x FP32 [-1, 3] (both identities), traffic split
    evenly between them; 'single': one version."""
    repo = Repository(tmp_path / "repo")
    for width in (2, 3):  # versions 1 and 2
        import_model(repo, identity_onnx(tmp_path / f"id{width}.onnx", onnx.TensorProto.FLOAT, ["batch", width]), "pair")
    import_model(repo, identity_onnx(tmp_path / "one.onnx", onnx.TensorProto.FLOAT, ["batch", 2]), "single")
    (repo.root / "pair" / "config.json").write_text(json.dumps(
        {"version_policy": "all", "routing": {"weights": {"1": 1, "2": 1}}}))
    return repo


def settings(repo: Repository) -> Settings:
    return Settings(repository=repo.root, grpc_port=0, threads=1)


def request(model: str, rows: int, width: int, version: int | None = None) -> InferRequest:
    x = np.arange(rows * width, dtype=np.float32).reshape(rows, width)
    return InferRequest(model=model, version=version, inputs=[Tensor("x", "FP32", [rows, width], x)])


def outcomes(plane: DataPlane) -> dict[tuple[str, str, str], float]:
    """(model, version, outcome) -> requests counted, on channel 'test'."""
    return {(s.labels["model"], s.labels["version"], s.labels["outcome"]): s.value
            for m in plane.metrics.requests.collect() for s in m.samples
            if s.name.endswith("_total") and s.labels["channel"] == "test"}


def test_the_plane_answers_and_counts_every_outcome_itself(split_repo: Repository) -> None:
    manager = ModelManager(split_repo, settings(split_repo))
    manager.load("single")
    plane = DataPlane(manager)

    async def go() -> None:
        _, answer = await plane.infer("test", "single", lambda: request("single", 3, 2))
        assert answer.version == 1 and answer.outputs[0].shape == [3, 2]
        np.testing.assert_array_equal(answer.outputs[0].data, request("single", 3, 2).inputs[0].data)
        with pytest.raises(InvalidInput, match=r"shape \[1, 5\]; the model expects \[-1, 2\]"):
            await plane.infer("test", "single", lambda: request("single", 1, 5))

        async def refused() -> InferRequest:
            raise InvalidInput("the channel could not decode it")

        with pytest.raises(InvalidInput, match="could not decode"):
            await plane.infer("test", "single", refused)
        with pytest.raises(NotFound, match="unknown model 'nope'"):
            await plane.infer("test", "nope", lambda: request("nope", 1, 2))
        with pytest.raises(Unavailable, match="not loaded"):
            await plane.infer("test", "pair", lambda: request("pair", 1, 2))

    try:
        asyncio.run(go())
        assert outcomes(plane) == {
            ("single", "1", "success"): 1,
            ("single", "", "invalid"): 2,  # a bad shape, and a request refused while decoding
            ("_other", "", "not_found"): 1,  # names of models not loaded never become labels
            ("_other", "", "unavailable"): 1,
        }
    finally:
        manager.close()
        plane.close()


def test_repository_load_unload_and_index_live_on_the_plane(split_repo: Repository) -> None:
    manager = ModelManager(split_repo, settings(split_repo))
    plane = DataPlane(manager)

    async def go() -> None:
        assert {r["state"] for r in plane.repository_index(None)} == {"UNAVAILABLE"}
        await plane.load("pair")
        assert [r for r in plane.repository_index(None, ready_only=True)] == [
            {"name": "pair", "version": "1", "state": "READY", "reason": ""},
            {"name": "pair", "version": "2", "state": "READY", "reason": ""}]
        assert [s.version for s in plane.version_status("pair", None)] == [2, 1]
        await plane.unload("pair")
        with pytest.raises(NotFound, match="not loaded"):
            await plane.unload("pair")
        (split_repo.path("single", 1) / "model.onnx").write_bytes(b"tampered")
        with pytest.raises(InvalidInput, match="failed to load 'single': version 1: "):
            await plane.load("single")

    try:
        asyncio.run(go())
    finally:
        manager.close()
        plane.close()


def test_a_raw_body_is_answered_by_the_version_whose_signature_decoded_it(split_repo: Repository) -> None:
    """A raw binary body is typed by the signature, so the channel resolves the version first.
    Under a traffic split, deciding again when the request runs could pick the other version:
    6 floats are 3 rows for v1 and 2 rows for v2, and v1 refuses rows of 3."""
    body = np.arange(6, dtype=np.float32).tobytes()
    seen: Counter[str] = Counter()
    with TestClient(create_app(settings(split_repo), ["pair"])) as client:
        for _ in range(40):
            r = client.post("/v2/models/pair/infer", content=body,
                            headers={"Inference-Header-Content-Length": "0"})
            assert r.status_code == 200, r.text
            head = json.loads(r.content[: int(r.headers["inference-header-content-length"])])
            version = head["model_version"]
            assert head["outputs"][0]["shape"] == ([3, 2] if version == "1" else [2, 3])
            seen[version] += 1
    assert seen["1"] and seen["2"], seen  # both versions answered: the split was in play (p = 2e-12 otherwise)


def test_only_known_models_enter_the_routing_cache(split_repo: Repository) -> None:
    """Every name a client sends used to get a cache entry before it was checked, and none was
    ever dropped: unique unknown names grew the server without bound."""
    manager = ModelManager(split_repo, settings(split_repo))
    manager.load("pair")
    plane = DataPlane(manager)

    async def go() -> None:
        for i in range(50):
            with pytest.raises(NotFound):
                await plane.infer("test", f"nope-{i}", lambda i=i: request(f"nope-{i}", 1, 2))  # type: ignore[misc]
        with pytest.raises(InvalidInput, match="not allowed"):  # the name is checked before any path is read
            await plane.infer("test", "pair\0", lambda: request("pair\0", 1, 2))
        with pytest.raises(Unavailable, match="not loaded"):
            await plane.infer("test", "single", lambda: request("single", 1, 2))
        with contextlib.suppress(InvalidInput):  # the split may pick v2, which takes rows of 3
            await plane.infer("test", "pair", lambda: request("pair", 1, 2))

    try:
        asyncio.run(go())
        assert set(plane.router._cache) == {"pair"}
    finally:
        manager.close()
        plane.close()

"""The Keras model of issue 14 through shipyard's passes once imported (as ONNX, by tf2onnx):
clipped at 0.01, quantized to int8 with labels, distilled into a smaller student, each measured
as a binary task whose accuracy, AUC and BCE are checked against a plain numpy computation of the
same outputs."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from shipyard.optimize import optimize
from shipyard.optimize.sources import import_model
from shipyard.repository import Manifest, Repository
from shipyard.runtimes import RuntimeOptions, runtime_for
from tests.byom.conftest import binary_mlp

FAST = {"threads": 1, "latency_budget_s": 0.05}


@pytest.fixture(scope="module")
def keras_repo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The Keras MLP fitted for a few epochs to a synthetic binary task (the sign of a fixed
    projection), saved as .keras and imported; eval and train files with labels."""
    base = tmp_path_factory.mktemp("keras-passes")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1200, 100)).astype(np.float32)
    y = (x @ rng.standard_normal(100).astype(np.float32) > 0).astype(np.int64)
    model = binary_mlp()
    model.compile("adam", "binary_crossentropy")  # type: ignore[attr-defined]
    model.fit(x[:800], y[:800], epochs=12, batch_size=64, verbose=0)  # type: ignore[attr-defined]
    model.save(base / "binary.keras")  # type: ignore[attr-defined]
    repo = Repository(base / "repo")
    m = import_model(repo, base / "binary.keras", "mlp")
    np.savez(base / "eval.npz", features=x[800:], labels=y[800:])
    np.savez(base / "train.npz", features=x[:800], labels=y[:800])
    return {"repo": repo, "m": m, "x": x[800:], "y": y[800:], "eval": str(base / "eval.npz"),
            "train": str(base / "train.npz")}


def outputs(repo: Repository, m: Manifest, x: np.ndarray) -> np.ndarray:
    rt = runtime_for(m, repo.path(m.name, m.version), RuntimeOptions(threads=1))
    rt.load()
    try:
        name, out = m.signature.inputs[0].name, m.signature.outputs[0].name
        return np.asarray(rt.infer({name: x}, [out])[out])
    finally:
        rt.unload()


def by_hand(p: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Accuracy at 0.5, AUC over every positive-negative pair (ties half), mean BCE."""
    p = p.reshape(-1).astype(np.float64)
    pos, neg = p[y == 1], p[y == 0]
    auc = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg))
    q = np.clip(p, 1e-7, 1 - 1e-7)
    return {"accuracy": float(((p >= 0.5) == (y == 1)).mean()), "auc": float(auc),
            "loss": float(-(y * np.log(q) + (1 - y) * np.log(1 - q)).mean())}


def check_rows(repo: Repository, report: dict[str, Any], x: np.ndarray, y: np.ndarray) -> None:
    assert report["facts"]["task"]["name"] == "binary"
    for row in report["rows"]:
        m = repo.manifest("mlp", row["version"])
        hand = by_hand(outputs(repo, m, x), y)
        for k in ("accuracy", "auc", "loss"):
            assert row["metrics"][k] == pytest.approx(hand[k], abs=1e-6), (row["role"], k)


def test_the_imported_keras_model_is_a_binary_task_that_learned(keras_repo: dict[str, Any]) -> None:
    assert keras_repo["m"].task == "binary"
    hand = by_hand(outputs(keras_repo["repo"], keras_repo["m"], keras_repo["x"]), keras_repo["y"])
    assert hand["accuracy"] > 0.8, hand


def test_clip_at_0_01(keras_repo: dict[str, Any]) -> None:
    repo = keras_repo["repo"]
    result = optimize(repo.root, "mlp:1", recipe=[{"pass": "clip", "threshold": 0.01}],
                      eval_data=keras_repo["eval"], **FAST)
    check_rows(repo, result.report, keras_repo["x"], keras_repo["y"])
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(repo.path("mlp", result.manifest.version) / "model.onnx")).graph
    weights = [numpy_helper.to_array(t) for t in graph.initializer if numpy_helper.to_array(t).ndim == 2]
    assert len(weights) == 4 and all(float(np.abs(w).max()) <= 0.01 + 1e-7 for w in weights)


def test_int8_with_labels(keras_repo: dict[str, Any]) -> None:
    repo = keras_repo["repo"]
    # int8-static: fixed activation scales, so outputs do not depend on how rows are batched and
    # the hand computation below sees exactly what the measurement saw
    result = optimize(repo.root, "mlp:1", preset_name="int8-static", eval_data=keras_repo["eval"],
                      calibrate=keras_repo["train"], **FAST)
    check_rows(repo, result.report, keras_repo["x"], keras_repo["y"])
    parent, new = result.report["rows"][0]["metrics"], result.report["rows"][-1]["metrics"]
    assert new["size_bytes"] < parent["size_bytes"]
    assert abs(new["accuracy"] - parent["accuracy"]) < 0.05  # int8 of a small MLP keeps its decisions


def test_distilled_into_a_smaller_student(keras_repo: dict[str, Any]) -> None:
    repo = keras_repo["repo"]
    result = optimize(repo.root, "mlp:1", recipe=[{"pass": "distill", "width": 0.5, "epochs": 3}],
                      eval_data=keras_repo["eval"], train=keras_repo["train"], **FAST)
    check_rows(repo, result.report, keras_repo["x"], keras_repo["y"])
    parent, new = result.report["rows"][0]["metrics"], result.report["rows"][-1]["metrics"]
    assert new["parameters"] < parent["parameters"]
    assert new["accuracy"] > 0.6  # the student learned the task, on the binary loss

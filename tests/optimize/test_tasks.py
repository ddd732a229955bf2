"""Task-aware evaluation (shipyard.tasks): a one-unit sigmoid model through int8-dynamic and
distill with binary metrics equal to a hand computation, a regression nn.Linear(10, 10) with
MSE/MAE/R², a user metric from a module, `--task` overriding an inferred task, agreement of a copy
and of a perturbed student, shadow agreement, and the per-layer sensitivity."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from shipyard import tasks
from shipyard.errors import InvalidInput
from shipyard.optimize.runner import optimize
from shipyard.repository import Manifest, Repository
from shipyard.runtimes import RuntimeOptions, runtime_for
from shipyard.runtimes.importer import import_model

from .conftest import FAST


def _save(module: nn.Module, features: int, path: Path) -> Path:
    x = torch.randn(4, features)
    dyn = torch.export.Dim("batch", min=1, max=1 << 16)
    program = torch.export.export(module.eval(), (x,), dynamic_shapes=({0: dyn},))
    torch.export.save(program, str(path))
    return path


def _npz(path: Path, manifest: Manifest, x: np.ndarray, labels: np.ndarray | None) -> Path:
    arrays: dict[str, Any] = {manifest.signature.inputs[0].name: x.astype(np.float32)}
    if labels is not None:
        arrays["labels"] = labels
    np.savez(path, **arrays)
    return path


def _outputs(repo: Repository, m: Manifest, x: np.ndarray) -> np.ndarray:
    rt = runtime_for(m, repo.path(m.name, m.version), RuntimeOptions(threads=1))
    rt.load()
    try:
        name, out = m.signature.inputs[0].name, m.signature.outputs[0].name
        return np.asarray(rt.infer({name: x.astype(np.float32)}, [out])[out])
    finally:
        rt.unload()


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Dense(32, relu) -> Dense(16, relu) -> Dense(1, sigmoid) on 20 features, trained a little."""
    d = tmp_path_factory.mktemp("binary")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((600, 20)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] - 0.3 * x[:, 2] > 0).astype(np.int64)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 1), nn.Sigmoid())
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    xt, yt = torch.from_numpy(x[:400]), torch.from_numpy(y[:400]).float()[:, None]
    for _ in range(60):
        opt.zero_grad()
        nn.functional.binary_cross_entropy(model(xt), yt).backward()
        opt.step()
    repo = Repository(d / "repo")
    m = import_model(repo, _save(model, 20, d / "binary.pt2"), "binary")
    return {"repo": repo, "m": m, "x": x, "y": y,
            "eval": _npz(d / "eval.npz", m, x[400:], y[400:]),
            "eval_nolabels": _npz(d / "eval_nl.npz", m, x[400:], None),
            "train": _npz(d / "train.npz", m, x[:400], y[:400]),
            "train_nolabels": _npz(d / "train_nl.npz", m, x[:400], None)}


def _hand_binary(p: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Accuracy, AUC (every positive-negative pair, ties half) and BCE, the slow and plain way."""
    p = p.reshape(-1).astype(np.float64)
    pos, neg = p[y == 1], p[y == 0]
    pairs = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    q = np.clip(p, 1e-7, 1 - 1e-7)
    return {"accuracy": float(((p >= 0.5) == (y == 1)).mean()), "auc": float(pairs / (len(pos) * len(neg))),
            "loss": float(-(y * np.log(q) + (1 - y) * np.log(1 - q)).mean())}


def test_binary_int8_dynamic_with_labels_matches_a_hand_computation(binary: dict[str, Any]) -> None:
    assert binary["m"].task == "binary"  # the program ends in a sigmoid over one unit: stored on import
    result = optimize(binary["repo"].root, "binary:1", preset_name="int8-dynamic", eval_data=binary["eval"], **FAST)
    assert result.report["facts"]["task"]["name"] == "binary"
    assert result.manifest.task == "binary"
    x, y = binary["x"][400:], binary["y"][400:]
    for row in result.report["rows"]:
        m = binary["repo"].manifest("binary", row["version"])
        hand = _hand_binary(_outputs(binary["repo"], m, x), y)
        for k in ("accuracy", "auc", "loss"):
            assert row["metrics"][k] == pytest.approx(hand[k], abs=1e-6), (row["role"], k)
    assert 0.8 < result.report["rows"][0]["metrics"]["accuracy"] <= 1.0  # it learned something
    assert result.report["deltas"]["vs_parent"]["loss"] == pytest.approx(
        result.report["rows"][-1]["metrics"]["loss"] - result.report["rows"][0]["metrics"]["loss"])


def test_binary_distill_with_and_without_labels(binary: dict[str, Any]) -> None:
    recipe = [{"pass": "distill", "width": 0.25, "epochs": 2, "init": "random"}]
    labelled = optimize(binary["repo"].root, "binary:1", recipe=recipe, eval_data=binary["eval"],
                        train=binary["train"], **FAST)
    new = labelled.report["rows"][-1]["metrics"]
    m = binary["repo"].manifest("binary", labelled.manifest.version)
    hand = _hand_binary(_outputs(binary["repo"], m, binary["x"][400:]), binary["y"][400:])
    assert new["accuracy"] == pytest.approx(hand["accuracy"]) and new["loss"] == pytest.approx(hand["loss"], abs=1e-6)

    # Without labels: accuracy is agreement with the teacher's side of the threshold, and ΔL is the
    # BCE against the teacher's outputs, so a student that differs is not "100%, ΔL 0".
    free = optimize(binary["repo"].root, "binary:1", recipe=recipe, eval_data=binary["eval_nolabels"],
                    train=binary["train_nolabels"], **FAST)
    parent, student = free.report["rows"][0]["metrics"], free.report["rows"][-1]["metrics"]
    assert parent["accuracy"] == 1.0 and student["accuracy"] == student["agreement"]
    p_t = _outputs(binary["repo"], binary["m"], binary["x"][400:])
    p_s = _outputs(binary["repo"], free.manifest, binary["x"][400:])
    assert student["agreement"] == pytest.approx(float(((p_t >= 0.5) == (p_s >= 0.5)).mean()))
    assert free.report["deltas"]["vs_parent"]["loss"] > 0  # KL of the student from the teacher


@pytest.fixture(scope="module")
def regression(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """nn.Linear(10, 10) trained with SGD on MSE to a random linear map plus noise."""
    d = tmp_path_factory.mktemp("regression")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((500, 10)).astype(np.float32)
    w = rng.standard_normal((10, 10)).astype(np.float32)
    y = (x @ w + 0.1 * rng.standard_normal((500, 10))).astype(np.float32)
    torch.manual_seed(0)
    model = nn.Linear(10, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        nn.functional.mse_loss(model(torch.from_numpy(x[:400])), torch.from_numpy(y[:400])).backward()
        opt.step()
    repo = Repository(d / "repo")
    m = import_model(repo, _save(model, 10, d / "lin.pt2"), "lin")
    return {"repo": repo, "m": m, "x": x, "y": y, "eval": _npz(d / "eval.npz", m, x[400:], y[400:])}


def test_regression_gets_mse_mae_r2(regression: dict[str, Any]) -> None:
    result = optimize(regression["repo"].root, "lin:1", preset_name="int8-dynamic", eval_data=regression["eval"], **FAST)
    assert result.report["facts"]["task"]["name"] == "regression"
    x, y = regression["x"][400:], regression["y"][400:].astype(np.float64)
    for row in result.report["rows"]:
        o = _outputs(regression["repo"], regression["repo"].manifest("lin", row["version"]), x).astype(np.float64)
        mt = row["metrics"]
        assert "accuracy" not in mt and "top5" not in mt
        assert mt["mse"] == pytest.approx(((o - y) ** 2).mean()) and mt["loss"] == pytest.approx(mt["mse"])
        assert mt["mae"] == pytest.approx(np.abs(o - y).mean())
        r2 = 1 - ((y - o) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0)
        assert mt["r2"] == pytest.approx(r2.mean())
    assert result.report["rows"][0]["metrics"]["r2"] > 0.9


def test_user_metric_from_a_module(regression: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "usermetrics"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "scores.py").write_text("import numpy as np\n\ndef within(outputs, labels):\n"
                                   "    return float((np.abs(outputs - labels) < 0.5).mean())\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    result = optimize(regression["repo"].root, "lin:1", preset_name="int8-dynamic", eval_data=regression["eval"],
                      metric="usermetrics.scores:within", **FAST)
    o = _outputs(regression["repo"], result.manifest, regression["x"][400:])
    assert result.report["rows"][-1]["metrics"]["metric"] == pytest.approx(
        float((np.abs(o - regression["y"][400:]) < 0.5).mean()))
    assert result.report["facts"]["task"]["metric"] == "within"
    assert "usermetrics.scores" in sys.modules

    from shipyard.optimize.search import Candidate, search

    seen: list[Any] = []
    cands = [Candidate("int8-dynamic", [{"pass": "export", "format": "onnx"}, {"pass": "quantize", "mode": "dynamic"}])]
    search(regression["repo"].root, "lin:1", max_accuracy_drop=50, candidate_list=cands, eval_data=regression["eval"],
           metric=lambda outputs, labels: -float(((outputs - labels) ** 2).mean()), on_searched=seen.append, **FAST)
    assert seen[0].score == "metric" and "metric" in seen[0].parent
    c = seen[0].tried[0]
    assert c.drop == pytest.approx(100 * (seen[0].parent["metric"] - c.metrics["metric"]))


def test_task_overrides_the_inferred_one(binary: dict[str, Any], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from shipyard.cli.main import app

    assert tasks.infer(binary["m"].signature, binary["y"], None)[0] == "binary"
    result = optimize(binary["repo"].root, "binary:1", preset_name="int8-dynamic",
                      eval_data=binary["eval_nolabels"], task="regression", **FAST)
    assert result.report["facts"]["task"] == {"name": "regression", "why": "given (--task)", "score": "agreement"}
    assert "mse" not in result.report["rows"][0]["metrics"] and "agreement" in result.report["rows"][0]["metrics"]
    # stored on import, then read from the manifest; --task on the command line wins over it
    src = binary["repo"].path("binary", 1) / binary["m"].files[0].path
    run = CliRunner().invoke(app, ["models", "import", str(src), "--name", "binary", "--task", "regression",
                                   "--repository", str(binary["repo"].root), "--json"])
    assert run.exit_code == 0, run.output
    imported = binary["repo"].manifest("binary", None)
    assert imported.task == "regression"
    run = CliRunner().invoke(app, ["optimize", f"binary:{imported.version}", "--preset", "int8-dynamic",
                                   "--eval", str(binary["eval"]), "--task", "binary", "--threads", "1",
                                   "--latency-budget", "0.05", "--repository", str(binary["repo"].root), "--json"])
    assert run.exit_code == 0, run.output
    assert '"name": "binary"' in run.output and '"auc"' in run.output
    with pytest.raises(InvalidInput, match="unknown task 'cats'"):
        optimize(binary["repo"].root, "binary:1", preset_name="int8-dynamic", eval_data=binary["eval"], task="cats")


@pytest.mark.parametrize("name", tasks.TASKS)
def test_a_copy_agrees_fully_and_a_perturbed_student_does_not(name: str) -> None:
    rng = np.random.default_rng(2)
    shape = {"binary": (200, 1), "language-modelling": (20, 10, 7)}.get(name, (200, 8))
    parent = rng.standard_normal(shape).astype(np.float32)
    task = tasks.get(name)
    assert task.agree(parent.copy(), parent).all()
    assert task.evaluate(parent.copy(), None, parent)["agreement"] == 1.0
    student = parent.copy()
    student[: len(parent) // 2] += rng.standard_normal(student[: len(parent) // 2].shape).astype(np.float32) * 0.7
    assert 0 < task.evaluate(student, None, parent)["agreement"] < 1.0
    # ΔL against the parent's outputs: the copy's loss is the parent's, the student's is higher
    assert task.loss(student, parent, soft=True) > task.loss(parent.copy(), parent, soft=True)


def test_shadow_agreement_is_task_aware() -> None:
    from shipyard.serve.dataplane import _agree, _task_of

    rng = np.random.default_rng(3)
    fp32 = rng.standard_normal((16, 10)).astype(np.float32)
    int8 = fp32 * 1.02 + 0.003  # what int8 does to logits: new figures, the same classes
    assert (fp32.argmax(1) == int8.argmax(1)).all()
    assert not _agree(int8, fp32, 1e-3, 1e-4)  # raw outputs: "disagree"
    assert _agree(int8, fp32, 1e-3, 1e-4, tasks.get("multiclass"))
    flipped = fp32.copy()
    flipped[0] = -flipped[0]
    assert not _agree(flipped, fp32, 1e-3, 1e-4, tasks.get("multiclass"))

    class M:  # the two fields _task_of reads
        def __init__(self, task: str | None, units: int) -> None:
            from shipyard.repository import Signature, TensorSpec

            self.task = task
            self.signature = Signature(inputs=[TensorSpec(name="x", datatype="FP32", shape=[-1, 4])],
                                       outputs=[TensorSpec(name="y", datatype="FP32", shape=[-1, units])])

    assert _task_of(M("regression", 10), M(None, 10), {"y": fp32}).name == "regression"
    assert _task_of(M(None, 10), M(None, 10), {"y": fp32}).name == "multiclass"
    probs = 1 / (1 + np.exp(-fp32[:, :1]))
    assert _task_of(M(None, 1), None, {"y": probs}).name == "binary"
    assert _agree(np.clip(probs + 0.001, 0, 1), probs, 1e-6, 1e-6, tasks.get("binary"))


def test_sensitivity_lists_layers_and_the_criterion(binary: dict[str, Any]) -> None:
    result = optimize(binary["repo"].root, "binary:1", preset_name="int8-dynamic", eval_data=binary["eval"], **FAST)
    sens = result.report["facts"]["sensitivity"]
    assert sens["criterion"] == "l1" and sens["changes"] == ["quantize"] and sens["task"] == "binary"
    assert [r["layer"] for r in sens["layers"]] and len(sens["layers"]) == sens["total"] == 3  # three Linear layers
    assert all(isinstance(r["quantize"], float) for r in sens["layers"])
    pruned = optimize(binary["repo"].root, "binary:1", recipe=[{"pass": "prune-structured", "amount": 0.5}],
                      eval_data=binary["eval"], importance="l2", **FAST)
    sens = pruned.report["facts"]["sensitivity"]
    assert sens["criterion"] == "l2" and sens["prune_amount"] == 0.5
    assert any(r["prune"] > 0 for r in sens["layers"])  # zeroing half a layer's channels costs something
    assert pruned.report["recipe"][0]["importance"] == "l2"
    assert any("L2 magnitude" in n for n in pruned.report["notes"])


def test_sensitivity_helpers_l1_and_l2_differ_and_onnx_layers_are_named(binary: dict[str, Any], tmp_path: Path) -> None:
    from shipyard.optimize.sensitivity import MAX_LAYERS, onnx_sensitivity, prune_weight

    w = np.array([[3.0, 0.0, 0.0], [1.5, 1.5, 1.5], [1.0, 1.0, 0.5]], dtype=np.float32)
    # L1 norms 3, 4.5, 2.5; L2 norms 3, 2.6, 1.5: the channel that goes at 1/3 differs
    assert (prune_weight(w, 1 / 3, "l1")[2] == 0).all() and (prune_weight(w, 2 / 3, "l1")[0] == 0).all()
    assert (prune_weight(w, 2 / 3, "l2")[1] == 0).all() and prune_weight(w, 2 / 3, "l2")[0].any()
    onnx_v = optimize(binary["repo"].root, "binary:1", recipe=[{"pass": "export", "format": "onnx"}],
                      eval_data=binary["eval"], **FAST)
    from shipyard.optimize.data import load_data

    path = next(binary["repo"].path("binary", onnx_v.manifest.version).glob("*.onnx"))
    data = load_data(binary["eval"])
    assert data is not None
    sens = onnx_sensitivity(path, tasks.get("binary"), data, {"quantize": 0.0, "prune": 0.5}, "l1")
    assert sens["total"] == 3 <= MAX_LAYERS and all("quantize" in r and "prune" in r for r in sens["layers"])


def test_recipe_task_and_onnx_activation_on_import(binary: dict[str, Any], tmp_path: Path) -> None:
    recipe = {"task": "regression", "passes": [{"pass": "export", "format": "onnx"}]}
    result = optimize(binary["repo"].root, "binary:1", recipe=recipe, eval_data=binary["eval"], **FAST)
    assert result.manifest.task == "regression" and "mse" in result.report["rows"][-1]["metrics"]
    with pytest.raises(InvalidInput, match="unknown task 'dogs'"):
        optimize(binary["repo"].root, "binary:1", recipe={**recipe, "task": "dogs"}, eval_data=binary["eval"], **FAST)
    # An ONNX file whose output comes out of a Sigmoid is stored as binary on import.
    onnx_file = next(binary["repo"].path("binary", result.manifest.version).glob("*.onnx"))
    assert import_model(binary["repo"], onnx_file, "binary-onnx").task == "binary"


def test_multiclass_probabilities_and_logits_give_the_same_loss() -> None:
    rng = np.random.default_rng(4)
    logits = rng.standard_normal((50, 6))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = rng.integers(0, 6, 50)
    task = tasks.get("multiclass")
    hand = float(-np.log(probs[np.arange(50), y]).mean())
    assert task.loss(logits, y, soft=False) == pytest.approx(hand)
    assert task.loss(probs, y, soft=False) == pytest.approx(hand)
    assert task.evaluate(probs, y)["accuracy"] == pytest.approx(float((probs.argmax(1) == y).mean()))
    assert tasks.infer(_sig(6), y, None)[0] == "multiclass"
    assert tasks.infer(_sig(6), (rng.random((50, 6)) > 0.5).astype(np.int64), logits)[0] == "multilabel"
    assert tasks.infer(_sig(6), rng.standard_normal((50, 6)), logits)[0] == "regression"
    assert tasks.infer(_sig(1), None, rng.standard_normal((50, 1)) * 5)[0] == "regression"
    assert tasks.infer(_sig(1), None, rng.random((50, 1)))[0] == "binary"  # one unit in [0, 1]: a sigmoid


def _sig(units: int) -> Any:
    from shipyard.repository import Signature, TensorSpec

    return Signature(inputs=[TensorSpec(name="x", datatype="FP32", shape=[-1, 4])],
                     outputs=[TensorSpec(name="y", datatype="FP32", shape=[-1, units])])


def test_listing_shows_each_task_s_headline() -> None:
    assert tasks.headline("multiclass", {"accuracy": 0.9712}) == "97.12%"
    assert tasks.headline("regression", {"r2": 0.93123, "mse": 0.1}) == "R² 0.9312"
    assert tasks.headline("binary", {"accuracy": 0.5}) == "50.00%"  # no AUC measured: the accuracy
    assert tasks.headline(None, {}) is None

"""A TorchScript file (`torch.jit.save`) as a source: converted once to ONNX, checked, then
optimized like any ONNX version (clip, int8). A regression model (nn.Linear(10, 10) fitted with
SGD on MSE); the metrics asserted are those the report gives today (size, ΔL, parity)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from shipyard.optimize.data import Dataset
from shipyard.optimize.runner import optimize
from shipyard.repository import Repository
from shipyard.runtimes.importer import import_model, parse_tensor_spec
from tests.optimize.conftest import FAST


@pytest.fixture(scope="module")
def regression(tmp_path_factory: pytest.TempPathFactory) -> tuple[Repository, nn.Module]:
    base = tmp_path_factory.mktemp("ts")
    torch.manual_seed(0)
    target = torch.randn(10, 10)
    x = torch.randn(256, 10)
    y = x @ target.T
    model = nn.Linear(10, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(500):
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 1e-2  # fitted
    model.eval()
    torch.jit.save(torch.jit.script(model), str(base / "reg.pt"))
    repo = Repository(base / "repo")
    import_model(repo, base / "reg.pt", "reg", inputs=[parse_tensor_spec("x:FP32:-1,10")],
                 outputs=[parse_tensor_spec("y:FP32:-1,10")])
    assert repo.manifest("reg", 1).format == "torchscript"
    return repo, model


EVAL = Dataset({"x": np.random.default_rng(1).standard_normal((64, 10)).astype(np.float32)}, None, "reg-eval")


def _outputs(folder: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(["y"], {"x": x})[0])


@pytest.mark.parametrize("recipe", [[{"pass": "clip", "percentile": 95.0}],
                                    [{"pass": "quantize", "mode": "dynamic"}]], ids=["clip", "int8"])
def test_torchscript_version_takes_the_onnx_passes(regression: tuple[Repository, nn.Module],
                                                   recipe: list[dict[str, object]]) -> None:
    repo, model = regression
    result = optimize(repo.root, "reg:1", recipe=recipe, eval_data=EVAL, **FAST)
    report = result.report
    assert result.manifest.format == "onnx" and result.manifest.lineage.parent == 1
    new, parent = report["rows"][-1]["metrics"], report["rows"][0]["metrics"]
    assert new["size_bytes"] < parent["size_bytes"]  # an ONNX 10x10 layer is smaller than the TorchScript zip
    assert math.isfinite(report["deltas"]["vs_parent"]["loss"])
    # The optimized version computes what the fitted model does with the pass applied.
    x = EVAL.inputs["x"][:16]
    w, b = model.weight.detach().numpy(), model.bias.detach().numpy()
    got = _outputs(repo.path("reg", result.manifest.version), x)
    if recipe[0]["pass"] == "clip":
        t = np.percentile(np.abs(w), 95.0)
        assert 0 < report["facts"]["clip"]["weight"] <= 0.06  # ~5 of the 100 weights moved
        np.testing.assert_allclose(got, x @ np.clip(w, -t, t).T + b, atol=1e-4)
        assert np.abs(got - (x @ w.T + b)).max() > 1e-3  # and clipping did change the outputs
    else:
        expected = x @ w.T + b
        err = np.abs(got - expected).max()
        assert 0 < err < 0.05 * np.abs(expected).max(), err  # int8 weights: close, not equal


def test_torchscript_regression_is_reported_with_regression_metrics(regression: tuple[Repository, nn.Module]) -> None:
    """With its float targets as labels, the fitted nn.Linear is measured as a regression (MSE,
    MAE, R², checked here by hand), not with argmax accuracy and cross-entropy."""
    repo, model = regression
    x = EVAL.inputs["x"]
    w, b = model.weight.detach().numpy(), model.bias.detach().numpy()
    rng = np.random.default_rng(2)
    y = (x @ w.T + b + 0.01 * rng.standard_normal((len(x), 10))).astype(np.float32)
    result = optimize(repo.root, "reg:1", recipe=[{"pass": "quantize", "mode": "dynamic"}],
                      eval_data=Dataset({"x": x}, y, "reg-labelled"), **FAST)
    assert result.report["facts"]["task"]["name"] == "regression"
    parent = result.report["rows"][0]["metrics"]
    assert "accuracy" not in parent and parent["r2"] > 0.99
    o = x @ w.T + b  # the parent computes the fitted map
    assert parent["mse"] == pytest.approx(float(((o - y) ** 2).mean()), rel=1e-3)
    assert parent["mae"] == pytest.approx(float(np.abs(o - y).mean()), rel=1e-3)
    assert result.report["deltas"]["vs_parent"]["loss"] >= 0  # int8 weights add error to the MSE

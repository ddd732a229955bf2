"""`--auto` search (with the layer-by-layer fallback) and the `shipyard optimize` command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shipyard.errors import InvalidInput
from shipyard.optimize.data import Dataset
from shipyard.optimize.recipe import PRESETS, preset
from shipyard.optimize.runner import optimize
from shipyard.optimize.search import Candidate, candidates, search
from shipyard.repository import Repository
from tests.cli.test_cli import fails, shipyard
from tests.fixtures import digits_test
from tests.optimize.conftest import FAST


def test_search_picks_the_fastest_candidate_within_budget(digits_copy: Repository) -> None:
    cands = [Candidate("int8-static", [{"pass": "quantize", "mode": "static"}]),
             Candidate("fp16", [{"pass": "quantize", "mode": "fp16"}])]
    result, tried = search(digits_copy.root, "digits:2", max_accuracy_drop=1.0, objective="size",
                           candidate_list=cands, **FAST)
    assert [c.label for c in tried] == ["int8-static", "fp16"]
    fitting = [c for c in tried if c.fits(1.0)]
    best = min(fitting, key=lambda c: c.metrics["size_bytes"])
    assert best.label == "int8-static"  # int8 is about half the size of fp16
    assert result.manifest.lineage.recipe[0]["mode"] == "static"
    chosen = result.report["facts"]["search"]
    assert chosen["chosen"] == "int8-static" and len(chosen["candidates"]) == 2


def test_latency_search_times_its_finalists_again_side_by_side(digits_copy: Repository) -> None:
    cands = [Candidate("int8-dynamic", [{"pass": "quantize", "mode": "dynamic"}]),
             Candidate("int8-static", [{"pass": "quantize", "mode": "static"}]),
             Candidate("fp16", [{"pass": "quantize", "mode": "fp16"}])]
    result, tried = search(digits_copy.root, "digits:2", max_accuracy_drop=1.0, objective="latency",
                           candidate_list=cands, **FAST)
    fitting = [c for c in tried if c.fits(1.0)]
    assert len(fitting) >= 2 and all(c.retimed for c in fitting)  # 3 candidates: all are finalists
    best = min(fitting, key=lambda c: c.metrics["latency_b1_p50_ms"])  # chosen on the side-by-side figures
    assert result.report["facts"]["search"]["chosen"] == best.label
    recorded = {r["candidate"]: r["retimed"] for r in result.report["facts"]["search"]["candidates"]}
    assert all(recorded[c.label] for c in fitting)


def test_fallback_keeps_the_most_harmful_layers_in_fp32(digits_copy: Repository) -> None:
    # Calibrating on blank images gives activation ranges that clip every real digit: accuracy
    # collapses, and only putting layers back in fp32 can bring it within budget.
    x, _ = digits_test()
    blank = Dataset({"pixels": np.zeros_like(x[:16])}, None, "blank")
    cands = [Candidate("int8-static", [{"pass": "quantize", "mode": "static", "per_channel": False}])]
    seen: list[Candidate] = []
    # Here only all four layers in fp32 would fit, and that graph (fp32 weights plus the activations'
    # Q/DQ pairs) is larger than its fp32 parent: a version never grows, so nothing is published.
    with pytest.raises(InvalidInput, match="no candidate kept accuracy within 1.0 points"):
        search(digits_copy.root, "digits:2", max_accuracy_drop=1.0, candidate_list=cands, calibrate=blank,
               eval_data="zoo:digits", on_searched=lambda s: seen.extend(s.tried), **FAST)
    tried = seen
    assert tried[0].drop is not None and tried[0].drop > 1.0, tried[0]
    sensitivity = [c for c in tried if c.label.startswith("int8-static only ")]
    assert len(sensitivity) == 4  # one trial per weighted layer: only it quantized
    # fp32 layers are added in order of sensitivity: ΔL with only that layer quantized, largest first
    delta = {c.label.split(" only ", 1)[1]: c.metrics["loss"] for c in sensitivity}  # the parent's loss is common
    before = [c for c in tried if ", fp32: " in c.label]
    assert before and before[0].label.endswith("fp32: " + max(delta, key=lambda k: delta[k])), before[0].label
    assert all(not c.fits(1.0) for c in before)
    assert before[-1].error is not None and "larger than digits:2" in before[-1].error, before[-1]
    assert digits_copy.versions("digits") == [1, 2]


def test_search_that_cannot_fit_says_so(digits_copy: Repository) -> None:
    cands = [Candidate("prune-90", [{"pass": "prune-structured", "amount": 0.95}])]
    with pytest.raises(InvalidInput, match="no candidate kept accuracy within 0.5 points"):
        search(digits_copy.root, "digits:1", max_accuracy_drop=0.5, candidate_list=cands,
               eval_data="zoo:digits", **FAST)
    assert digits_copy.versions("digits") == [1, 2]


def test_callable_and_unlabelled_npz_data(digits_copy: Repository, tmp_path: Path) -> None:
    x, y = digits_test()
    result = optimize(digits_copy.root, "digits:2", preset_name="int8-static",
                      eval_data=lambda: ({"pixels": x}, y), calibrate=lambda: {"pixels": x[:32]}, **FAST)
    assert result.report["accuracy_is"] == "accuracy on labels"
    npz = tmp_path / "unlabelled.npz"
    np.savez(npz, pixels=x)
    result = optimize(digits_copy.root, "digits:2", preset_name="fp16", eval_data=str(npz), **FAST)
    assert result.report["accuracy_is"] == "agreement with v2's predictions"
    assert result.report["rows"][0]["metrics"]["accuracy"] == 1.0  # the parent agrees with itself


def test_cli_optimize_preset_recipe_and_errors(digits_copy: Repository, tmp_path: Path) -> None:
    root = digits_copy.root
    out = shipyard("optimize", "digits:2", "--preset", "int8-static", "--threads", "1",
                   "--latency-budget", "0.05", "-r", root)
    assert out.returncode == 0, out.stderr
    assert "published digits:3 (onnx)" in out.stdout and "b1 p50 ms" in out.stdout
    recipe = tmp_path / "r.yaml"
    recipe.write_text("- pass: prune-unstructured\n  amount: 0.8\n- pass: export\n")
    out = shipyard("optimize", "digits:1", "--recipe", recipe, "--threads", "1", "--latency-budget", "0.05",
                   "--json", "-r", root)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    new = report["rows"][-1]["metrics"]
    assert new["nonzero_parameters"] < 0.25 * new["parameters"]
    assert report["deltas"]["vs_parent"]["size_ratio"] < 0.5  # sparse initializers really shrink the file
    assert "fails" not in fails(shipyard("optimize", "digits:2", "-r", root))
    assert "unknown preset 'x'" in fails(shipyard("optimize", "digits:2", "--preset", "x", "-r", root))
    line = fails(shipyard("optimize", "digits:2", "--preset", "fp16", "--eval", "nope.npz", "-r", root))
    assert "--eval file nope.npz does not exist" in line
    shown = shipyard("models", "show", "digits:4", "-r", root)
    assert "prune-unstructured(amount=0.8)" in shown.stdout and "quantize(mode=static" in shown.stdout


def test_candidates_include_every_preset_and_smaller_models_plus_int8() -> None:
    cands = candidates("torch", True, "latency")
    by_steps = {json.dumps(c.steps, sort_keys=True): c.label for c in cands}
    for name in PRESETS:  # so the winner is measured against each preset in the same process
        steps = [c.record() for c in preset(name, "torch", True)]
        assert by_steps.get(json.dumps(steps, sort_keys=True)) == name, name
    labels = [c.label for c in cands]
    for combo in ("prune-structured-50 + int8-static", "prune-structured-50 + int8-dynamic",
                  "distill-half + int8-static", "distill-half + int8-dynamic"):
        assert combo in labels
    combo = next(c for c in cands if c.label == "distill-half + int8-static")
    assert [s["pass"] for s in combo.steps] == ["distill", "export", "quantize"]
    # Nothing to train on: no distillation. An ONNX source: only what works on ONNX.
    assert not any(s["pass"] == "distill" for c in candidates("torch", False, "latency") for s in c.steps)
    onnx = candidates("onnx", True, "size")  # an ONNX source: every pass but PyTorch's weight-only (issue 14)
    assert all(c.steps[0]["pass"] != "export" for c in onnx)
    assert {s["pass"] for c in onnx for s in c.steps} == {"quantize", "low-rank", "prune-structured", "distill", "export"}
    assert {"int8-static", "int8-dynamic", "fp16", "lowrank-90", "prune-structured-50 + int8-static",
            "distill-half + int8-dynamic"} <= {c.label for c in onnx}


def test_candidates_sharing_a_prefix_train_it_once(digits_copy: Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    import shipyard.train

    calls: list[Any] = []
    real = shipyard.train.fit

    def spy(config: Any, **kw: Any) -> Any:
        calls.append(config)
        return real(config, **kw)

    monkeypatch.setattr(shipyard.train, "fit", spy)
    student = [{"pass": "distill", "parameter_ratio": 0.25, "epochs": 1, "max_samples": 128}, {"pass": "export"}]
    cands = [Candidate("student", student),
             Candidate("student + int8-static", [*student, {"pass": "quantize", "mode": "static"}]),
             Candidate("student + int8-dynamic", [*student, {"pass": "quantize", "mode": "dynamic"}])]
    result, tried = search(digits_copy.root, "digits:1", max_accuracy_drop=100, candidate_list=cands, **FAST)
    assert all(c.error is None for c in tried), [c.error for c in tried]
    # One distillation for the three candidates, one more to publish the winner from the recipe.
    assert len(calls) == 2
    sizes = {c.label: c.metrics["size_bytes"] for c in tried}
    assert sizes["student + int8-static"] < 0.5 * sizes["student"]  # the int8 candidates really quantized
    assert result.manifest.lineage.recipe[0]["pass"] == "distill"

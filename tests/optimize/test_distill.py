"""The distill pass and the distill-half preset: a student trained from the teacher version with
shipyard.train, published with lineage; bad configs fail before anything is published."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from shipyard.errors import InvalidInput
from shipyard.optimize.runner import optimize
from shipyard.repository import Repository
from tests.optimize.conftest import FAST, token_data
from tests.optimize.test_presets import _run_published

# Stated bounds, the targets for a distilled digits student: at least 4x fewer parameters
# than the teacher, within 1.5 accuracy points (measured: 4.03x, half a point better than the teacher).
MAX_DROP = 0.015
MIN_RATIO = 4.0


def tiny_student() -> nn.Module:
    """A given student (factory) for the digits signature: [N, 1, 8, 8] -> 10 logits."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def test_distill_half_publishes_a_smaller_student(digits_copy: Repository) -> None:
    result = optimize(digits_copy.root, "digits:1", preset_name="distill-half", **FAST)
    m = result.manifest
    assert m.version == 3 and m.format == "onnx" and m.lineage.parent == 1
    assert [s["pass"] for s in m.lineage.recipe] == ["distill", "export"]
    assert m.lineage.recipe[0]["parameter_ratio"] == 0.25 and m.lineage.recipe[0]["student"] == "narrow"
    rows = {r["role"]: r["metrics"] for r in result.report["rows"]}
    assert rows["new"]["parameters"] * MIN_RATIO <= rows["parent"]["parameters"]
    assert rows["parent"]["accuracy"] - rows["new"]["accuracy"] <= MAX_DROP
    facts = result.report["facts"]["distill"]
    # Half of every layer leaves 3.9x fewer parameters (the input and the 10 classes cannot shrink),
    # so the width was lowered just enough: one channel more in the widest layer breaks the ratio.
    assert 0.45 < facts["width"] < 0.5
    assert facts["channels"]["features.0"] == [16, 8] and facts["channels"]["head.1"][1] < 64
    assert facts["parameters_teacher"] / facts["parameters_student"] >= MIN_RATIO
    assert any("parameter_ratio 0.25" in n for n in result.report["notes"])
    assert facts["history"][-1]["train_loss"] < facts["history"][0]["train_loss"]
    assert any("shipyard.train" in n for n in result.report["notes"])
    # The published ONNX file is the student: it really runs and scores what the report says.
    assert abs(_run_published(digits_copy, 3) - rows["new"]["accuracy"]) < 1e-9


def test_distill_trains_through_shipyard_train_fit(digits_copy: Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    import shipyard.train

    calls: list[dict[str, Any]] = []
    real = shipyard.train.fit

    def spy(config: Any, **kw: Any) -> Any:
        calls.append({"config": config, **kw})
        return real(config, **kw)

    monkeypatch.setattr(shipyard.train, "fit", spy)
    step = {"pass": "distill", "alpha": 0.3, "temperature": 4.0, "epochs": 2, "max_samples": 128}
    optimize(digits_copy.root, "digits:1", recipe=[step], **FAST)
    assert len(calls) == 1
    cfg = calls[0]["config"]
    assert cfg["distill"]["alpha"] == 0.3 and cfg["distill"]["temperature"] == 4.0 and cfg["epochs"] == 2
    assert len(calls[0]["data"]) == 128 and calls[0]["teacher"] is not None
    assert digits_copy.manifest("digits", 3).format == "torch-export"
    assert torch.are_deterministic_algorithms_enabled() is False  # fit's global setting was put back


def test_given_student_factory_learns_from_an_onnx_teacher(digits_copy: Repository) -> None:
    step = {"pass": "distill", "student": "tests.optimize.test_distill:tiny_student", "epochs": 3,
            "lr": 0.01, "alpha": 0.5}
    result = optimize(digits_copy.root, "digits:2", recipe=[step], **FAST)
    rows = {r["role"]: r["metrics"] for r in result.report["rows"]}
    assert rows["new"]["parameters"] == sum(p.numel() for p in tiny_student().parameters())
    assert rows["new"]["accuracy"] > 0.8  # far above the 10% of an untrained student
    assert result.manifest.lineage.recipe[0]["student"].endswith(":tiny_student")


def test_shallow_student_of_a_transformer(tiny_copy: Repository) -> None:
    step = {"pass": "distill", "student": "shallow", "layers": 1, "epochs": 1, "batch_size": 8}
    data = token_data(16, labels=True)
    result = optimize(tiny_copy.root, "bert:1", recipe=[step], eval_data=data, train=data, **FAST)
    facts = result.report["facts"]["distill"]
    assert facts["blocks"] == [2, 1]
    assert facts["parameters_student"] < facts["parameters_teacher"]
    assert result.manifest.format == "torch-export"


@pytest.mark.parametrize(("fields", "message"), [
    ({"alpha": 1.5}, r"alpha is 1.5; .* must lie in \[0, 1\]"),
    ({"alpha": -0.1}, r"alpha is -0.1; .* must lie in \[0, 1\]"),
    ({"temperature": 0}, r"temperature is 0.0; .* must be > 0"),
    ({"temperature": -2}, r"temperature is -2.0; .* must be > 0"),
    ({"width": 0}, r"width: Input should be greater than 0"),
    ({"student": "wide"}, r"student 'wide' is not 'narrow', 'shallow' or 'package.module:factory'"),
    ({"student": "shallow"}, r"'shallow' \(fewer blocks\) works on transformers"),
    ({"student": "no.such.module:make"}, r"student 'no.such.module:make' is not .* importable"),
    ({"parameter_ratio": 1.5}, r"parameter_ratio: Input should be less than 1"),
    ({"parameter_ratio": 0.3, "student": "tests.optimize.test_distill:tiny_student"},
     r"parameter_ratio sizes a 'narrow' student, but student is 'tests.optimize.test_distill:tiny_student'"),
    ({"parameter_ratio": 0.3, "width": 0.5, "min_width": 0.6}, r"min_width 0.6 is above width 0.5"),
])
def test_bad_distill_config_publishes_nothing(digits_copy: Repository, fields: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        optimize(digits_copy.root, "digits:1", recipe=[{"pass": "distill", "epochs": 1, **fields}], **FAST)
    assert digits_copy.versions("digits") == [1, 2]


def test_distill_without_train_data_says_how_to_give_it(digits_copy: Repository) -> None:
    # Naming --eval turns off the zoo's default splits, so no training data is left.
    with pytest.raises(InvalidInput, match=r"step 1 \(distill\): .*none was given; pass --train zoo:digits-train"):
        optimize(digits_copy.root, "digits:1", preset_name="distill-half", eval_data="zoo:digits", **FAST)
    # (A derived student from an ONNX file: converted to PyTorch, tests/optimize/test_onnx_source.py.)
    assert digits_copy.versions("digits") == [1, 2]


def test_parameter_ratio_out_of_reach_keeps_the_width_and_says_so(digits_copy: Repository) -> None:
    # At the narrowest width tried (a quarter) the digits student still has 6.7% of the teacher's
    # parameters: a 1% ratio cannot be met, and squeezing further would leave a useless model.
    step = {"pass": "distill", "parameter_ratio": 0.01, "epochs": 1, "max_samples": 64}
    result = optimize(digits_copy.root, "digits:1", recipe=[step], **FAST)
    facts = result.report["facts"]["distill"]
    assert facts["width"] == 0.5 and facts["channels"]["head.1"] == [128, 64]
    assert any("parameter_ratio 0.01 is out of reach" in n and "min_width 0.25" in n
               for n in result.report["notes"])

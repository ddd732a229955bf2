"""Every kind of bad input stops with a message naming the pass/layer and the fix, and publishes
nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from shipyard.errors import InvalidInput, NotFound
from shipyard.optimize.artifact import Artifact
from shipyard.optimize.parity import ParityError
from shipyard.optimize.passes import Context, PassConfig, register
from shipyard.optimize.runner import optimize
from shipyard.repository import Repository
from tests.fixtures import ROOT
from tests.optimize.conftest import FAST


def _fails(repo: Repository, match: str, ref: str = "digits:2", **kwargs: Any) -> None:
    with pytest.raises(InvalidInput, match=match):
        optimize(repo.root, ref, **{**FAST, **kwargs})
    assert repo.versions("digits") == [1, 2]
    assert not [p for p in (repo.root / "digits").iterdir() if p.name.startswith(".staging-")]


def test_unknown_pass(digits_copy: Repository) -> None:
    _fails(digits_copy, r"step 1: unknown pass 'quantise'; known passes: clip, distill, export", recipe=[{"pass": "quantise"}])


def test_bad_parameter_names_pass_and_field(digits_copy: Repository) -> None:
    _fails(digits_copy, r"step 2 \(pass 'prune-structured'\): amount: Input should be less than 1",
           ref="digits:1", recipe=[{"pass": "clip", "percentile": 99}, {"pass": "prune-structured", "amount": 1.5}])
    _fails(digits_copy, r"step 1 \(pass 'quantize'\): colour: Extra inputs are not permitted",
           recipe=[{"pass": "quantize", "colour": "red"}])
    _fails(digits_copy, r"give exactly one of 'threshold' or 'percentile'", ref="digits:1", recipe=[{"pass": "clip"}])


def test_recipe_files(digits_copy: Repository, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("passes: [ {pass: quantize\n")
    _fails(digits_copy, "is not valid YAML", recipe=bad)
    _fails(digits_copy, "does not exist", recipe=tmp_path / "missing.yaml")
    empty = tmp_path / "empty.yaml"
    empty.write_text("passes: []\n")
    _fails(digits_copy, "non-empty list of passes", recipe=empty)
    good = tmp_path / "good.yaml"
    good.write_text("description: int8 with entropy calibration\npasses:\n  - pass: quantize\n    mode: static\n"
                    "    calibration: entropy\n    calibration_samples: 32\n")
    result = optimize(digits_copy.root, "digits:2", recipe=good, **FAST)
    assert result.manifest.lineage.recipe[0]["calibration"] == "entropy"


def test_pass_on_the_wrong_kind_of_model(digits_copy: Repository) -> None:
    _fails(digits_copy, r"pass 'quantize' works on onnx models.*put an `export` pass", ref="digits:1",
           recipe=[{"pass": "quantize", "mode": "dynamic"}])
    _fails(digits_copy, r"pass 'weight-only' works on torch models", recipe=[{"pass": "weight-only"}])


def test_unsupported_layer_named(digits_copy: Repository) -> None:
    _fails(digits_copy, r"exclude names \['nope'\], which are not Linear layers; Linear layers: \['head.1', 'head.4'\]",
           ref="digits:1", recipe=[{"pass": "weight-only", "exclude": ["nope"]}])
    _fails(digits_copy, r"exclude names nodes \['nope'\] that the graph does not have",
           recipe=[{"pass": "quantize", "exclude": ["nope"]}])
    _fails(digits_copy, r"pass 'low-rank' factored no layer", ref="digits:1", recipe=[{"pass": "low-rank", "energy": 1.0}])


def test_eval_data_that_does_not_match(digits_copy: Repository, tmp_path: Path) -> None:
    wrong_name = tmp_path / "names.npz"
    np.savez(wrong_name, image=np.zeros((4, 1, 8, 8), np.float32))
    _fails(digits_copy, r"has arrays \['image'\]; the model's inputs are \['pixels'\] \(missing \['pixels'\]\)",
           preset_name="int8-static", eval_data=str(wrong_name))
    wrong_shape = tmp_path / "shape.npz"
    np.savez(wrong_shape, pixels=np.zeros((4, 1, 8, 9), np.float32))
    _fails(digits_copy, r"'pixels' has shape \[4, 1, 8, 9\]; the model expects \[-1, 1, 8, 8\]",
           preset_name="int8-static", eval_data=str(wrong_shape))
    wrong_type = tmp_path / "type.npz"
    np.savez(wrong_type, pixels=np.zeros((4, 1, 8, 8), np.complex64))
    _fails(digits_copy, r"'pixels' is complex64; the model expects FP32", preset_name="int8-static", eval_data=str(wrong_type))
    labels = tmp_path / "labels.npz"
    np.savez(labels, pixels=np.zeros((4, 1, 8, 8), np.float32), labels=np.zeros(3, np.int64))
    _fails(digits_copy, r"'labels' has 3 entries for 4 samples", preset_name="int8-static", eval_data=str(labels))
    _fails(digits_copy, "neither an .npz file nor a built-in split", preset_name="int8-static", eval_data="data.csv")
    _fails(digits_copy, r"unknown built-in data 'zoo:mnist'", preset_name="int8-static", eval_data="zoo:mnist")
    with pytest.raises(NotFound, match="has no version 9"):
        optimize(digits_copy.root, "digits:9", preset_name="fp16", **FAST)


def test_fine_tune_without_train_data(digits_copy: Repository, tmp_path: Path) -> None:
    data = tmp_path / "eval.npz"
    from tests.fixtures import digits_test

    x, y = digits_test()
    np.savez(data, pixels=x, labels=y)
    _fails(digits_copy, r"asks for fine-tuning but no labelled --train data", ref="digits:1",
           recipe=[{"pass": "prune-structured", "fine_tune_epochs": 2}], eval_data=str(data))


class Drift(PassConfig):
    """A conversion that quietly changes the model: what the parity check exists to catch."""

    name: ClassVar[str] = "test-drift"
    lossless: ClassVar[bool] = True


@register(Drift)
def _drift(artifact: Artifact, config: Drift, ctx: Context) -> Artifact:
    import torch

    with torch.no_grad():
        next(p for n, p in artifact.module.named_parameters() if n.endswith("head.4.bias"))[3] += 0.5
    return artifact


def test_a_pass_that_breaks_parity_publishes_nothing(digits_copy: Repository) -> None:
    with pytest.raises(ParityError, match=r"step 1 \(pass 'test-drift'\) broke parity: output 'logits' differs "
                                          r"from its source by 0.5 at index \[\d+, 3\] \(tolerance 0.0001 = atol 0.0001 \+ rtol 0 x "
                                          r"max\|source\| [\d.]+\)"):
        optimize(digits_copy.root, "digits:1", recipe=[{"pass": "test-drift"}], **FAST)
    assert digits_copy.versions("digits") == [1, 2]


def test_killed_run_leaves_the_repository_as_it_was(digits_copy: Repository) -> None:
    before = {v: digits_copy.manifest("digits", v).model_dump_json() for v in digits_copy.versions("digits")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "shipyard.cli.main", "optimize", "digits:1", "--preset", "prune-structured-50",
         "--latency-budget", "30", "--threads", "1", "-r", str(digits_copy.root)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # Kill it once it is inside publishing (a staging folder exists): the worst moment.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any(
                p.name.startswith(".staging-") for p in (digits_copy.root / "digits").iterdir()):
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    after = {v: digits_copy.manifest("digits", v).model_dump_json() for v in digits_copy.versions("digits")}
    assert after == before
    # The next run publishes normally (and gets a fresh number).
    result = optimize(digits_copy.root, "digits:2", preset_name="fp16", **FAST)
    assert result.manifest.version == 3

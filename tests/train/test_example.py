"""The example config runs as it is and publishes a model the serving runtimes load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from shipyard.cli.main import app
from shipyard.optimize.evaluate import open_runtime
from shipyard.repository import Repository
from tests.fixtures import ROOT, digits_test


def test_digits_example_trains_and_publishes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the example's output_dir is relative
    # As it is, but one thread: on a shared 2-core machine, two OpenMP threads spin-wait for
    # each other and the run takes ten times longer.
    cfg = yaml.safe_load((ROOT / "examples/train/digits.yaml").read_text())
    (tmp_path / "digits.yaml").write_text(yaml.safe_dump({**cfg, "threads": 1}))
    result = CliRunner().invoke(app, ["train", "digits.yaml", "-r", "repo"])
    assert result.exit_code == 0, result.output
    repo = Repository(tmp_path / "repo")
    m = repo.manifest("digits-trained")
    repo.verify(m)
    assert m.format == "torch-export" and m.metrics["accuracy"] > 0.95
    assert m.extra["training"]["config"]["task"]["name"] == "digits"
    lines = (tmp_path / "runs/digits/metrics.jsonl").read_text().splitlines()
    assert len(lines) == 25  # one record per epoch
    rt = open_runtime(repo.path("digits-trained", m.version), m.format, m.signature, 1)
    pixels, labels = digits_test()
    logits = rt.infer({"pixels": pixels}, ["logits"])["logits"]
    assert float((logits.argmax(1) == labels).mean()) == pytest.approx(m.metrics["accuracy"], abs=1e-6)
    assert np.isfinite(logits).all()

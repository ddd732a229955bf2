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


def test_code_lm_example_trains_and_publishes_a_causal_lm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The code-lm example, shrunk by its own task options (a few files, one tiny layer), goes
    through the same loop and lands as an hf-causal-lm version the generation runtime loads."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.chdir(tmp_path)
    cfg = yaml.safe_load((ROOT / "examples/train/code-lm.yaml").read_text())
    assert cfg["task"]["name"] == "code-lm"
    cfg["task"]["options"].update(max_files=4, max_windows=24, layers=1, hidden=32, heads=2, vocab=300, seq=32)
    cfg.update(threads=1, data={"batch_size": 8}, epochs=2)
    (tmp_path / "lm.yaml").write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(app, ["train", "lm.yaml", "-r", "repo"])
    assert result.exit_code == 0, result.output
    repo = Repository(tmp_path / "repo")
    m = repo.manifest("code-lm-trained")
    repo.verify(m)
    assert m.format == "hf-causal-lm"
    assert m.metrics["steps"] == 6  # 24 windows / batch 8, two epochs
    assert 1 < m.metrics["heldout_perplexity"] < 300  # below uniform over the 300-token vocabulary
    assert m.extra["training"]["config"]["task"]["options"]["seq"] == 32
    folder = repo.path("code-lm-trained", m.version)
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert model.config.n_layer == 1 and len(tokenizer) == model.config.vocab_size
    ids = tokenizer("def main(", return_tensors="pt").input_ids
    assert model.generate(ids, max_new_tokens=4, do_sample=False).shape[1] == ids.shape[1] + 4


def test_code_lm_task_rejects_bad_options() -> None:
    from shipyard.errors import InvalidInput
    from shipyard.train.tasks import build_task

    with pytest.raises(InvalidInput, match="size 'huge' is not known"):
        build_task("code-lm", {"size": "huge"})
    with pytest.raises(InvalidInput, match="max_windows must be at least 1"):
        build_task("code-lm", {"max_windows": 0})
    with pytest.raises(InvalidInput, match="layerz"):
        build_task("code-lm", {"layerz": 2})

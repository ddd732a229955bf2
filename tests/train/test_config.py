"""Bad configs and bad flags fail before any process starts, naming the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from shipyard.cli.main import app
from shipyard.errors import InvalidInput
from shipyard.train import load_config
from tests.fixtures import ROOT
from tests.train.conftest import config, write

runner = CliRunner()


def train(path: Path, *args: str) -> Any:
    return runner.invoke(app, ["train", str(path), *args])


@pytest.mark.parametrize("change, message", [
    ({"optimizer": {"lrr": 0.1}}, "optimizer.lrr is not a known key; known keys here: betas, lr, momentum, name, weight_decay"),
    ({"epoch": 3}, "epoch is not a known key; known keys here: checkpoint, clip_grad_norm,"),
    ({"data": {"batch_size": 0}}, "data.batch_size: Input should be greater than or equal to 1 (got 0)"),
    ({"optimizer": {"name": "lion"}}, "optimizer.name: Input should be 'adamw' or 'sgd'"),
    ({"parallel": {"strategy": "zero3"}}, "parallel.strategy: Input should be"),
    ({"publish": {"name": "bad name!"}}, "publish.name: model name 'bad name!' is not allowed"),
    ({"task": {"name": "nope"}}, "task.name 'nope' is not a known task; known: code-lm, digits"),
    ({"distill": {"teacher": "ghost:1"}}, "model 'ghost' is not in repository"),
])
def test_bad_config_fails_before_any_process(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    cfg = {**config(tmp_path, "run"), **change}
    result = train(write(tmp_path, cfg), "--nproc", "2", "--repository", str(tmp_path / "repo"))
    assert result.exit_code == 1
    assert message in " ".join(result.output.split())
    assert not (tmp_path / "run").exists()  # nothing ran


def test_unknown_task_option_is_named(tmp_path: Path) -> None:
    cfg = {**config(tmp_path, "run"), "task": {"name": "digits", "options": {"subsett": 5}}}
    result = train(write(tmp_path, cfg))
    assert result.exit_code == 1
    assert "task.options for 'digits'" in result.output and "subsett" in result.output


def test_not_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: [unclosed\n")
    assert "is not valid YAML" in train(bad).output
    assert "must be a mapping" in train(write(tmp_path, ["a"], "list.yaml")).output  # type: ignore[arg-type]
    assert "does not exist" in train(tmp_path / "missing.yaml").output


def test_resume_without_checkpoint_and_restart_over_one(tmp_path: Path) -> None:
    path = write(tmp_path, config(tmp_path, "run"))
    result = train(path, "--resume")
    assert result.exit_code == 1 and "--resume: no checkpoint in" in result.output
    (tmp_path / "run" / "checkpoints" / "step-00000004").mkdir(parents=True)
    result = train(path)
    assert result.exit_code == 1
    assert "holds checkpoints of an earlier run (newest step-00000004); continue it with --resume" in " ".join(result.output.split())


def test_nnodes_needs_an_endpoint(tmp_path: Path) -> None:
    result = train(write(tmp_path, config(tmp_path, "run")), "--nproc", "2", "--nnodes", "2")
    assert result.exit_code == 1 and "--rdzv-endpoint" in result.output


def test_example_config_is_valid() -> None:
    cfg = load_config(ROOT / "examples/train/digits.yaml")
    assert cfg.task is not None and cfg.task.name == "digits" and cfg.publish.name
    with pytest.raises(InvalidInput, match="task.name"):
        from shipyard.train.tasks import resolve

        resolve("no_such_module_xyz:factory")

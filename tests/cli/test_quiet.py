"""What the commands print: shipyard's own progress, none of the libraries' bars and warnings."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from shipyard.repository import Repository
from shipyard.train.callbacks import StepInfo
from tests.fixtures import ServerProcess

# What transformers and the Hugging Face hub print on their own, and torch's warning about
# read-only inputs: none of it belongs in shipyard's output.
NOISE = ("[transformers]", "Loading weights", "Writing model shards", "it/s]", "Warning", "not writable")


def noise(text: str) -> list[str]:
    return [word for word in NOISE if word in text]


def test_training_code_lm_prints_no_library_noise(code_lm_repo: tuple[Repository, Any]) -> None:
    done = code_lm_repo[1]  # `shipyard zoo train code-lm`, as run by the fixture
    assert "published code-lm:1" in done.stdout
    assert noise(done.stdout + done.stderr) == [], done.stderr


def test_serving_an_lm_logs_no_library_noise(code_lm_repo: tuple[Repository, Any], tmp_path: Path) -> None:
    root = tmp_path / "repo"
    shutil.copytree(code_lm_repo[0].root, root)
    server = ServerProcess(root, "--log-level", "info")
    assert server.stop() == 0, server.output()
    log = server.output()
    assert "code-lm:1 hf-causal-lm READY" in log  # transformers loaded the model here
    assert noise(log) == [], log


def test_digits_training_reports_every_step() -> None:
    from shipyard.zoo import digits

    seen: list[StepInfo] = []
    digits.train(epochs=2, on_step=seen.append)
    assert [s.step for s in seen] == list(range(1, len(seen) + 1))
    batches = -(-len(digits.load("train").pixels) // 64)
    assert len(seen) == seen[-1].total == 2 * batches
    assert {s.epoch for s in seen} == {0, 1} and all(s.rank == 0 and s.world == 1 for s in seen)
    assert float(seen[-1].loss) < float(seen[0].loss)


def test_demo_draws_the_digits_training(capsys: pytest.CaptureFixture[str]) -> None:
    from shipyard.cli import demo
    from shipyard.zoo import digits

    demo.train_digits()
    out = capsys.readouterr().out
    batches = -(-len(digits.load("train").pixels) // 64)
    assert f"trained digits ({25 * batches} steps, final loss 0.0" in out

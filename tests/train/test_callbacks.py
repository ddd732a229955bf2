"""Step callbacks: called after every optimizer step with where the run is, from Python or named in
the config; a bad name fails before any process starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from shipyard.cli.main import app
from shipyard.train import StepInfo, fit
from tests.train.conftest import config, write

SEEN: dict[str, list[StepInfo]] = {}


def recorder(key: str) -> Any:
    """A callback factory named in configs below: keeps every StepInfo under SEEN[key]."""
    SEEN[key] = []
    return SEEN[key].append


def test_python_and_config_callbacks_see_every_step(tmp_path: Path) -> None:
    mine: list[StepInfo] = []
    cfg = config(tmp_path, "run", on_step=[{"name": f"{__name__}:recorder", "options": {"key": "cfg"}}])
    result = fit(cfg, on_step=[mine.append])
    assert result.steps == 16
    assert [i.step for i in mine] == list(range(1, 17))
    assert [i.step for i in SEEN["cfg"]] == list(range(1, 17))
    assert {(i.rank, i.world, i.total) for i in mine} == {(0, 1, 16)}
    assert [i.epoch for i in mine] == [0] * 8 + [1] * 8
    # every_steps 4: checkpoints at 4, 8 and 12 (the last one, at 16, is written after the loop)
    assert [(i.step, i.checkpoint.name) for i in mine if i.checkpoint is not None] == [
        (4, "step-00000004"), (8, "step-00000008"), (12, "step-00000012")]
    assert mine[-1].lr < mine[0].lr  # cosine decay
    assert float(mine[-1].loss) < float(mine[0].loss)


def test_an_exception_in_a_callback_ends_the_run(tmp_path: Path) -> None:
    def stop(info: StepInfo) -> None:
        if info.step == 3:
            raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        fit(config(tmp_path, "run"), on_step=[stop])


@pytest.mark.parametrize("entry, message", [
    ({"name": "tests.train.nowhere:recorder"}, "on_step[0].name 'tests.train.nowhere:recorder' cannot be imported"),
    ({"name": "recorder"}, "on_step[0].name 'recorder' is not of the form 'package.module:attr'"),
    ({"name": f"{__name__}:recorder", "options": {"kee": "x"}}, f"on_step[0].options for '{__name__}:recorder'"),
])
def test_bad_callback_fails_before_any_process(tmp_path: Path, entry: dict[str, Any], message: str) -> None:
    path = write(tmp_path, config(tmp_path, "run", on_step=[entry]))
    result = CliRunner().invoke(app, ["train", str(path), "--nproc", "2"])
    assert result.exit_code == 1
    assert message in " ".join(result.output.split())
    assert not (tmp_path / "run").exists()  # nothing ran

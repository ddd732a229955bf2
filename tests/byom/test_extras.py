"""TensorFlow, LiteRT and MLflow are an optional extra: nothing imports them until a model of
theirs is used, and without them the error names the extra that installs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shipyard.errors import InvalidInput
from shipyard.optimize.sources import import_model
from shipyard.repository import Repository
from tests.byom.conftest import KerasFiles
from tests.cli.test_cli import fails, shipyard
from tests.fixtures import ROOT

HEAVY = ("tensorflow", "keras", "tf2onnx", "ai_edge_litert", "mlflow")


def test_the_cli_and_the_server_import_none_of_them() -> None:
    code = ("import sys, json, shipyard.cli.main, shipyard.serve.app, shipyard.runtimes, shipyard.optimize.formats, "
            "shipyard.optimize.passes, shipyard.optimize.sources\n"
            f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


@pytest.mark.parametrize(("blocked", "source", "extra"), [
    ("tensorflow", "keras", "tensorflow"), ("keras", "h5", "tensorflow"),
    ("ai_edge_litert.interpreter", "tflite", "tensorflow")])
def test_without_the_extra_the_error_names_it(monkeypatch: pytest.MonkeyPatch, keras_files: KerasFiles,
                                              repo: Repository, blocked: str, source: str, extra: str) -> None:
    monkeypatch.setitem(sys.modules, blocked, None)  # `import blocked` now raises ImportError
    with pytest.raises(InvalidInput, match=rf"pip install 'shipyard\[{extra}\]'") as info:
        import_model(repo, getattr(keras_files, source), "m")
    assert getattr(keras_files, source).name in str(info.value)
    assert repo.versions("m") == []


def test_an_mlflow_folder_without_mlflow(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, repo: Repository) -> None:
    (tmp_path / "MLmodel").write_text("flavors:\n  onnx:\n    data: model.onnx\n")
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(InvalidInput, match=r"pip install 'shipyard\[mlflow\]'"):
        import_model(repo, tmp_path, "m")


def test_the_cli_imports_and_converts(keras_files: KerasFiles, tmp_path: Path) -> None:
    root = tmp_path / "repo"
    done = shipyard("models", "import", keras_files.keras, "--name", "k", "--repository", root)
    assert done.returncode == 0, done.stderr
    assert "published k:1 (onnx" in done.stdout
    line = fails(shipyard("optimize", "k:1", "--to", "coreml", "--repository", root))
    assert "--to 'coreml'" in line and "tflite-int8" in line

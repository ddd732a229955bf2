"""The real `shipyard` command, run as a child process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import onnx
import pytest
import torch

from shipyard.repository import Repository
from tests.fixtures import ROOT, SHIPYARD, TwoInputs, export_onnx, identity_onnx


def shipyard(*args: str | Path, env: dict[str, str] | None = None, cwd: Path = ROOT,
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SHIPYARD_")}
    return subprocess.run([*SHIPYARD, *map(str, args)], capture_output=True, text=True,
                          env={**environ, "COLUMNS": "100", **(env or {})}, cwd=cwd, timeout=timeout)


def fails(result: subprocess.CompletedProcess[str]) -> str:
    """The one line a failing command prints: exit status 1, no traceback."""
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_help_lists_the_commands() -> None:
    r = shipyard("--help")
    assert r.returncode == 0, r.stderr
    for word in ("demo", "serve", "models"):
        assert word in r.stdout
    r = shipyard("models", "--help")
    assert r.returncode == 0
    for word in ("list", "show", "import", "remove"):
        assert word in r.stdout


def test_models_list_json(digits_repo: Repository) -> None:
    r = shipyard("models", "list", "--json", "--repository", digits_repo.root)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [(row["name"], row["version"], row["format"]) for row in rows] == [
        ("digits", 1, "torch-export"), ("digits", 2, "onnx"),
    ]
    assert rows[1]["parent"] == 1 and rows[0]["parent"] is None
    for row in rows:
        assert row["size_bytes"] == digits_repo.manifest("digits", row["version"]).size_bytes > 0
        assert row["metrics"]["accuracy"] >= 0.97


def test_models_list_human(digits_repo: Repository) -> None:
    r = shipyard("models", "list", "-r", digits_repo.root)
    assert r.returncode == 0, r.stderr
    assert "digits" in r.stdout and "torch-export" in r.stdout and "onnx" in r.stdout
    assert "%" in r.stdout  # accuracy column


def test_models_list_empty(tmp_path: Path) -> None:
    r = shipyard("models", "list", "-r", tmp_path / "none")
    assert r.returncode == 0
    assert "no models in" in r.stdout
    r = shipyard("models", "list", "--json", "-r", tmp_path / "none")
    assert json.loads(r.stdout) == []


def test_repository_from_environment(digits_repo: Repository, tmp_path: Path) -> None:
    r = shipyard("models", "list", "--json", env={"SHIPYARD_REPOSITORY": str(digits_repo.root)}, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert [row["version"] for row in json.loads(r.stdout)] == [1, 2]
    # The flag wins over the environment.
    r = shipyard("models", "list", "--json", "-r", tmp_path / "empty",
                 env={"SHIPYARD_REPOSITORY": str(digits_repo.root)}, cwd=tmp_path)
    assert json.loads(r.stdout) == []


def test_default_repository_is_in_the_working_folder(digits_repo: Repository, tmp_path: Path) -> None:
    shutil.copytree(digits_repo.root, tmp_path / "model-repository")
    r = shipyard("models", "list", "--json", cwd=tmp_path)
    assert [row["version"] for row in json.loads(r.stdout)] == [1, 2]


def test_models_show_json(digits_repo: Repository) -> None:
    r = shipyard("models", "show", "digits:2", "--json", "-r", digits_repo.root)
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    assert shown["name"] == "digits" and shown["version"] == 2 and shown["format"] == "onnx"
    assert shown["schema_version"] == 1
    assert shown["lineage"]["parent"] == 1
    assert shown["lineage"]["recipe"] == [{"pass": "export", "format": "onnx", "opset": 17}]
    assert shown["signature"]["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert [f["path"] for f in shown["files"]] == ["model.onnx"]
    assert shown == json.loads(digits_repo.manifest("digits", 2).model_dump_json())


def test_models_show_human_has_signature_metrics_and_lineage(digits_repo: Repository) -> None:
    r = shipyard("models", "show", "digits", "-r", digits_repo.root)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "digits:2" in out  # the latest version by default
    assert "pixels" in out and "logits" in out and "FP32" in out
    assert "accuracy" in out
    assert "digits lineage" in out
    assert "v1 torch-export" in out
    assert "v2 onnx" in out and "export" in out
    # v2 is drawn under v1, its parent.
    lines = out.splitlines()
    v1 = next(i for i, line in enumerate(lines) if "v1 torch-export" in line)
    v2 = next(i for i, line in enumerate(lines) if "v2 onnx" in line)
    assert v2 > v1 and lines[v2].index("v2") > lines[v1].index("v1")


def test_import_then_remove(digits_copy: Path, tmp_path: Path) -> None:
    onnx_file = export_onnx(TwoInputs(), tmp_path / "two.onnx",
                            {"a": torch.zeros(2, 4), "b": torch.zeros(2, 4)}, ["y", "sum"])
    r = shipyard("models", "import", onnx_file, "--name", "two", "-r", digits_copy)
    assert r.returncode == 0, r.stderr
    assert "published two:1 (onnx" in r.stdout
    r = shipyard("models", "import", onnx_file, "--name", "two", "-r", digits_copy, "--json",
                 "--output", "y:FP32:-1,4", "--output", "total:FP32:-1,1")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["version"] == 2
    assert [o["name"] for o in m["signature"]["outputs"]] == ["y", "total"]
    repo = Repository(digits_copy)
    assert repo.models() == ["digits", "two"]

    r = shipyard("models", "remove", "two:1", "-r", digits_copy)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "removed two:1"
    assert repo.versions("two") == [2]
    repo.verify(repo.manifest("two", 2))
    assert repo.versions("digits") == [1, 2]

    assert fails(shipyard("models", "remove", "two:1", "-r", digits_copy)) == \
        "error: model 'two' has no version 1; versions: 2"
    assert "give the version to remove, as in 'two:1'" in fails(shipyard("models", "remove", "two", "-r", digits_copy))


def test_import_pickle_fails_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "module.pt"
    torch.save(TwoInputs(), str(path))
    line = fails(shipyard("models", "import", path, "--name", "two", "-r", tmp_path / "repo"))
    assert "is a pickle file" in line and "--trust-pickle" in line
    assert Repository(tmp_path / "repo").models() == []


def test_import_pickle_with_trust(tmp_path: Path) -> None:
    path = tmp_path / "module.pt"
    torch.save(TwoInputs(), str(path))
    r = shipyard("models", "import", path, "--name", "two", "-r", tmp_path / "repo", "--trust-pickle",
                 "--input", "a:FP32:-1,4", "--input", "b:FP32:-1,4", "--json", cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["format"] == "torch-export"


def test_import_errors(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert "is not a format shipyard can import" in fails(shipyard("models", "import", text, "-n", "x", "-r", repo))
    assert "does not exist" in fails(shipyard("models", "import", tmp_path / "nope.onnx", "-n", "x", "-r", repo))
    model = identity_onnx(tmp_path / "id.onnx", onnx.TensorProto.FLOAT, ["n", 2])
    assert "is not allowed" in fails(shipyard("models", "import", model, "-n", "../x", "-r", repo))
    assert "must look like NAME:DATATYPE:DIM,DIM" in fails(
        shipyard("models", "import", text, "-n", "x", "-r", repo, "--input", "pixels")
    )


def test_show_unknown_model(digits_repo: Repository) -> None:
    line = fails(shipyard("models", "show", "nope", "-r", digits_repo.root))
    assert line == f"error: model 'nope' is not in repository {digits_repo.root} (models: digits)"


def test_show_unknown_version(digits_repo: Repository) -> None:
    line = fails(shipyard("models", "show", "digits:9", "-r", digits_repo.root))
    assert line == "error: model 'digits' has no version 9; versions: 1, 2"


@pytest.mark.parametrize("ref", ["digits:abc", "digits:0"])
def test_show_bad_ref(digits_repo: Repository, ref: str) -> None:
    line = fails(shipyard("models", "show", ref, "-r", digits_repo.root))
    assert line == f"error: version in '{ref}' must be a positive integer, as in 'digits:2'"


def test_error_messages_are_not_read_as_markup(tmp_path: Path) -> None:
    # A path with brackets in it must come out as written, not as rich markup.
    folder = tmp_path / "[bold]x[not-a-tag]"
    folder.mkdir()
    line = fails(shipyard("models", "import", folder / "nope.onnx", "-n", "x", "-r", tmp_path / "repo"))
    assert line == f"error: {folder / 'nope.onnx'} does not exist"


def test_long_error_is_one_line(tmp_path: Path) -> None:
    deep = tmp_path.joinpath(*["a-rather-long-folder-name"] * 6)
    line = fails(shipyard("models", "import", deep / "model.onnx", "-n", "x", "-r", tmp_path / "repo"))
    assert line == f"error: {deep / 'model.onnx'} does not exist"


def test_invalid_environment_setting_fails_cleanly(tmp_path: Path) -> None:
    r = shipyard("models", "list", env={"SHIPYARD_PORT": "not-a-port"}, cwd=tmp_path)
    line = fails(r)
    assert "port" in line.lower()


# -- the demo ----------------------------------------------------------------------------------
def test_demo_models_are_accurate(digits_repo: Repository) -> None:
    for v in (1, 2):
        m = digits_repo.manifest("digits", v)
        assert m.metrics["accuracy"] >= 0.97, m.metrics
        assert m.metrics["parameters"] > 0
        assert m.metrics["latency_b1_p50_ms"] > 0 and m.metrics["latency_b32_p50_ms"] > 0
        assert m.extra["zoo"] == "digits"
    assert digits_repo.manifest("digits", 1).metrics["parameters"] == digits_repo.manifest("digits", 2).metrics["parameters"]
    assert digits_repo.model_config("digits").version_policy == "all"


def test_demo_reuses_what_it_built(digits_copy: Path, code_lm_repo: tuple[Repository, Any]) -> None:
    """digits_repo was built by the demo's own build(), code-lm by `shipyard zoo train code-lm`:
    this is the demo's second run."""
    shutil.copytree(code_lm_repo[0].root / "code-lm", digits_copy / "code-lm")
    before = {v: Repository(digits_copy).manifest("digits", v) for v in (1, 2)}
    r = shipyard("demo", "--no-serve", "--repository", digits_copy)
    assert r.returncode == 0, r.stderr
    assert "reusing digits:1 and digits:2" in r.stdout
    assert "reusing code-lm:1" in r.stdout and "held-out perplexity" in r.stdout
    assert "training" not in r.stdout
    assert "accuracy" in r.stdout  # the comparison table
    repo = Repository(digits_copy)
    assert repo.versions("digits") == [1, 2]
    assert {v: repo.manifest("digits", v) for v in (1, 2)} == before

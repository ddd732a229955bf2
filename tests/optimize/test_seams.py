"""The seams of optimize: formats and passes found by their registries, evaluators given or chosen
by the format, progress told to a callback (the library draws nothing), no arrow up into the CLI."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

from shipyard.optimize import evaluators, formats
from shipyard.optimize.evaluators.classification import Classification
from shipyard.optimize.passes import BY_NAME, Context
from shipyard.optimize.recipe import PRESETS, passes_for, presets_for, runs_on
from shipyard.optimize.runner import optimize
from shipyard.repository import Repository
from shipyard.runtimes import REGISTRY as RUNTIMES
from tests.cli.test_cli import fails, shipyard
from tests.fixtures import ROOT
from tests.optimize.conftest import FAST

SRC = ROOT / "src" / "shipyard"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_optimize_draws_no_terminal_ui() -> None:
    offenders = [str(p.relative_to(SRC)) for p in (SRC / "optimize").rglob("*.py")
                 if any(m == "rich" or m.startswith("rich.") for m in _imports(p))]
    assert offenders == []


def test_every_format_optimize_reads_is_one_a_runtime_serves() -> None:
    assert {"onnx", "torch-export", "hf-transformers", "hf-causal-lm", "tflite"} <= set(formats.REGISTRY)
    for name, fmt in formats.REGISTRY.items():
        assert fmt.name == name and name in RUNTIMES, name
        assert fmt.kind in ("torch", "onnx", "tflite")
        assert fmt.evaluator in evaluators.REGISTRY
    assert sum(f.fallback for f in formats.REGISTRY.values()) == 1


def test_every_built_in_pass_declares_known_formats() -> None:
    for name, cls in BY_NAME.items():
        if name.startswith("test-"):  # passes other tests register
            continue
        assert cls.accepts, name
        assert set(cls.accepts) <= set(formats.REGISTRY), name
    # What presets and the search read from the declarations.
    assert passes_for("hf-causal-lm") == ["weight-only"]
    assert presets_for("hf-causal-lm") == ["int8-weight-only", "int4-weight-only"]
    assert presets_for("onnx") == ["int8-dynamic", "int8-static", "fp16", "lowrank-90"]
    assert all(runs_on(p, "onnx") for p in ("clip", "low-rank", "prune-structured", "distill"))  # issue 14
    assert formats.REGISTRY["torchscript"].kind == "onnx"  # converted at load, then every ONNX pass
    assert runs_on("quantize", "onnx") and not runs_on("quantize", "torch")
    assert runs_on("prune-unstructured", "onnx") and runs_on("prune-unstructured", "torch")
    assert passes_for("tflite") == ["tflite-to-onnx"] and presets_for("tflite") == []
    assert runs_on("tflite", "onnx") and not runs_on("tflite", "torch")


def test_the_cli_hint_names_every_preset(digits_copy: Repository) -> None:
    line = fails(shipyard("optimize", "digits:2", "-r", digits_copy.root))
    assert all(name in line for name in PRESETS), line


class Recorder:
    """A Progress that writes down what it is told."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def start(self, description: str, total: int | None = None) -> None:
        self.calls.append(("start", description))

    def update(self, description: str) -> None:
        self.calls.append(("update", description))

    def advance(self) -> None:
        self.calls.append(("advance", None))

    def stop(self) -> None:
        self.calls.append(("stop", None))


class Counted(Classification):
    """A task-aware evaluator is one class: here, the classifier's metrics plus one of its own."""

    def summarize(self, measured: dict[str, dict[str, Any]], ctx: Context) -> dict[str, Any]:
        ctx.note("counted by the test's evaluator")
        return {"test_metric": len(measured)}


def test_progress_goes_to_the_callback_and_the_library_prints_nothing(
        digits_copy: Repository, capfd: pytest.CaptureFixture[str]) -> None:
    progress = Recorder()
    optimize(digits_copy.root, "digits:2", preset_name="fp16", progress=progress, **FAST)
    assert progress.calls[0] == ("start", "loading digits:2")
    assert progress.calls[-1] == ("stop", None)
    told = [d for kind, d in progress.calls if kind == "update"]
    assert told[0] == "step 1/1: quantize" and "saving" in told and told[-1].startswith("measuring digits:2")
    optimize(digits_copy.root, "digits:2", preset_name="fp16", **FAST)  # no progress given: quiet
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_optimize_takes_an_evaluator(digits_copy: Repository) -> None:
    from shipyard.optimize.evaluators import EvalOptions

    evaluator = Counted(EvalOptions("zoo:digits", threads=1, latency_budget_s=0.05))
    result = optimize(digits_copy.root, "digits:2", preset_name="fp16", evaluator=evaluator, **FAST)
    assert result.manifest.metrics["test_metric"] == 3  # root, parent, new
    assert "counted by the test's evaluator" in result.report["notes"]
    assert result.report["version"] == result.manifest.version == 3

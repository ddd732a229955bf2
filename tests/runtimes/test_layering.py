"""The arrows in docs/architecture.md point one way: runtimes sit below optimize, so importing a runtime, or
loading a model that `shipyard optimize` wrote, must not pull any `shipyard.optimize` module in.
Each check runs in a fresh interpreter, where `sys.modules` holds only what that work imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shipyard.optimize import optimize
from shipyard.repository import Repository
from shipyard.runtimes.importer import import_model
from tests.fixtures import ROOT

ABOVE_RUNTIMES = ("shipyard.optimize", "shipyard.serve", "shipyard.cli", "shipyard.train")


def _modules_after(code: str) -> list[str]:
    """The shipyard modules a fresh interpreter holds after running `code`."""
    script = f"import sys\n{code}\nimport json\nprint(json.dumps(sorted(m for m in sys.modules if m.startswith('shipyard'))))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout.strip().splitlines()[-1]))


def _above(modules: list[str], prefixes: tuple[str, ...]) -> list[str]:
    return [m for m in modules if m.startswith(prefixes)]


def test_the_probe_sees_optimize_when_it_is_imported() -> None:
    # Without this, an empty list below could mean the probe is blind rather than the layering clean.
    assert "shipyard.optimize.passes.weight_only" in _modules_after("import shipyard.optimize.passes.weight_only")


@pytest.mark.parametrize("module", ["shipyard.runtimes.hf_causal", "shipyard.runtimes", "shipyard.generate"])
def test_importing_a_runtime_pulls_in_nothing_above_it(module: str) -> None:
    modules = _modules_after(f"import {module}")
    assert module in modules
    assert _above(modules, ABOVE_RUNTIMES) == []


def test_quant_imports_no_runtime_and_no_optimize() -> None:
    modules = _modules_after("import shipyard.quant.weight_only, shipyard.quant.lm_folder, shipyard.quant.cpu")
    assert _above(modules, (*ABOVE_RUNTIMES, "shipyard.runtimes", "shipyard.generate")) == []


def test_loading_a_weight_only_lm_pulls_in_no_optimize_module(lm_folders: dict[str, Path], tmp_path: Path) -> None:
    """The load path, not only the import: an int8-dynamic layer asks which CPU features exist while
    it prepacks its weights, and that question once lived in `shipyard.optimize`."""
    repo = Repository(tmp_path / "repo")
    import_model(repo, lm_folders["gpt2"], "lm")
    text = tmp_path / "eval.txt"
    text.write_text((ROOT / "src/shipyard/quant/weight_only.py").read_text())
    optimize(repo.root, "lm", recipe=[{"pass": "weight-only", "bits": 8, "kernel": "int8-dynamic"}],
             eval_data=str(text), threads=1)
    code = f"""
import numpy as np
from shipyard.repository import Repository
from shipyard.runtimes import RuntimeOptions, runtime_for
from shipyard.quant.weight_only import WeightOnlyLinear
repo = Repository({str(repo.root)!r})
manifest = repo.manifest("lm", 2)
rt = runtime_for(manifest, repo.path("lm", 2), RuntimeOptions(threads=1))
rt.load()
kernels = {{m.kernel for m in rt.model.modules() if isinstance(m, WeightOnlyLinear)}}
assert kernels == {{"int8-dynamic"}}, kernels
ids = np.array([[3, 5, 7]], dtype=np.int64)
assert rt.infer({{"input_ids": ids, "attention_mask": np.ones_like(ids)}}, ["logits"])["logits"].shape[:2] == (1, 3)
"""
    modules = _modules_after(code)
    assert "shipyard.quant.lm_folder" in modules and "shipyard.quant.cpu" in modules
    assert _above(modules, ABOVE_RUNTIMES) == []

"""code-lm: `shipyard zoo train code-lm` trains on the standard library, holds files out, reports
their perplexity and publishes an hf-causal-lm version the server can generate with."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from shipyard.repository import Repository
from shipyard.zoo import code_lm
from tests.fixtures import ROOT, SHIPYARD, ServerProcess


def test_held_out_files_are_never_trained_on() -> None:
    train, held = code_lm.stdlib_files()
    assert held and train and not set(train) & set(held)
    assert len(held) == -(-(len(train) + len(held)) // code_lm.HOLDOUT_EVERY)  # every 20th file


def test_train_publishes_with_heldout_perplexity(code_lm_repo: tuple[Repository, Any]) -> None:
    repo, done = code_lm_repo
    assert "held-out perplexity" in done.stdout
    m = repo.manifest("code-lm", 1)
    assert m.format == "hf-causal-lm" and m.extra["zoo"] == "code-lm"
    assert m.metrics["train_steps"] == 3 and m.metrics["heldout_files"] >= 1
    # Barely trained, but already far better than uniform over its vocabulary.
    assert 1 < m.metrics["heldout_perplexity"] < 2048
    assert {"tokenizer.json", "config.json", "model.safetensors"} <= {f.path for f in m.files}
    assert code_lm.existing(repo) == m


def test_unknown_size_is_refused(tmp_path: Path) -> None:
    r = subprocess.run([*SHIPYARD, "zoo", "train", "code-lm", "--size", "huge", "-r", str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "unknown size 'huge'; choose one of demo, small" in r.stderr


def test_readme_completion_example_runs(code_lm_repo: tuple[Repository, Any]) -> None:
    import re

    readme = (ROOT / "README.md").read_text()
    example = (ROOT / "docs/examples/complete.py").read_text()
    assert example in re.findall(r"```python\n(.*?)```", readme, re.S)
    repo, _ = code_lm_repo
    server = ServerProcess(repo.root)
    try:
        code = example.replace("127.0.0.1:8000", f"127.0.0.1:{server.port}")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout.endswith("\n")
    finally:
        assert server.stop() == 0

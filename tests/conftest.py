from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shipyard.repository import Repository
from tests.fixtures import build_digits


@pytest.fixture(scope="session")
def digits_repo(tmp_path_factory: pytest.TempPathFactory) -> Repository:
    """A repository with the demo's digits model, built once per test session (~10 s)."""
    return build_digits(tmp_path_factory.mktemp("digits") / "repo")


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Repository]:
    yield Repository(tmp_path / "repo")


@pytest.fixture(scope="session")
def lm_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random GPT-2 and Llama folders (safetensors + tokenizer), built once per session."""
    from tests.fixtures import build_tiny_lm

    base = tmp_path_factory.mktemp("lms")
    folders = {family: build_tiny_lm(base / family, family) for family in ("gpt2", "llama")}
    # A long context, so that one request can hold a slot for seconds (queue and cancel tests).
    folders["gpt2-long"] = build_tiny_lm(base / "gpt2-long", "gpt2", context=4096)
    return folders


@pytest.fixture(scope="session")
def code_lm_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Repository, Any]:
    """`shipyard zoo train code-lm` at a tiny scale (3 steps, 6 files): the real command, quick."""
    import subprocess

    from tests.fixtures import SHIPYARD

    root = tmp_path_factory.mktemp("code-lm") / "repo"
    done = subprocess.run([*SHIPYARD, "zoo", "train", "code-lm", "--repository", str(root), "--steps", "3",
                           "--max-files", "6", "--threads", "1"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return Repository(root), done

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from shipyard.repository import Repository


@pytest.fixture
def digits_copy(digits_repo: Repository, tmp_path: Path) -> Path:
    """A copy of the session's digits repository that a test may damage."""
    root = tmp_path / "repo"
    shutil.copytree(digits_repo.root, root)
    return root

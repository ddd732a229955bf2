"""Docs that run: the README's Python example is docs/examples/client.py, executed here against a
real server."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from shipyard.repository import Repository
from tests.fixtures import ROOT, ServerProcess


def test_readme_python_example_is_the_tested_file() -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```python\n(.*?)```", readme, re.S)
    assert block is not None
    assert block.group(1) == (ROOT / "docs/examples/client.py").read_text()


def test_readme_starts_with_the_two_commands() -> None:
    first = (ROOT / "README.md").read_text().split("```")[1]
    assert "make demo" in first and "make test" in first


def test_client_example_runs(digits_repo: Repository, tmp_path: Path) -> None:
    server = ServerProcess(digits_repo.root, "--models", "digits")
    try:
        code = (ROOT / "docs/examples/client.py").read_text().replace("127.0.0.1:8000", f"127.0.0.1:{server.port}")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "[0 1 2 3]"
    finally:
        assert server.stop() == 0

"""The README's optimize examples are files, and they run."""

from __future__ import annotations

import re
import subprocess
import sys

from shipyard.repository import Repository
from tests.cli.test_cli import shipyard
from tests.fixtures import ROOT


def test_readme_optimize_example_is_the_tested_file() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Optimizing", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, re.S)
    assert block is not None and block.group(1) == (ROOT / "docs/examples/optimize.py").read_text()
    assert "docs/examples/int8-entropy.yaml" in section


def test_optimize_example_and_recipe_run(digits_copy: Repository) -> None:
    out = subprocess.run([sys.executable, str(ROOT / "docs/examples/optimize.py"), str(digits_copy.root)],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert re.fullmatch(r"digits:3: size x0\.\d\d, accuracy [+-]\d\.\d\d points\n", out.stdout)
    res = shipyard("optimize", "digits:2", "--recipe", ROOT / "docs/examples/int8-entropy.yaml", "--eval",
                   "zoo:digits", "--calibrate", "zoo:digits-train", "--threads", "1", "--latency-budget", "0.05",
                   "-r", digits_copy.root)
    assert res.returncode == 0, res.stderr
    recipe = digits_copy.manifest("digits", 4).lineage.recipe[0]
    assert recipe["calibration"] == "entropy" and recipe["exclude"] == ["/head/head.4/Gemm"]

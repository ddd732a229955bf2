"""The parity check's tolerance scales with the outputs: fp32 drift of an export passes, a broken
conversion fails naming its worst output."""

from __future__ import annotations

import numpy as np
import pytest

from shipyard.errors import InvalidInput
from shipyard.optimize.parity import ParityError, check_parity


def _logits(scale: float) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((8, 2)).astype(np.float32) * scale


def test_fp32_drift_on_unit_logits_passes_with_the_export_tolerance() -> None:
    ref = _logits(1.0)
    got = ref.copy()
    got[7, 0] += 2.56e-4  # what a 4-layer BERT export through ORT's fusions showed
    worst = check_parity("export", {"logits": ref}, {"logits": got}, atol=1e-4, rtol=1e-3)
    assert worst.output == "logits" and worst.index == [7, 0]
    assert worst.max_abs_diff == pytest.approx(2.56e-4, rel=1e-3)
    assert worst.tolerance == pytest.approx(1e-4 + 1e-3 * np.abs(ref).max())
    # The same drift is too much for an absolute-only check: the old behaviour.
    with pytest.raises(ParityError, match=r"differs from its source by 0.000256 at index \[7, 0\]"):
        check_parity("export", {"logits": ref}, {"logits": got}, atol=1e-4)


def test_tolerance_grows_with_the_outputs_magnitude() -> None:
    big = _logits(100.0)
    got = big + 0.05  # 5e-4 of the scale
    assert check_parity("export", {"logits": big}, {"logits": got}, 1e-4, 1e-3).output == "logits"
    small = _logits(1.0)
    with pytest.raises(ParityError):
        check_parity("export", {"logits": small}, {"logits": small + 0.05}, 1e-4, 1e-3)


def test_a_broken_conversion_fails_naming_the_worst_output() -> None:
    ref = {"logits": _logits(1.0), "hidden": _logits(50.0)}
    got = {"logits": ref["logits"].copy(), "hidden": ref["hidden"] + 0.01}  # hidden: within its scale
    got["logits"][3, 1] += 0.3  # logits: a broken export
    with pytest.raises(ParityError, match=r"step 2 \(pass 'export'\) broke parity: output 'logits' differs from its "
                                          r"source by 0.3 at index \[3, 1\] \(tolerance [\d.e-]+ = atol 0.0001 \+ "
                                          r"rtol 0.001 x max\|source\| [\d.]+\); nothing was published"):
        check_parity("step 2 (pass 'export')", ref, got, 1e-4, 1e-3)


def test_interface_changes_and_bad_values_fail() -> None:
    ref = _logits(1.0)
    with pytest.raises(ParityError, match="output 'logits' has shape \\[8, 3\\], its source gave \\[8, 2\\]"):
        check_parity("export", {"logits": ref}, {"logits": np.zeros((8, 3), np.float32)}, 1e-4, 1e-3)
    with pytest.raises(ParityError, match="output 'logits' is missing"):
        check_parity("export", {"logits": ref}, {"other": ref}, 1e-4, 1e-3)
    bad = ref.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ParityError, match="holds NaN/inf"):
        check_parity("export", {"logits": ref}, {"logits": bad}, 1e-4, 1e-3)
    with pytest.raises(InvalidInput, match="tolerances must be >= 0"):
        check_parity("export", {"logits": ref}, {"logits": ref}, -1.0, 1e-3)


def test_torch_threads_spin_briefly_when_idle_unless_the_user_says_otherwise() -> None:
    import os
    import subprocess
    import sys

    code = "import os, shipyard; print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'))"
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}

    def run(**extra: str) -> str:
        return subprocess.run([sys.executable, "-c", code], env={**env, **extra}, capture_output=True,
                              text=True, check=True).stdout.strip()

    assert run() == "None 30000"
    assert run(OMP_WAIT_POLICY="ACTIVE") == "ACTIVE None"
    assert run(GOMP_SPINCOUNT="5") == "None 5"

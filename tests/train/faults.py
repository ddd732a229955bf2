"""Faults injected into real training runs from the test side, through the loop's public step
callbacks (`on_step` in the config): each rank of a `shipyard train` job imports this module
(the tests run with the repository root as the working directory, so `tests` is importable)."""

from __future__ import annotations

import os
import signal
from typing import Literal

from shipyard.train import StepCallback, StepInfo


def fault(step: int, rank: int, kind: Literal["kill", "raise"]) -> StepCallback:
    """End rank `rank` right after optimizer step `step` (and that step's checkpoint), as a SIGKILL
    (no cleanup, like the OOM killer) or as an exception."""

    def on_step(info: StepInfo) -> None:
        if info.step != step or info.rank != rank:
            return
        if kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError(f"injected fault at step {step}")

    return on_step


def on_step(step: int, rank: int, kind: Literal["kill", "raise"]) -> list[dict[str, object]]:
    """The config's `on_step` entry that injects `fault(step, rank, kind)`."""
    return [{"name": f"{__name__}:fault", "options": {"step": step, "rank": rank, "kind": kind}}]

"""What a run tells people while it runs: a rich progress bar (rank 0), metrics.jsonl, and
TensorBoard event files when the `tensorboard` package is installed. Other ranks stay silent."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class Reporter:
    def __init__(self, out: Path, total_steps: int, enabled: bool, progress: bool,
                 start_step: int = 0) -> None:
        self.enabled = enabled
        self.console = Console(stderr=True)
        self.jsonl = out / "metrics.jsonl"
        self.progress: Progress | None = None
        self.tb: Any = None
        if not enabled:
            return
        out.mkdir(parents=True, exist_ok=True)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tensorboard"))
        except ImportError:  # tensorboard not installed: JSONL only
            self.tb = None
        if progress:
            self.progress = Progress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]} samples/s"),
                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                console=self.console, transient=False,
            )
            self.progress.start()
            self.task = self.progress.add_task("train", total=total_steps, completed=start_step,
                                               loss="-", rate="-")

    def log(self, message: str) -> None:
        if self.enabled:
            self.console.print(message, highlight=False)

    def step(self, step: int, loss: float, samples_per_s: float, lr: float) -> None:
        if not self.enabled:
            return
        if self.progress is not None:
            self.progress.update(self.task, completed=step, loss=f"{loss:.4f}", rate=f"{samples_per_s:,.0f}")
        if self.tb is not None:
            self.tb.add_scalar("train/loss", loss, step)
            self.tb.add_scalar("train/lr", lr, step)
            self.tb.add_scalar("train/samples_per_s", samples_per_s, step)

    def epoch(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.jsonl, "a") as f:
            f.write(json.dumps({"time": time.time(), **record}) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("epoch", "step"):
                    self.tb.add_scalar(f"epoch/{k}", v, record["step"])

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        if self.tb is not None:
            self.tb.close()
            self.tb = None

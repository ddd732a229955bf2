"""Classifiers and other tensor models: accuracy and cross-entropy on a labelled tensor data set
(without labels: agreement with the parent's predictions), size, parameters, and latency at batch 1
and 32, every version loaded together and timed in alternating rounds."""

from __future__ import annotations

from typing import Any

from shipyard.optimize.data import DataSpec, resolve_data
from shipyard.optimize.evaluators.base import Evaluator, PassData
from shipyard.optimize.measure import Versions, measure_side_by_side
from shipyard.optimize.progress import Progress
from shipyard.repository import Manifest, Repository


class Classification(Evaluator):
    def prepare(self, repo: Repository, parent: Manifest, calibrate: DataSpec, train: DataSpec) -> PassData:
        ev, cal, tr = resolve_data(parent, self.options.eval_data, calibrate, train)
        self.data, self.name = ev, ev.name
        return ev, cal, tr

    def measure(self, versions: Versions, parent: Manifest, progress: Progress) -> dict[str, dict[str, Any]]:
        progress.update(f"measuring {parent.name}:{parent.version} (parent) and the new version side by side")
        return measure_side_by_side(versions, parent.signature, self.data, self.options.threads, "parent",
                                    self.options.latency_budget_s)

    def describe(self, parent: Manifest, measured: dict[str, dict[str, Any]]) -> tuple[int, str]:
        labelled = self.data.labels is not None
        return len(self.data), "accuracy on labels" if labelled else f"agreement with v{parent.version}'s predictions"

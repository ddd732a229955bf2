"""The evaluator interface: how the publish step measures a new version beside its parent (and
root) for the report and the manifest. One evaluator per kind of task, each a module here:

    class Perplexity(Evaluator):
        def prepare(self, repo, parent, calibrate, train): ...   # read and check the eval data
        def measure(self, versions, parent, progress): ...       # {key: metrics} for each version
        def describe(self, parent, measured): ...                # (samples, what 'accuracy' means)

Implementers must: read and check their eval data in `prepare`, raising
`shipyard.errors.InvalidInput` with the fix before any pass runs; measure every version from its
saved files (`versions`: {"parent" | "root" | "new": (folder, format, manifest extra)}) in this
process, so the figures compare; name their metrics as `measure.DELTA_KEYS` does where one applies
(accuracy, loss, size_bytes, latency_b1_p50_ms), so deltas, tables and the Pareto plot show them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from shipyard.optimize.data import Dataset, DataSpec
from shipyard.optimize.measure import Versions, deltas
from shipyard.optimize.passes import Context
from shipyard.optimize.progress import Progress
from shipyard.repository import Manifest, Repository

# (eval, calibration, training) data the passes may use, as their Context holds them.
PassData = tuple[Dataset | None, Dataset | None, Dataset | None]


@dataclass
class EvalOptions:
    """What every evaluator is built from; each uses the fields that apply to it."""

    eval_data: DataSpec
    threads: int
    latency_budget_s: float = 2.0
    max_eval_tokens: int = 20_000
    task: str | None = None  # shipyard.tasks name; None: the manifest's, else inferred
    metric: Any = None  # a user metric: 'package.module:function' or a callable (outputs, labels) -> float


class Evaluator(ABC):
    """Measures versions for one kind of task. `name` is the eval data as the report and the
    manifest name it; `prepare` sets it."""

    name: str = ""
    task: str | None = None  # the task measured (shipyard.tasks), stored in the new manifest

    def __init__(self, options: EvalOptions) -> None:
        self.options = options

    @abstractmethod
    def prepare(self, repo: Repository, parent: Manifest, calibrate: DataSpec, train: DataSpec) -> PassData:
        """Read and check the eval data for `parent`; returns the data the passes may use."""

    def facts(self) -> dict[str, Any]:
        """Facts about the evaluation for report.json, recorded after the passes ran."""
        return {}

    @abstractmethod
    def measure(self, versions: Versions, parent: Manifest, progress: Progress) -> dict[str, dict[str, Any]]:
        """Metrics of each version in `versions` that this evaluator measures ('parent' and 'new' at
        least), by the same key."""

    @abstractmethod
    def describe(self, parent: Manifest, measured: dict[str, dict[str, Any]]) -> tuple[int, str]:
        """(samples the metrics were measured on, what the report's 'accuracy' means)."""

    def deltas(self, new: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
        """The report's deltas of `new` against `base` (parent or root)."""
        return deltas(new, base)

    def summarize(self, measured: dict[str, dict[str, Any]], ctx: Context) -> dict[str, Any]:
        """Metrics the new version's manifest records besides its measured ones; may add notes."""
        return {}

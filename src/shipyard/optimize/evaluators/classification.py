"""Tensor models (classifiers, regressors, embedders): the task's metrics and loss on a labelled
tensor data set (without labels: agreement with the parent's outputs and the loss against them),
size, parameters, and latency at batch 1 and 32, every version loaded together and timed in
alternating rounds. The task (`shipyard.tasks`) is `--task`, else the parent's manifest's, else the
subclass's, else inferred from the signature, the labels and the parent's outputs on a few samples."""

from __future__ import annotations

from typing import Any

from shipyard import tasks
from shipyard.optimize.data import DataSpec, resolve_data
from shipyard.optimize.evaluators.base import Evaluator, PassData
from shipyard.optimize.measure import Versions, measure_side_by_side
from shipyard.optimize.passes import Context
from shipyard.optimize.progress import Progress
from shipyard.repository import Manifest, Repository


class Classification(Evaluator):
    fixed: str | None = None  # the task of an evaluator made for one (subclasses)

    def prepare(self, repo: Repository, parent: Manifest, calibrate: DataSpec, train: DataSpec) -> PassData:
        ev, cal, tr = resolve_data(parent, self.options.eval_data, calibrate, train)
        self.data, self.name = ev, ev.name
        given = tasks.check_name(self.options.task) or parent.task or self.fixed
        if given:
            self.task = given
            self.why = "given (--task)" if self.options.task else "from the manifest" if parent.task else "the evaluator's"
        else:
            self.task, self.why = tasks.infer(parent.signature, ev.labels, None if self._plain(parent) else
                                              self._sample(repo, parent))
        self.spec = tasks.get(self.task)
        self.metric = tasks.load_metric(self.options.metric) if self.options.metric is not None else None
        return ev, cal, tr

    def _plain(self, parent: Manifest) -> bool:
        """True when the signature and the labels settle the task without running the model:
        several output units, known, and one integer label per sample (or none)."""
        shape = parent.signature.outputs[0].shape if parent.signature.outputs else []
        labels = self.data.labels
        return bool(shape) and shape[-1] > 1 and (labels is None or (labels.ndim == 1 and labels.dtype.kind in "iu"))

    def _sample(self, repo: Repository, parent: Manifest) -> Any:
        """The parent's outputs on a few eval samples: what inference reads the value range from."""
        from shipyard.optimize.measure import _open

        rt = _open(repo.path(parent.name, parent.version), parent.format, parent.signature, self.options.threads,
                   parent.extra)
        try:
            out = parent.signature.outputs[0].name
            return rt.infer(self.data.take(32), [out])[out]
        finally:
            rt.unload()

    def facts(self) -> dict[str, Any]:
        facts: dict[str, Any] = {"task": {"name": self.task, "why": self.why, "score": self.spec.score}}
        if self.metric is not None:
            facts["task"]["metric"] = self.metric[0]
        return facts

    def measure(self, versions: Versions, parent: Manifest, progress: Progress) -> dict[str, dict[str, Any]]:
        progress.update(f"measuring {parent.name}:{parent.version} (parent) and the new version side by side")
        return measure_side_by_side(versions, parent.signature, self.data, self.options.threads, "parent",
                                    self.options.latency_budget_s, task=self.spec,
                                    metric=self.metric[1] if self.metric else None)

    def describe(self, parent: Manifest, measured: dict[str, dict[str, Any]]) -> tuple[int, str]:
        labelled = self.data.labels is not None
        if self.spec.score == "agreement":
            return len(self.data), f"{self.task}: {self.spec.describe.replace('the parent', f'v{parent.version}')}"
        said = "accuracy on labels" if labelled else f"agreement with v{parent.version}'s predictions"
        return len(self.data), said if self.task == "multiclass" else f"{self.task}: {said}"

    def summarize(self, measured: dict[str, dict[str, Any]], ctx: Context) -> dict[str, Any]:
        ctx.note(f"task {self.task} ({self.why}); ΔL is the {self.task} loss "
                 + ("on the labels" if self.data.labels is not None else "against the parent's outputs"))
        return {}

"""`--auto`: search recipes for the best latency or size within an accuracy-drop budget.

Every candidate is built from the parent, saved to a scratch folder and measured like a published
version. A quantization candidate that misses the budget gets a layer-by-layer fallback, as Intel
Neural Compressor and NNCF do: each layer's sensitivity (ΔL, the task's loss, with only that layer
quantized) is measured, then the most sensitive layers go back to fp32 one at a time until the
budget holds. The winner is
published through the normal runner, so it gets the same report and lineage as any recipe.
"""

from __future__ import annotations

import gc
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from shipyard import tasks
from shipyard.errors import InvalidInput
from shipyard.optimize import formats
from shipyard.optimize.artifact import Artifact
from shipyard.optimize.data import DataSpec, resolve_data
from shipyard.optimize.measure import latencies_side_by_side, measure
from shipyard.optimize.passes import Context
from shipyard.optimize.progress import QUIET, Progress, running
from shipyard.optimize.recipe import PRESETS, parse_recipe, preset, runs_on
from shipyard.optimize.runner import Result, apply_recipe, check_not_larger, optimize
from shipyard.repository import Repository, parse_ref

WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")
MAX_LAYERS = 16  # layers whose sensitivity the fallback measures (one candidate each)


@dataclass
class Candidate:
    label: str
    steps: list[dict[str, Any]]
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    drop: float | None = None  # accuracy points lost vs the parent
    saved: tuple[Path, str, dict[str, Any]] | None = None  # (folder, format, extra) while the search runs
    retimed: bool = False  # its latency is from the finalists' side-by-side rounds

    def fits(self, budget: float) -> bool:
        return self.error is None and self.drop is not None and self.drop <= budget + 1e-9


def candidates(kind: str, has_train: bool, objective: str) -> list[Candidate]:
    """Every preset that applies to this source, so the winner is measured against each of them in
    the same process, plus what no single preset does: other amounts and calibrations, and a smaller
    model (pruned or distilled) followed by int8. Both objectives see the same list: which candidate
    is fastest or smallest here is a measurement, not an assumption (fp16 math, for one, is fast on
    some CPUs and slow on others)."""
    del objective

    def steps_of(name: str) -> list[dict[str, Any]]:
        return [c.record() for c in preset(name, kind, has_train)]

    out: list[Candidate] = []
    for name in PRESETS:
        if kind == "onnx" and not runs_on(PRESETS[name][1][0]["pass"], "onnx"):
            continue  # weight-only layers are PyTorch modules; the rest take ONNX sources
        steps = steps_of(name)
        if not has_train and any(s["pass"] == "distill" for s in steps):
            continue  # nothing to train a student on
        out.append(Candidate(name, steps))
    onnx: list[dict[str, Any]] = [] if kind == "onnx" else [{"pass": "export", "format": "onnx"}]
    out.insert(2, Candidate("int8-static (entropy)", [*onnx, {"pass": "quantize", "mode": "static",
                                                               "calibration": "entropy"}]))
    static, dynamic = {"pass": "quantize", "mode": "static"}, {"pass": "quantize", "mode": "dynamic"}
    half = steps_of("prune-structured-50")
    quarter = [{**half[0], "amount": 0.25}, *half[1:]]
    out += [
        Candidate("prune-structured-25", quarter),
        Candidate("prune-structured-25 + int8-static", [*quarter, static]),
        Candidate("prune-structured-50 + int8-static", [*half, static]),
        Candidate("prune-structured-50 + int8-dynamic", [*half, dynamic]),
    ]
    if has_train:
        student = steps_of("distill-half")
        out += [Candidate("distill-half + int8-static", [*student, static]),
                Candidate("distill-half + int8-dynamic", [*student, dynamic])]
    return out


def _key(steps: list[dict[str, Any]]) -> str:
    return json.dumps(steps, sort_keys=True)


FINALISTS = 4  # fastest fitting candidates timed again side by side before one is chosen


class _Evaluator:
    def __init__(self, repo: Repository, parent: Any, data: tuple[Any, Any, Any], threads: int,
                 budget_s: float, workdir: Path, task: str | None = None, metric: Any = None) -> None:
        self.repo, self.parent, self.data, self.threads, self.budget_s = repo, parent, data, threads, budget_s
        self.workdir = workdir
        self.count = 0
        self.sensitivity: dict[str, Any] | None = None  # the fallback's per-layer ΔL, when it ran
        # ONNX artifacts already built, by the recipe prefix that made them. ONNX passes write new
        # files, so later steps can start from one; torch modules are edited in place by some
        # passes, so they are rebuilt. This runs a distillation or a fine-tune once, not once for
        # every candidate (and every fallback trial) that starts with it.
        self.built: dict[str, Artifact] = {}
        ev = data[0]
        base = repo.path(parent.name, parent.version)
        # The task (shipyard.tasks) and the score the budget is in: the user metric, else the task's.
        self.metric = tasks.load_metric(metric) if metric is not None else None
        given = tasks.check_name(task) or parent.task
        self.parent_metrics, preds = measure(base, parent.format, parent.signature, ev, threads, None,
                                             parent.extra, budget_s, tasks.get(given) if given else None,
                                             self.metric[1] if self.metric else None)
        self.task = given or tasks.infer(parent.signature, ev.labels, preds)[0]
        self.parent_metrics.update(tasks.get(self.task).evaluate(preds, ev.labels, preds))
        self.score = "metric" if self.metric else tasks.get(self.task).score
        self.reference = preds  # agreement (and, without labels, accuracy and ΔL) is against the parent

    def retime(self, finalists: list[Candidate]) -> None:
        """Time the finalists again, loaded together, in alternating rounds. Timed one after the
        other, candidates a few microseconds apart were ranked by the machine's noise: the winner
        of the search then lost to a single preset when both were measured again."""
        versions: dict[str, tuple[Path, str, dict[str, Any]]] = {}
        for i, c in enumerate(finalists):
            assert c.saved is not None
            versions[str(i)] = c.saved
        times = latencies_side_by_side(versions, self.parent.signature, self.data[0], self.threads,
                                       max(self.budget_s, 1.0), rounds=6)
        for i, c in enumerate(finalists):
            c.metrics.update(times[str(i)])
            c.retimed = True

    def build(self, steps: list[dict[str, Any]], folder: Path) -> Artifact:
        """The artifact `steps` make from the parent, from the longest prefix built before."""
        ev, cal, tr = self.data
        ctx = Context(workdir=folder, threads=self.threads, eval_data=ev, calibration=cal, train=tr, task=self.task)
        start = next((i for i in range(len(steps), 0, -1) if _key(steps[:i]) in self.built), 0)
        artifact = self.built[_key(steps[:start])] if start else formats.load(self.repo, self.parent, folder)
        recipe = parse_recipe(steps) if steps else []
        for i in range(start, len(steps)):
            try:
                artifact = apply_recipe(artifact, recipe[i:i + 1], ctx)
            except InvalidInput as e:  # apply_recipe numbered the one step it saw as step 1
                raise InvalidInput(e.message.replace("step 1 (", f"step {i + 1} (", 1)) from None
            if artifact.kind == "onnx":
                self.built[_key(steps[:i + 1])] = artifact
        return artifact

    def run(self, cand: Candidate) -> Candidate:
        self.count += 1
        folder = self.workdir / f"c{self.count}"
        (folder / "out").mkdir(parents=True)
        ev = self.data[0]
        ctx = Context(workdir=folder, threads=self.threads, eval_data=ev, task=self.task)
        try:
            artifact = self.build(cand.steps, folder)
            fmt, extra = formats.save(artifact, folder / "out", ctx)
            del artifact
            gc.collect()  # sessions left by the passes (ORT's calibrator) must not hold threads now
            cand.metrics, _ = measure(folder / "out", fmt, self.parent.signature, ev, self.threads,
                                      self.reference, extra, self.budget_s, tasks.get(self.task),
                                      self.metric[1] if self.metric else None)
            cand.saved = (folder / "out", fmt, extra)
            cand.drop = 100 * (self.parent_metrics.get(self.score, 0) - cand.metrics.get(self.score, 0))
            # Never pick a version larger than its parent (the runner would refuse to publish it);
            # measured first all the same, so a sensitivity probe still tells its layer's ΔL.
            check_not_larger(self.parent, self.repo.path(self.parent.name, self.parent.version), folder / "out",
                             parse_recipe(cand.steps), fmt)
        except InvalidInput as e:
            cand.error = e.message
        return cand


def _weighted_nodes(path: Path) -> list[str]:
    import onnx

    return [n.name for n in onnx.load(str(path), load_external_data=False).graph.node if n.op_type in WEIGHTED_OPS]


def fallback(ev: _Evaluator, cand: Candidate, budget: float, progress: Progress,
             tried: list[Candidate]) -> Candidate | None:
    """Keep the most sensitive layers in fp32, one more at a time, until the candidate fits."""
    quant_at = next(i for i, s in enumerate(cand.steps) if s["pass"] == "quantize")
    ev.count += 1
    folder = ev.workdir / f"c{ev.count}"
    folder.mkdir(parents=True)
    art = ev.build(cand.steps[:quant_at], folder)  # the graph the quantizer sees, to name its layers
    if art.onnx_path is None:
        return None
    layers = _weighted_nodes(art.onnx_path)
    order = layer_sensitivity(ev, cand, quant_at, layers, progress, tried)
    excluded: list[str] = []
    for layer in order:
        excluded.append(layer)
        steps = [dict(s) for s in cand.steps]
        steps[quant_at] = {**steps[quant_at], "exclude": list(excluded)}
        progress.update(f"fallback: {len(excluded)} layer(s) in fp32")
        c = ev.run(Candidate(f"{cand.label}, fp32: {', '.join(excluded)}", steps))
        tried.append(c)
        if c.fits(budget):
            return c
    return None


def layer_sensitivity(ev: _Evaluator, cand: Candidate, quant_at: int, layers: list[str], progress: Progress,
                      tried: list[Candidate]) -> list[str]:
    """Each layer's ΔL (the task's loss) when only it is quantized, by the candidate's own
    quantizer and calibration, most sensitive first (ties: the larger accuracy drop). At most
    `MAX_LAYERS` layers are measured, in graph order; the rest follow, unmeasured. Recorded in
    `ev.sensitivity` for the report."""
    rows: list[dict[str, Any]] = []
    for layer in layers[:MAX_LAYERS]:
        progress.update(f"fallback: sensitivity of {layer}")
        steps = [dict(s) for s in cand.steps]
        steps[quant_at] = {**steps[quant_at], "exclude": [other for other in layers if other != layer]}
        c = ev.run(Candidate(f"{cand.label} only {layer}", steps))
        tried.append(c)
        if c.drop is not None and "loss" in c.metrics:
            rows.append({"layer": layer, "quantize": round(c.metrics["loss"] - ev.parent_metrics["loss"], 6),
                         "drop_pt": round(c.drop, 4)})
    rows.sort(key=lambda r: (r["quantize"], r["drop_pt"]), reverse=True)
    ev.sensitivity = {"criterion": "ΔL with only that layer quantized", "task": ev.task, "layers": rows,
                      "measured": len(rows), "total": len(layers), "capped": len(layers) > MAX_LAYERS}
    measured = [r["layer"] for r in rows]
    return measured + [layer for layer in layers if layer not in measured]


@dataclass
class Searched:
    """Every candidate measured, before the winner is published (`best` None: none fit)."""

    tried: list[Candidate]
    parent: dict[str, Any]  # the parent's metrics, measured like the candidates
    best: Candidate | None
    budget: float
    score: str = "accuracy"  # the metric the budget is in: the task's score, or 'metric' (the user's)


def search(repository: str | Path, ref: str, max_accuracy_drop: float = 1.0,
           objective: Literal["latency", "size"] = "latency", eval_data: DataSpec = None,
           calibrate: DataSpec = None, train: DataSpec = None, threads: int | None = None,
           latency_budget_s: float = 1.0, progress: Progress | None = None,
           candidate_list: list[Candidate] | None = None,
           on_searched: Callable[[Searched], None] | None = None, task: str | None = None,
           metric: Any = None) -> tuple[Result, list[Candidate]]:
    """Measure every candidate, fall back layer by layer where quantization misses the budget,
    publish the best that fits; returns the published result and every candidate measured.
    `on_searched` hears the candidates once all are measured (also when none fits, before the
    error); `progress` hears what is being done (default: nothing is shown). `task` and `metric`
    as for `optimize`: with a user metric, the budget is in its points (hundredths), else in the
    task's score (accuracy; agreement with the parent for regression and embeddings)."""
    if not 0 <= max_accuracy_drop <= 100:
        raise InvalidInput(f"--max-accuracy-drop {max_accuracy_drop} is in accuracy points: 0 to 100")
    if objective not in ("latency", "size"):
        raise InvalidInput(f"--objective {objective!r}: use 'latency' or 'size'")
    progress = progress or QUIET
    threads = threads or len(os.sched_getaffinity(0))
    repo = Repository(repository)
    name, version = parse_ref(ref)
    parent = repo.manifest(name, version)
    data = resolve_data(parent, eval_data, calibrate, train)
    kind = formats.format_of(parent).kind
    cands = candidate_list or candidates(kind, data[2] is not None and data[2].labels is not None, objective)
    tried: list[Candidate] = []
    with tempfile.TemporaryDirectory(prefix="shipyard-search-") as tmp, \
            running(progress, f"measuring {name}:{parent.version}", total=len(cands)):
        ev = _Evaluator(repo, parent, data, threads, latency_budget_s, Path(tmp), task, metric)
        for cand in cands:
            progress.update(cand.label)
            tried.append(ev.run(cand))
            progress.advance()
            if not cand.fits(max_accuracy_drop) and cand.error is None and any(s["pass"] == "quantize" for s in cand.steps) \
                    and cand.steps[-1].get("mode") != "fp16":
                fallback(ev, cand, max_accuracy_drop, progress, tried)
        key = "latency_b1_p50_ms" if objective == "latency" else "size_bytes"
        fitting = [c for c in tried if c.fits(max_accuracy_drop)]
        if objective == "latency" and len(fitting) > 1:
            progress.update(f"timing the {min(FINALISTS, len(fitting))} fastest side by side")
            ev.retime(sorted(fitting, key=lambda c: c.metrics[key])[:FINALISTS])
    best = min(fitting, key=lambda c: c.metrics[key]) if fitting else None
    if on_searched is not None:
        on_searched(Searched(tried, ev.parent_metrics, best, max_accuracy_drop, ev.score))
    if best is None:
        raise InvalidInput(f"no candidate kept {ev.score} within {max_accuracy_drop} points of "
                           f"{name}:{parent.version}; raise --max-accuracy-drop or give --train data for fine-tuning")
    record = [{"candidate": c.label, "steps": c.steps, "error": c.error, "accuracy_drop_pt": c.drop, "retimed": c.retimed,
               **{k: c.metrics.get(k) for k in ("accuracy", "agreement", "loss", "metric", "latency_b1_p50_ms",
                                                "size_bytes")}} for c in tried]
    result = optimize(repository, ref, recipe=best.steps, eval_data=data[0], calibrate=data[1], train=data[2],
                      threads=threads, latency_budget_s=max(latency_budget_s, 1.0), progress=progress,
                      task=ev.task, metric=metric,
                      facts={"search": {"objective": objective, "max_accuracy_drop": max_accuracy_drop,
                                        "score": ev.score, "chosen": best.label, "candidates": record,
                                        **({"sensitivity": ev.sensitivity} if ev.sensitivity else {})}})
    return result, tried

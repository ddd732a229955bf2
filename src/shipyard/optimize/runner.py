"""Running a recipe on a published version, for every format: load it (its format module), apply
each pass (checking conversions against their source), save into a staging folder (the format the
result is in), measure it beside its parent and root in this process (the evaluator of the task),
write report.json + report.html, and publish. Any failure publishes nothing."""

from __future__ import annotations

import gc
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shipyard import tasks
from shipyard.errors import InvalidInput
from shipyard.optimize import evaluators, formats
from shipyard.optimize.artifact import Artifact, run_artifact
from shipyard.optimize.data import DataSpec
from shipyard.optimize.evaluators import EvalOptions, Evaluator
from shipyard.optimize.formats import Format
from shipyard.optimize.measure import ORIGINAL, REPORT_FILES, Versions
from shipyard.optimize.parity import check_parity
from shipyard.optimize.passes import Context, PassConfig, accepts, apply
from shipyard.optimize.progress import QUIET, Progress, running
from shipyard.optimize.recipe import Recipe, load_recipe, parse_recipe, passes_for, preset, presets_for, recipe_task
from shipyard.optimize.sensitivity import sensitivity_facts, with_importance
from shipyard.repository import Lineage, Manifest, Repository, Signature, parse_ref
from shipyard.units import human_size

# Saving re-runs the same ops (torch.export) or the same graph: only float reordering is allowed.
SAVE_ATOL, SAVE_RTOL = 1e-4, 1e-5


@dataclass
class Result:
    manifest: Manifest
    report: dict[str, Any]


def root_of(repo: Repository, manifest: Manifest) -> Manifest:
    seen = {manifest.version}
    while manifest.lineage.parent is not None and manifest.lineage.parent in repo.versions(manifest.name):
        manifest = repo.manifest(manifest.name, manifest.lineage.parent)
        if manifest.version in seen:
            break
        seen.add(manifest.version)
    return manifest


def resolve_recipe(recipe: Recipe | str | Path | list[Any] | None, preset_name: str | None,
                   source_kind: str, has_train: bool) -> Recipe:
    if (recipe is None) == (preset_name is None):
        raise InvalidInput("give exactly one of a recipe (--recipe FILE.yaml) or a preset (--preset NAME)")
    if preset_name is not None:
        return preset(preset_name, source_kind, has_train)
    if isinstance(recipe, (str, Path)):
        return load_recipe(recipe)
    return parse_recipe(recipe)


def check_keeps_format(parent: Manifest, source: Format, steps: Recipe) -> None:
    """A format whose results stay in it runs only the passes that accept it, all of them."""
    others = [c.name for c in steps if not accepts(type(c), source.name)]
    if source.keeps_format and others:
        names = passes_for(source.name)
        which = ", ".join(f"'{n}'" for n in names) + (" pass" if len(names) == 1 else " passes")
        raise InvalidInput(f"{parent.name}:{parent.version} is an {source.name}; its recipe may only use the "
                           f"{which} (presets {', '.join(presets_for(source.name))}), not {others}")


def model_bytes(folder: Path) -> int:
    """The bytes of a version's model files (its manifest and reports are not the model)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()
               and p.name not in REPORT_FILES and p.name != "manifest.json"
               and ORIGINAL not in p.relative_to(folder).parts)


def check_not_larger(parent: Manifest, parent_folder: Path, new_folder: Path, steps: Recipe,
                     new_format: str) -> None:
    """A version never grows: a recipe whose result is larger than its parent, in the parent's
    format, is refused, unless it only converts (every pass `lossless`, e.g. an export), which is
    asking for the other format whatever its size. A result in another format than its parent's
    (a Hugging Face folder pruned into a torch.export program) is not compared: the formats' fixed
    costs differ (a .pt2 carries its graph, ~200 KB on a tiny model). (`lowrank-90` once made a
    292 KB model 310 KB: the factors saved a few weights, the two layers' graph entries cost more.)"""
    if all(c.lossless for c in steps) or new_format != parent.format:
        return
    before, after = model_bytes(parent_folder), model_bytes(new_folder)
    if after > before:
        raise InvalidInput(
            f"the result of {[c.name for c in steps]} would be {human_size(after)}, larger than "
            f"{parent.name}:{parent.version} ({human_size(before)}), so it was not published; a compression "
            "recipe must make the model smaller: compress harder (low-rank: lower 'energy'; prune: raise "
            "'amount'), end with a quantize pass, or export to ONNX at the end of the recipe")


def apply_recipe(artifact: Artifact, recipe: Recipe, ctx: Context,
                 on_step: Callable[[int, PassConfig], None] | None = None) -> Artifact:
    for i, config in enumerate(recipe, start=1):
        if on_step:
            on_step(i, config)
        sample = ctx.sample(artifact.signature, 8) if config.lossless else None
        before = run_artifact(artifact, sample, ctx.threads) if sample is not None else None
        try:
            result = apply(artifact, config, ctx)
        except InvalidInput as e:
            prefix = f"step {i} ({config.name}): "
            raise type(e)(e.message if e.message.startswith(prefix) else prefix + e.message) from None
        if before is not None and sample is not None:
            atol = float(getattr(config, "atol", config.parity_atol))
            rtol = float(getattr(config, "rtol", config.parity_rtol))
            worst = check_parity(f"step {i} (pass '{config.name}')", before, run_artifact(result, sample, ctx.threads),
                                 atol, rtol)
            ctx.facts.setdefault("parity", []).append({"step": i, "pass": config.name, **worst.record(atol, rtol)})
            ctx.note(f"step {i} ({config.name}) checked against its source: largest difference {worst.max_abs_diff:.2g} "
                     f"on '{worst.output}', within {worst.tolerance:.2g} = atol {atol:g} + rtol {rtol:g} x max|output| "
                     f"{worst.scale:.3g}")
        artifact = result
    return artifact


def optimize(repository: str | Path, ref: str, recipe: Recipe | str | Path | list[Any] | None = None,
             preset_name: str | None = None, eval_data: DataSpec = None,
             calibrate: DataSpec = None, train: DataSpec = None, threads: int | None = None,
             latency_budget_s: float = 2.0, progress: Progress | None = None,
             facts: dict[str, Any] | None = None, max_eval_tokens: int = 20_000,
             evaluator: Evaluator | None = None, task: str | None = None, metric: Any = None,
             importance: str | None = None) -> Result:
    """Apply a recipe (or preset) to NAME[:VERSION] and publish the result as the next version.
    `evaluator` measures the versions (default: the task's, else the one the parent's format
    names); `task` (shipyard.tasks) overrides the recipe's, the manifest's and the inferred one;
    `metric` is a user metric ('package.module:function' or a callable (outputs, labels));
    `importance` ('l1' or 'l2') ranks weights for pruning and the sensitivity table; `progress`
    hears what is being done (default: nothing is shown)."""
    progress = progress or QUIET
    threads = threads or len(os.sched_getaffinity(0))
    repo = Repository(repository)
    name, version = parse_ref(ref)
    parent = repo.manifest(name, version)
    root = root_of(repo, parent)
    known = formats.REGISTRY.get(parent.format)
    task = tasks.check_name(task) or recipe_task(recipe)
    if evaluator is None:
        options = EvalOptions(eval_data, threads, latency_budget_s, max_eval_tokens, task, metric)
        default = known.evaluator if known else "classification"
        evaluator = evaluators.REGISTRY[task if task and default == "classification" else default](options)
    ev, cal, tr = evaluator.prepare(repo, parent, calibrate, train)
    source = formats.format_of(parent)
    steps = with_importance(resolve_recipe(recipe, preset_name, source.kind, tr is not None), importance)
    check_keeps_format(parent, source, steps)
    with tempfile.TemporaryDirectory(prefix="shipyard-optimize-") as tmp, \
            running(progress, f"loading {name}:{parent.version}"):
        ctx = Context(workdir=Path(tmp), threads=threads, eval_data=ev, calibration=cal, train=tr,
                      task=evaluator.task)
        ctx.facts.update(facts or {})
        artifact = source.load(repo.path(name, parent.version), parent, ctx.workdir)
        sensitivity_facts(artifact, steps, ctx, importance, progress)
        artifact = apply_recipe(artifact, steps, ctx, lambda i, c: progress.update(f"step {i}/{len(steps)}: {c.name}"))
        ctx.facts.update(evaluator.facts())
        target = formats.target(artifact)
        lineage = Lineage(parent=parent.version, recipe=[c.record() for c in steps])
        reports: list[dict[str, Any]] = []
        with repo.publish(name, target.name, parent.signature, lineage) as stage:
            progress.update("saving")
            extra = target.save(artifact, stage.path, ctx)
            check_not_larger(parent, repo.path(name, parent.version), stage.path, steps, target.name)
            if target.verify_saved:
                sample = ctx.sample(parent.signature, 8)
                saved = _run_saved(stage.path, target.name, parent.signature, extra, sample, threads)
                check_parity("saving the result", run_artifact(artifact, sample, threads), saved, SAVE_ATOL, SAVE_RTOL)
            del artifact  # a model the passes changed must not sit in memory while versions are measured
            gc.collect()  # sessions left by the passes (ORT's calibrator) must not hold threads now
            versions: Versions = {"parent": (repo.path(name, parent.version), parent.format, parent.extra)}
            if root.version != parent.version:
                versions["root"] = (repo.path(name, root.version), root.format, root.extra)
            versions["new"] = (stage.path, target.name, extra)
            measured = evaluator.measure(versions, parent, progress)
            stage.metrics = {**measured["new"], "eval_data": evaluator.name, "threads": threads,
                             **evaluator.summarize(measured, ctx)}
            stage.extra = {**extra, "notes": ctx.notes}
            stage.task = evaluator.task

            def write_report(number: int) -> None:
                from shipyard.optimize.report import build_report, write_reports

                reports.append(build_report(repo, parent, root, steps, measured, ctx, evaluator, threads,
                                            target.name, number))
                write_reports(reports[-1], stage.path)

            stage.on_commit(write_report)
        assert stage.manifest is not None
    return Result(stage.manifest, reports[-1])


def _run_saved(path: Path, fmt: str, sig: Signature, extra: dict[str, Any], sample: dict[str, np.ndarray],
               threads: int) -> dict[str, np.ndarray]:
    from shipyard.runtimes import RuntimeOptions, runtime_for

    m = Manifest(name="check", version=1, format=fmt, files=[], signature=sig, extra=extra)
    rt = runtime_for(m, path, RuntimeOptions(threads=threads))
    rt.load()
    try:
        names = [t.name for t in sig.outputs]
        return rt.infer(sample, names)
    finally:
        rt.unload()


__all__ = ["Result", "optimize", "apply_recipe", "check_not_larger", "resolve_recipe"]

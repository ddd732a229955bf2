"""Running a recipe on a published version: load, apply each pass (checking conversions against
their source), save into a staging folder, measure it beside its parent and root in this process,
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
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from shipyard.errors import InvalidInput
from shipyard.optimize.artifact import Artifact, export_program, load_artifact, run_artifact
from shipyard.optimize.data import Dataset, DataSpec, check_data, load_data
from shipyard.optimize.measure import deltas, measure_side_by_side
from shipyard.optimize.parity import check_parity
from shipyard.optimize.passes import Context, PassConfig, apply
from shipyard.optimize.recipe import Recipe, load_recipe, parse_recipe, preset
from shipyard.repository import Lineage, Manifest, Repository, parse_ref

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


def save_artifact(artifact: Artifact, dest: Path, ctx: Context) -> tuple[str, dict[str, Any]]:
    """Write the artifact's files into `dest`; returns (format, manifest extra)."""
    if artifact.kind == "onnx":
        assert artifact.onnx_path is not None
        from shipyard.optimize.passes.prune_unstructured import save_onnx

        save_onnx(artifact, dest / "model.onnx", ctx)
        return "onnx", {}
    if artifact.is_transformers and "save_as" not in artifact.extra and "weight_only" not in artifact.extra:
        artifact.module.save_pretrained(str(dest), safe_serialization=True)
        return "hf-transformers", {"architecture": artifact.extra["architecture"]}
    sample = ctx.sample(artifact.signature, 4)
    try:
        export_program(artifact, sample, dest / "model.pt2")
    except Exception as e:  # torch.export raises many kinds; say which step and what to do
        raise InvalidInput(f"saving the result as torch.export failed: {str(e).splitlines()[0][:300]}; "
                           "add an `export` pass to ONNX at the end of the recipe") from None
    return "torch-export", {}


def resolve_recipe(recipe: Recipe | str | Path | list[Any] | None, preset_name: str | None,
                   source_kind: str, has_train: bool) -> Recipe:
    if (recipe is None) == (preset_name is None):
        raise InvalidInput("give exactly one of a recipe (--recipe FILE.yaml) or a preset (--preset NAME)")
    if preset_name is not None:
        return preset(preset_name, source_kind, has_train)
    if isinstance(recipe, (str, Path)):
        return load_recipe(recipe)
    return parse_recipe(recipe)


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


def _progress(console: Console) -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                    console=console, transient=True)


def resolve_data(parent: Manifest, eval_data: DataSpec, calibrate: DataSpec,
                 train: DataSpec) -> tuple[Dataset, Dataset | None, Dataset | None]:
    """Load and check the three data sets; a zoo model defaults to its own splits."""
    zoo = parent.extra.get("zoo")
    if zoo and eval_data is None:
        eval_data, calibrate, train = f"zoo:{zoo}", calibrate or f"zoo:{zoo}-train", train or f"zoo:{zoo}-train"
    ev = load_data(eval_data, "eval")
    if ev is None:
        raise InvalidInput(f"{parent.name}:{parent.version} needs eval data: --eval file.npz (one array per "
                           "input, plus optional 'labels') or a built-in split such as zoo:digits")
    sig = parent.signature
    cal = load_data(calibrate, "calibrate")
    tr = load_data(train, "train")
    return (check_data(ev, sig, "eval"), check_data(cal, sig, "calibrate") if cal is not None else None,
            check_data(tr, sig, "train") if tr is not None else None)


def optimize(repository: str | Path, ref: str, recipe: Recipe | str | Path | list[Any] | None = None,
             preset_name: str | None = None, eval_data: DataSpec = None,
             calibrate: DataSpec = None, train: DataSpec = None, threads: int | None = None,
             latency_budget_s: float = 2.0, console: Console | None = None,
             facts: dict[str, Any] | None = None, max_eval_tokens: int = 20_000) -> Result:
    """Apply a recipe (or preset) to NAME[:VERSION] and publish the result as the next version."""
    from shipyard.optimize.report import build_report, write_reports

    console = console or Console(stderr=True)
    threads = threads or len(os.sched_getaffinity(0))
    repo = Repository(repository)
    name, version = parse_ref(ref)
    parent = repo.manifest(name, version)
    root = root_of(repo, parent)
    sig = parent.signature
    if parent.format == "hf-causal-lm":  # measured by held-out perplexity, not by a tensor data set
        from shipyard.optimize.causal_lm import optimize_causal_lm

        steps = resolve_recipe(recipe, preset_name, "torch", False)
        with _progress(console) as progress:
            task = progress.add_task(f"loading {name}:{parent.version}")
            manifest, lm_report = optimize_causal_lm(repo, parent, root, steps, eval_data,
                                                     threads, progress, task, max_eval_tokens)
        return Result(manifest, lm_report)
    ev, cal, tr = resolve_data(parent, eval_data, calibrate, train)
    with tempfile.TemporaryDirectory(prefix="shipyard-optimize-") as tmp, _progress(console) as progress:
        ctx = Context(workdir=Path(tmp), threads=threads, eval_data=ev, calibration=cal, train=tr)
        ctx.facts.update(facts or {})
        task = progress.add_task(f"loading {name}:{parent.version}")
        artifact = load_artifact(repo, parent, ctx.workdir)
        steps = resolve_recipe(recipe, preset_name, artifact.kind, tr is not None)
        artifact = apply_recipe(artifact, steps, ctx, lambda i, c: progress.update(
            task, description=f"step {i}/{len(steps)}: {c.name}"))
        lineage = Lineage(parent=parent.version, recipe=[c.record() for c in steps])
        measured: dict[str, Any] = {}
        with repo.publish(name, "pending", sig, lineage) as stage:
            progress.update(task, description="saving")
            fmt, extra = save_artifact(artifact, stage.path, ctx)
            stage.format = fmt
            if artifact.kind == "torch":  # the saved program is a conversion too: check it
                sample = ctx.sample(sig, 8)
                saved = _run_saved(stage.path, fmt, sig, extra, sample, threads)
                check_parity("saving the result", run_artifact(artifact, sample, threads), saved, SAVE_ATOL, SAVE_RTOL)
            gc.collect()  # sessions left by the passes (ORT's calibrator) must not hold threads now
            progress.update(task, description=f"measuring {name}:{parent.version} (parent) and the new version side by side")
            versions = {"parent": (repo.path(name, parent.version), parent.format, parent.extra)}
            if root.version != parent.version:
                versions["root"] = (repo.path(name, root.version), root.format, root.extra)
            versions["new"] = (stage.path, fmt, extra)
            measured.update(measure_side_by_side(versions, sig, ev, threads, "parent", latency_budget_s))
            nm = measured["new"]
            stage.metrics = {**nm, "eval_data": ev.name, "threads": threads}
            stage.extra = {**extra, "notes": ctx.notes}
            report = build_report(repo, name, parent, root, steps, measured, ctx, ev, threads,
                                  {"format": fmt, "lineage": lineage})
            write_reports(report, stage.path)
        assert stage.manifest is not None
        report["version"] = stage.manifest.version
    return Result(stage.manifest, report)


def _run_saved(path: Path, fmt: str, sig: Any, extra: dict[str, Any], sample: dict[str, np.ndarray],
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


def deltas_for(measured: dict[str, Any]) -> dict[str, Any]:
    out = {"vs_parent": deltas(measured["new"], measured["parent"])}
    out["vs_root"] = deltas(measured["new"], measured.get("root", measured["parent"]))
    return out


__all__ = ["Result", "Dataset", "optimize", "apply_recipe", "save_artifact", "resolve_recipe", "deltas_for"]

"""`shipyard optimize`: run a recipe, a preset or the automatic search, print the report table.
The library reports progress and results as data; this module draws them with rich."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from shipyard.units import human_size

if TYPE_CHECKING:
    from shipyard.optimize.search import Searched


class RichProgress:
    """`shipyard.optimize.progress.Progress` drawn as a rich spinner (work of unknown length) or a
    bar (counted steps) that disappears when the work ends."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.live: Progress | None = None
        self.task: Any = None

    def start(self, description: str, total: int | None = None) -> None:
        if total is None:
            columns: tuple[Any, ...] = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
        else:
            columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                       TimeElapsedColumn())
        self.live = Progress(*columns, console=self.console, transient=True)
        self.live.start()
        self.task = self.live.add_task(description, total=total)

    def update(self, description: str) -> None:
        if self.live is not None:
            self.live.update(self.task, description=description)

    def advance(self) -> None:
        if self.live is not None:
            self.live.advance(self.task)

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()
        self.live = None


def run_optimize(root: Path, ref: str, recipe: Path | list[dict[str, Any]] | None, preset: str | None, auto: bool,
                 max_accuracy_drop: float, objective: str, eval_data: str | None, calibrate: str | None,
                 train: str | None, threads: int | None, as_json: bool, latency_budget_s: float,
                 task: str | None = None, metric: str | None = None, importance: str | None = None) -> None:
    import sys

    from shipyard.errors import InvalidInput

    # Tables are wide: do not squeeze them into 80 columns when the output is a pipe or a file.
    console = Console(stderr=as_json, width=None if sys.stdout.isatty() else 160)
    common: dict[str, Any] = dict(eval_data=eval_data, calibrate=calibrate, train=train, threads=threads,
                                  latency_budget_s=latency_budget_s, progress=RichProgress(console),
                                  task=task, metric=metric)
    if auto:
        if recipe or preset:
            raise InvalidInput("--auto searches recipes itself; drop --recipe/--preset")
        from shipyard.optimize.search import search

        result, _ = search(root, ref, max_accuracy_drop, objective,  # type: ignore[arg-type]
                           on_searched=lambda s: console.print(search_table(s)), **common)
    else:
        if recipe is None and preset is None:
            from shipyard.optimize.recipe import PRESETS

            raise InvalidInput(f"give --recipe FILE.yaml, --preset NAME ({', '.join(PRESETS)}) or --auto")
        from shipyard.optimize.runner import optimize

        result = optimize(root, ref, recipe=recipe, preset_name=preset, importance=importance, **common)
    if as_json:
        print(json.dumps(result.report, indent=2, default=str))
        return
    console.print(report_table(result.report))
    sens = sensitivity_table(result.report)
    if sens is not None:
        console.print(sens)
    for note in result.report["notes"]:
        console.print(f"  [dim]- {note}[/]", highlight=False)
    folder = root / result.manifest.name / str(result.manifest.version)
    console.print(f"published [bold]{result.manifest.name}:{result.manifest.version}[/] "
                  f"({result.manifest.format}); report: {folder / 'report.html'}")


def report_table(report: dict[str, Any]) -> Table:
    """The report's measurements, one row per version, and the deltas against the parent."""
    from shipyard.optimize.report import cell, columns

    cols = columns(report)

    t = Table(title=f"{report['model']}:{report['version']} from v{report['parent']} "
                    f"({', '.join(s['pass'] for s in report['recipe'])}) on {report['eval_data']}")
    t.add_column("version")
    t.add_column("format")
    for label, _ in cols:
        t.add_column(label, justify="right")
    for row in report["rows"]:
        t.add_row(f"v{row['version']} {row['role']}", row["format"], *[cell(k, row["metrics"].get(k)) for _, k in cols])
    d = report["deltas"]["vs_parent"]
    score = report.get("facts", {}).get("task", {}).get("score", "accuracy")
    t.caption = (f"vs parent: speed-up b1 {d.get('speedup_b1', float('nan')):.2f}x, b32 {d.get('speedup_b32', float('nan')):.2f}x; "
                 f"size x{d.get('size_ratio', float('nan')):.2f}; {score} {100 * d.get(score, float('nan')):+.2f} pt; "
                 f"ΔL {d.get('loss', float('nan')):+.4f}  |  {report['machine']['summary']}, {report['machine']['threads']} threads")
    return t


def sensitivity_table(report: dict[str, Any]) -> Table | None:
    """Each layer's ΔL with only it changed, and the criterion; None when none was measured."""
    from shipyard.optimize.report import sensitivity

    sens = sensitivity(report)
    if not sens or not sens.get("layers"):
        return None
    kinds = [k for k in ("quantize", "prune") if any(k in r for r in sens["layers"])]
    t = Table(title=f"per-layer sensitivity: ΔL ({sens.get('task')} loss) with only that layer changed; "
                    f"criterion {sens.get('criterion')}",
              caption=f"{sens['measured']} of {sens['total']} layers measured (the cap)" if sens.get("capped") else None)
    t.add_column("layer")
    for k in kinds:
        t.add_column(f"ΔL {k}", justify="right")
    for r in sens["layers"]:
        t.add_row(r["layer"], *[f"{r[k]:+.4g}" if k in r else "-" for k in kinds])
    return t


def search_table(searched: Searched) -> Table:
    """Every candidate the search measured, and the one it chose."""
    tried, parent, best, budget = searched.tried, searched.parent, searched.best, searched.budget
    score = searched.score

    def shown(v: Any) -> str:
        return f"{v:.2%}" if score in ("accuracy", "agreement") else f"{v:.4g}"
    t = Table(title=f"auto search: {len(tried)} candidates, budget {budget} {score} points "
                    f"(parent: {shown(parent.get(score, 0))}, {parent.get('latency_b1_p50_ms', 0):.3f} ms, "
                    f"{human_size(parent.get('size_bytes', 0))})",
              caption="* the fastest that fit, timed again side by side" if any(c.retimed for c in tried) else None)
    for col in ("candidate", score, "drop pt", "ΔL", "b1 p50 ms", "size", "fits", ""):
        t.add_column(col, justify="left" if col == "candidate" else "right")
    for c in tried:
        m = c.metrics
        if c.error:
            t.add_row(c.label, "-", "-", "-", "-", "-", "error", c.error[:60])
            continue
        dl = m.get("loss", float("nan")) - parent.get("loss", float("nan"))
        t.add_row(c.label, shown(m.get(score, 0)), f"{c.drop:+.2f}", f"{dl:+.4f}",
                  f"{m.get('latency_b1_p50_ms', 0):.3f}" + (" *" if c.retimed else ""),
                  human_size(m.get("size_bytes", 0)), "yes" if c.fits(budget) else "no",
                  "[bold green]chosen[/]" if c is best else "")
    return t

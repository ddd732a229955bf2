"""`shipyard optimize`: run a recipe, a preset or the automatic search, print the report table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console


def run_optimize(root: Path, ref: str, recipe: Path | None, preset: str | None, auto: bool,
                 max_accuracy_drop: float, objective: str, eval_data: str | None, calibrate: str | None,
                 train: str | None, threads: int | None, as_json: bool, latency_budget_s: float) -> None:
    import sys

    from shipyard.errors import InvalidInput
    from shipyard.optimize.report import table

    # Tables are wide: do not squeeze them into 80 columns when the output is a pipe or a file.
    console = Console(stderr=as_json, width=None if sys.stdout.isatty() else 160)
    common: dict[str, Any] = dict(eval_data=eval_data, calibrate=calibrate, train=train, threads=threads,
                                  latency_budget_s=latency_budget_s, console=console)
    if auto:
        if recipe or preset:
            raise InvalidInput("--auto searches recipes itself; drop --recipe/--preset")
        from shipyard.optimize.search import search

        result, _ = search(root, ref, max_accuracy_drop, objective, **common)  # type: ignore[arg-type]
    else:
        if recipe is None and preset is None:
            raise InvalidInput("give --recipe FILE.yaml, --preset NAME (int8-dynamic, int8-static, fp16, "
                               "prune-structured-50, lowrank-90, distill-half) or --auto")
        from shipyard.optimize.runner import optimize

        result = optimize(root, ref, recipe=recipe, preset_name=preset, **common)
    if as_json:
        print(json.dumps(result.report, indent=2, default=str))
        return
    console.print(table(result.report))
    for note in result.report["notes"]:
        console.print(f"  [dim]- {note}[/]", highlight=False)
    folder = root / result.manifest.name / str(result.manifest.version)
    console.print(f"published [bold]{result.manifest.name}:{result.manifest.version}[/] "
                  f"({result.manifest.format}); report: {folder / 'report.html'}")

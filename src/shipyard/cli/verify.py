"""`shipyard models verify`: every file of every version (or of one model or version) checked
against the sha256 its manifest recorded when it was published."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from shipyard.errors import IntegrityError
from shipyard.repository import Manifest, Repository, parse_ref
from shipyard.units import human_size

console = Console()


def _targets(repo: Repository, ref: str | None) -> list[tuple[str, int]]:
    if ref is None:
        return [(n, v) for n in repo.models() for v in repo.versions(n)]
    name, version = parse_ref(ref)
    if version is None:
        repo.resolve(name)  # NotFound naming the models there are
        return [(name, v) for v in repo.versions(name)]
    return [(name, repo.resolve(name, version))]


def verify_models(root: Path, ref: str | None, as_json: bool) -> bool:
    """Check and print the results (a table, or JSON); True when every version is intact."""
    repo = Repository(root)
    targets = _targets(repo, ref)
    manifests: dict[tuple[str, int], Manifest | str] = {}
    for n, v in targets:
        try:
            manifests[(n, v)] = repo.manifest(n, v)
        except IntegrityError as e:
            manifests[(n, v)] = e.message
    total = sum(m.size_bytes for m in manifests.values() if isinstance(m, Manifest))
    results: list[dict[str, Any]] = []
    # On stderr, gone when done: stdout holds only the results (a script may read the JSON).
    progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                        TimeRemainingColumn(), console=Console(stderr=True), transient=True, disable=as_json)
    with progress:
        task = progress.add_task("verifying", total=total)
        for (n, v), m in manifests.items():
            if not isinstance(m, Manifest):
                results.append({"name": n, "version": v, "ok": False, "files": None, "size_bytes": None,
                                "problems": [m]})
                continue
            progress.update(task, description=f"{n}:{v}")
            start = progress.tasks[0].completed
            problems = repo.check(m, on_bytes=lambda k: progress.advance(task, k))
            progress.update(task, completed=start + m.size_bytes)  # files not read still count
            results.append({"name": n, "version": v, "ok": not problems, "files": len(m.files),
                            "size_bytes": m.size_bytes, "problems": problems})
    ok = all(r["ok"] for r in results)
    if as_json:
        print(json.dumps(results, indent=2))
        return ok
    if not results:
        console.print(f"no models in {root}; nothing to verify")
        return ok
    table = Table(title=f"verified against the manifests in {root}")
    for col in ("model", "version", "files", "size", "result"):
        table.add_column(col)
    for r in results:
        verdict = "[green]ok[/]" if r["ok"] else "[bold red]FAILED[/]\n" + "\n".join(escape(p) for p in r["problems"])
        table.add_row(r["name"], str(r["version"]), str(r["files"] if r["files"] is not None else "-"),
                      human_size(r["size_bytes"]) if r["size_bytes"] is not None else "-", verdict)
    console.print(table)
    failed = sum(not r["ok"] for r in results)
    console.print(f"{len(results) - failed} of {len(results)} versions intact" + (f", {failed} failed" if failed else ""))
    return ok

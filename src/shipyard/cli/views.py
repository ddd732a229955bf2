"""What the `models` commands print: rich tables for people, JSON for scripts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from shipyard.errors import IntegrityError
from shipyard.repository import Manifest, Repository, parse_ref
from shipyard.units import human_size

console = Console()


def _summary(m: Manifest) -> dict[str, Any]:
    return {
        "name": m.name, "version": m.version, "format": m.format, "size_bytes": m.size_bytes,
        "parent": m.lineage.parent, "created": m.created.isoformat(), "metrics": m.metrics, "task": m.task,
    }


def _row(repo: Repository, name: str, version: int) -> dict[str, Any]:
    """A version's summary, or its name, number and why its manifest cannot be read: one
    broken manifest must not hide the rest of the repository."""
    try:
        return {**_summary(repo.manifest(name, version)), "error": None}
    except IntegrityError as e:
        return {"name": name, "version": version, "error": e.message}


def list_models(root: Path, as_json: bool) -> None:
    repo = Repository(root)
    rows = [_row(repo, n, v) for n in repo.models() for v in repo.versions(n)]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        console.print(f"no models in {root}; try `shipyard demo --no-serve`")
        return
    table = Table(title=f"models in {root}")
    from shipyard.tasks import headline

    for col in ("model", "version", "format", "task", "size", "parent", "quality", "created"):
        table.add_column(col)
    for r in rows:
        if r["error"] is not None:
            table.add_row(r["name"], str(r["version"]), "[bold red]broken[/]", *["-"] * 5)
            continue
        table.add_row(r["name"], str(r["version"]), r["format"], r["task"] or "-", human_size(r["size_bytes"]),
                      str(r["parent"] or "-"), headline(r["task"], r["metrics"]) or "-", r["created"][:19])
    console.print(table)
    for r in rows:
        if r["error"] is not None:
            console.print(f"[bold red]{r['name']}:{r['version']} is broken:[/] {escape(r['error'])}",
                          highlight=False, soft_wrap=True)


def show_model(root: Path, ref: str, as_json: bool) -> None:
    repo = Repository(root)
    name, version = parse_ref(ref)
    m = repo.manifest(name, version)
    if as_json:
        print(m.model_dump_json(indent=2))
        return
    console.print(f"[bold]{m.name}:{m.version}[/]  format {m.format}  {human_size(m.size_bytes)}  created {m.created:%Y-%m-%d %H:%M}"
                  + (f"  task {m.task}" if m.task else ""))
    sig = Table(title="signature")
    for col in ("", "name", "datatype", "shape"):
        sig.add_column(col)
    for kind, specs in (("input", m.signature.inputs), ("output", m.signature.outputs)):
        for s in specs:
            sig.add_row(kind, s.name, s.datatype, str(s.shape))
    console.print(sig)
    if m.metrics:
        met = Table(title="metrics")
        met.add_column("metric")
        met.add_column("value", justify="right")
        for k, v in m.metrics.items():
            met.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
        console.print(met)
    console.print(lineage_tree(repo, name))


def lineage_tree(repo: Repository, name: str) -> Tree:
    """Every version of a model, each under the parent it was made from."""
    from shipyard.tasks import headline

    manifests: dict[int, Manifest] = {}
    tree = Tree(f"[bold]{name}[/] lineage")
    for v in repo.versions(name):
        try:
            manifests[v] = repo.manifest(name, v)
        except IntegrityError as e:
            tree.add(f"v{v} [bold red]broken[/]: {escape(e.message)}")
    nodes: dict[int, Tree] = {}
    for v, m in sorted(manifests.items()):
        recipe = ", ".join(_step_label(step) for step in m.lineage.recipe)
        mt = m.metrics
        figures = "  ".join(x for x in (
            human_size(mt.get("size_bytes", m.size_bytes)),
            f"{mt['latency_b1_p50_ms']:.3f} ms" if isinstance(mt.get("latency_b1_p50_ms"), float) else "",
            headline(m.task, mt) or "") if x)
        label = f"v{v} {m.format}  {figures}" + (f"  [dim]{recipe}[/]" if recipe else "")
        parent = nodes.get(m.lineage.parent) if m.lineage.parent else None
        nodes[v] = (parent or tree).add(label)
    return tree


def _step_label(step: dict[str, Any]) -> str:
    """'quantize(mode=static)': the pass and the settings that tell recipes apart."""
    name = str(step.get("pass", step))
    keys = [k for k in ("mode", "format", "amount", "bits", "energy", "ratio", "calibration", "quantize", "from",
                        "flavor") if step.get(k) is not None]
    return name + (f"({', '.join(f'{k}={step[k]}' for k in keys)})" if keys else "")


def import_model(root: Path, path: Path, name: str, inputs: list[str], outputs: list[str],
                 trust_pickle: bool, as_json: bool, task: str | None = None) -> None:
    from shipyard.optimize.sources import import_model as do_import
    from shipyard.runtimes.importer import parse_tensor_spec

    m = do_import(
        Repository(root), path, name,
        inputs=[parse_tensor_spec(s) for s in inputs] or None,
        outputs=[parse_tensor_spec(s) for s in outputs] or None,
        trust_pickle=trust_pickle, task=task,
    )
    if as_json:
        print(m.model_dump_json(indent=2))
    else:
        console.print(f"published [bold]{m.name}:{m.version}[/] ({m.format}, {human_size(m.size_bytes)}"
                      + (f", task {m.task})" if m.task else ")"))

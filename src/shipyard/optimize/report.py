"""Reports: report.json (everything measured, for scripts), report.html (self-contained: tables and
an inline-SVG Pareto plot of accuracy vs latency over the lineage, marker area = file size; opens
offline). The command line prints the same columns (`columns`, `cell`) as a table: size and latency, then
the task's metrics."""

from __future__ import annotations

import html
import json
import math
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shipyard import __version__
from shipyard.optimize.evaluators import Evaluator
from shipyard.optimize.passes import Context, PassConfig
from shipyard.quant import cpu
from shipyard.repository import Manifest, Repository
from shipyard.units import human_size


def _lineage_points(repo: Repository, name: str, new: dict[str, Any], new_version: int,
                    new_parent: int, fresh: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every version's point; those measured in this run (parent, root) use this run's figures,
    the rest the figures recorded when they were published (imported ones may have none)."""
    points = []
    for v in repo.versions(name):
        m = repo.manifest(name, v)
        mt = fresh.get(v, m.metrics)
        points.append({"version": v, "parent": m.lineage.parent, "format": m.format,
                       "recipe": [s.get("pass") for s in m.lineage.recipe],
                       "accuracy": mt.get("accuracy"), "latency_b1_p50_ms": mt.get("latency_b1_p50_ms"),
                       "size_bytes": mt.get("size_bytes", m.size_bytes)})
    points.append({"version": new_version, "parent": new_parent, "format": new.get("format"),
                   "recipe": new.get("recipe"), "accuracy": new["metrics"].get("accuracy"),
                   "latency_b1_p50_ms": new["metrics"].get("latency_b1_p50_ms"),
                   "size_bytes": new["metrics"].get("size_bytes"), "new": True})
    return points


def build_report(repo: Repository, parent: Manifest, root: Manifest, steps: list[PassConfig],
                 measured: dict[str, Any], ctx: Context, evaluator: Evaluator, threads: int,
                 fmt: str, version: int) -> dict[str, Any]:
    """The report of `version` (the number its staging folder is published as), made from `parent`."""
    name = parent.name
    rows = [{"role": "parent", "version": parent.version, "format": parent.format, "metrics": measured["parent"]}]
    if "root" in measured:
        rows.insert(0, {"role": "root", "version": root.version, "format": root.format, "metrics": measured["root"]})
    rows.append({"role": "new", "version": version, "format": fmt, "metrics": measured["new"]})
    features = cpu.cpu_features()
    samples, accuracy_is = evaluator.describe(parent, measured)
    return {
        "model": name, "version": version, "parent": parent.version, "root": root.version,
        "recipe": [c.record() for c in steps], "format": fmt,
        "eval_data": evaluator.name, "samples": samples, "accuracy_is": accuracy_is,
        "rows": rows,
        "deltas": {"vs_parent": evaluator.deltas(measured["new"], measured["parent"]),
                   "vs_root": evaluator.deltas(measured["new"], measured.get("root", measured["parent"]))},
        "notes": ctx.notes, "facts": ctx.facts,
        # Load average: other processes on the machine disturb latencies; readers should know.
        "machine": {"cpu": features, "threads": threads, "summary": cpu.describe(features),
                    "loadavg": list(os.getloadavg())},
        "lineage": _lineage_points(repo, name, {"format": fmt, "recipe": [c.name for c in steps],
                                                "metrics": measured["new"]}, version, parent.version,
                                   {r["version"]: r["metrics"] for r in rows if r["role"] != "new"}),
        "created": datetime.now(UTC).isoformat(), "shipyard_version": __version__,
    }


def cell(key: str, v: Any) -> str:
    """A metric as the report's tables show it."""
    if v is None:
        return "-"
    if key == "size_bytes":
        return human_size(v)
    if key in ("accuracy", "agreement"):
        return f"{v:.2%}"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 1000 else f"{v:,.0f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


COLUMNS = [("size", "size_bytes"), ("params", "parameters"), ("non-zero", "nonzero_parameters"),
           ("b1 p50 ms", "latency_b1_p50_ms"), ("b1 p99 ms", "latency_b1_p99_ms"),
           ("b32 p50 ms", "latency_b32_p50_ms"), ("b32 p99 ms", "latency_b32_p99_ms"),
           ("accuracy", "accuracy"), ("loss", "loss")]

# The quality columns of each task (shipyard.tasks), in place of accuracy and loss.
TASK_COLUMNS: dict[str, list[tuple[str, str]]] = {
    "multiclass": [("accuracy", "accuracy"), ("top-5", "top5"), ("agreement", "agreement"), ("CE", "loss")],
    "binary": [("accuracy", "accuracy"), ("AUC", "auc"), ("agreement", "agreement"), ("BCE", "loss")],
    "multilabel": [("accuracy", "accuracy"), ("F1 macro", "f1_macro"), ("agreement", "agreement"), ("BCE", "loss")],
    "regression": [("MSE", "mse"), ("MAE", "mae"), ("R²", "r2"), ("agreement", "agreement"), ("loss", "loss")],
    "language-modelling": [("accuracy", "accuracy"), ("perplexity", "perplexity"), ("agreement", "agreement"),
                           ("NLL", "loss")],
    "embeddings": [("cosine", "cosine"), ("agreement", "agreement"), ("1 - cos", "loss")],
}


def columns(report: dict[str, Any]) -> list[tuple[str, str]]:
    """The report's columns: size, parameters and latency, then its task's metrics (and the user
    metric, by its name), or accuracy and loss when the task is not known."""
    task = report.get("facts", {}).get("task", {})
    quality = TASK_COLUMNS.get(task.get("name", ""), COLUMNS[-2:])
    rows = [r["metrics"] for r in report.get("rows", [])]
    quality = [(label, k) for label, k in quality if k in ("accuracy", "loss") or any(k in m for m in rows)]
    extra = [(str(task["metric"]), "metric")] if task.get("metric") else []
    return COLUMNS[:-2] + quality + extra


def sensitivity(report: dict[str, Any]) -> dict[str, Any] | None:
    """The per-layer sensitivity the report holds: the recipe's, else the search fallback's."""
    facts = report.get("facts", {})
    return facts.get("sensitivity") or facts.get("search", {}).get("sensitivity")


def sensitivity_html(report: dict[str, Any], esc: Any) -> str:
    sens = sensitivity(report)
    if not sens or not sens.get("layers"):
        return ""
    kinds = [k for k in ("quantize", "prune") if any(k in r for r in sens["layers"])]
    head = "".join(f"<th>ΔL {k}</th>" for k in kinds)
    rows = "".join(f"<tr><td>{esc(r['layer'])}</td>" + "".join(f"<td>{r.get(k, float('nan')):+.4g}</td>" for k in kinds)
                   + "</tr>" for r in sens["layers"])
    capped = f"; {sens['measured']} of {sens['total']} layers measured" if sens.get("capped") else ""
    return (f"<h2>Per-layer sensitivity</h2><p>ΔL ({esc(sens.get('task', ''))} loss) with only that layer changed; "
            f"criterion {esc(str(sens.get('criterion')))}{esc(capped)}.</p>"
            f"<table><tr><th>layer</th>{head}</tr>{rows}</table>")


def write_reports(report: dict[str, Any], folder: Path) -> None:
    (folder / "report.json").write_text(json.dumps(report, indent=2, default=str))
    (folder / "report.html").write_text(render_html(report))


def pareto_svg(points: list[dict[str, Any]], width: int = 640, height: int = 400) -> str:
    """Accuracy (y) vs b1 latency (x, log scale) with marker area proportional to file size; the
    Pareto front (no other version both faster and more accurate) is joined by a line."""
    pts = [p for p in points if p.get("accuracy") is not None and p.get("latency_b1_p50_ms")]
    if not pts:
        return "<p>No version has both accuracy and latency measured.</p>"
    pad = 60
    xs = [math.log10(p["latency_b1_p50_ms"]) for p in pts]
    ys = [p["accuracy"] for p in pts]
    x0, x1 = min(xs) - 0.1, max(xs) + 0.1
    y0, y1 = min(ys) - 0.01, min(1.0, max(ys) + 0.01) + 0.005
    sx = lambda x: pad + (x - x0) / (x1 - x0) * (width - 2 * pad)  # noqa: E731
    sy = lambda y: height - pad - (y - y0) / (y1 - y0) * (height - 2 * pad)  # noqa: E731
    biggest = max(p.get("size_bytes") or 1 for p in pts)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             'aria-label="accuracy versus latency" style="font:12px sans-serif">',
             f'<rect x="0" y="0" width="{width}" height="{height}" fill="white"/>',
             f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#333"/>',
             f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="#333"/>',
             f'<text x="{width / 2}" y="{height - 15}" text-anchor="middle">latency at batch 1, p50 (ms, log scale)</text>',
             f'<text x="15" y="{height / 2}" transform="rotate(-90 15 {height / 2})" text-anchor="middle">accuracy</text>']
    for i in range(5):  # ticks
        xv = x0 + (x1 - x0) * i / 4
        yv = y0 + (y1 - y0) * i / 4
        parts.append(f'<text x="{sx(xv):.1f}" y="{height - pad + 16}" text-anchor="middle">{10 ** xv:.3g}</text>')
        parts.append(f'<text x="{pad - 6}" y="{sy(yv) + 4:.1f}" text-anchor="end">{yv:.1%}</text>')
    front = sorted((p for p in pts if not any(
        q is not p and q["latency_b1_p50_ms"] <= p["latency_b1_p50_ms"] and q["accuracy"] >= p["accuracy"]
        and (q["latency_b1_p50_ms"], q["accuracy"]) != (p["latency_b1_p50_ms"], p["accuracy"]) for q in pts)),
        key=lambda p: p["latency_b1_p50_ms"])
    if len(front) > 1:
        path = " ".join(f"{sx(math.log10(p['latency_b1_p50_ms'])):.1f},{sy(p['accuracy']):.1f}" for p in front)
        parts.append(f'<polyline points="{path}" fill="none" stroke="#2a7" stroke-dasharray="4 3"/>')
    for p in pts:
        r = 4 + 16 * math.sqrt((p.get("size_bytes") or 1) / biggest)
        cx, cy = sx(math.log10(p["latency_b1_p50_ms"])), sy(p["accuracy"])
        color = "#d33" if p.get("new") else ("#2a7" if p in front else "#47c")
        title = html.escape(f"v{p['version']} {p.get('format')} {', '.join(map(str, p.get('recipe') or [])) or 'source'}: "
                            f"{p['accuracy']:.2%}, {p['latency_b1_p50_ms']:.3f} ms, {p.get('size_bytes') or 0:,} bytes")
        parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="{r:.1f}" fill="{color}" fill-opacity="0.45" '
                     f'stroke="{color}"><title>{title}</title></circle>')
        parts.append(f'<text x="{cx + r + 3:.1f}" y="{cy + 4:.1f}">v{p["version"]}</text>')
    parts.append("</svg>")
    return "".join(parts)


def render_html(report: dict[str, Any]) -> str:
    esc = html.escape
    cols = columns(report)
    head = "".join(f"<th>{esc(label)}</th>" for label, _ in cols)
    rows = "".join(
        f"<tr><td>v{r['version']} {esc(r['role'])}</td><td>{esc(r['format'])}</td>"
        + "".join(f"<td>{esc(cell(k, r['metrics'].get(k)))}</td>" for _, k in cols) + "</tr>"
        for r in report["rows"])
    def delta_rows(d: dict[str, Any]) -> str:
        return "".join(f"<tr><td>{esc(k)}</td><td>{v:.4g}</td></tr>" for k, v in d.items())
    recipe = esc(json.dumps(report["recipe"], indent=2))
    notes = "".join(f"<li>{esc(n)}</li>" for n in report["notes"]) or "<li>none</li>"
    lineage = "".join(
        f"<tr><td>v{p['version']}</td><td>{'v' + str(p['parent']) if p['parent'] else '-'}</td><td>{esc(str(p.get('format')))}</td>"
        f"<td>{esc(', '.join(map(str, p.get('recipe') or [])) or 'source')}</td>"
        f"<td>{esc(cell('accuracy', p.get('accuracy')))}</td><td>{esc(cell('x', p.get('latency_b1_p50_ms')))}</td>"
        f"<td>{esc(cell('size_bytes', p.get('size_bytes')))}</td></tr>" for p in report["lineage"])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>shipyard report: {esc(report['model'])}:{report['version']}</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}td:first-child,th:first-child{{text-align:left}}pre{{background:#f6f6f6;padding:1em}}</style>
</head><body>
<h1>{esc(report['model'])}:{report['version']} <small>from v{report['parent']} (root v{report['root']})</small></h1>
<p>Measured in one process on {esc(report['machine']['summary'])}, {report['machine']['threads']} threads;
eval data {esc(report['eval_data'])} ({report['samples']} samples; accuracy is {esc(report['accuracy_is'])}).
Latency: p50/p99 after warm-up.</p>
<h2>Measurements</h2><table><tr><th>version</th><th>format</th>{head}</tr>{rows}</table>
<h2>Deltas</h2><table><tr><th>vs parent</th><th></th></tr>{delta_rows(report['deltas']['vs_parent'])}</table>
<table><tr><th>vs root</th><th></th></tr>{delta_rows(report['deltas']['vs_root'])}</table>
<h2>Accuracy vs latency over the lineage</h2>
<p>Marker area is proportional to file size; red is this version; the dashed line joins the Pareto front.
The parent and root show this run's figures; other versions those measured when they were made.</p>
{pareto_svg(report['lineage'])}
<h2>Lineage</h2><table><tr><th>version</th><th>parent</th><th>format</th><th>recipe</th><th>accuracy</th><th>b1 p50 ms</th><th>size</th></tr>{lineage}</table>
{sensitivity_html(report, esc)}
<h2>Recipe</h2><pre>{recipe}</pre>
<h2>Notes</h2><ul>{notes}</ul>
<p><small>shipyard {esc(report['shipyard_version'])}, {esc(report['created'])}</small></p>
</body></html>
"""

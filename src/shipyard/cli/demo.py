"""`shipyard demo`: from nothing to a served, measured model."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from shipyard.config import Settings
from shipyard.repository import Lineage, Manifest, Repository

console = Console(width=110)
NAME = "digits"


def _existing(repo: Repository) -> tuple[Manifest, Manifest] | None:
    """The demo's two versions, when a previous run published them."""
    found: dict[str, Manifest] = {}
    for v in repo.versions(NAME):
        m = repo.manifest(NAME, v)
        if m.extra.get("zoo") == "digits" and m.format not in found:
            found[m.format] = m
    if "torch-export" in found and "onnx" in found:
        return found["torch-export"], found["onnx"]
    return None


def build(repo: Repository, threads: int) -> tuple[Manifest, Manifest]:
    from shipyard.optimize.evaluate import (
        count_parameters_onnx,
        count_parameters_torch,
        measure_classifier,
        open_runtime,
    )
    from shipyard.zoo import digits

    existing = _existing(repo)
    if existing:
        console.print(f"reusing {NAME}:{existing[0].version} and {NAME}:{existing[1].version} from {repo.root}")
        return existing
    test = digits.load("test")
    model = train_digits()
    params = count_parameters_torch(model)
    with console.status("publishing version 1 (torch.export) and measuring it..."):
        with repo.publish(NAME, "torch-export", digits.SIGNATURE,
                          Lineage(source="shipyard.zoo.digits (trained here)")) as stage:
            digits.export_program(model, stage.path / "model.pt2")
            rt = open_runtime(stage.path, "torch-export", digits.SIGNATURE, threads)
            stage.metrics = {"parameters": params, **measure_classifier(rt, test.pixels, test.labels)}
            stage.extra["zoo"] = "digits"
        v1 = stage.manifest
    assert v1 is not None
    with console.status("exporting to ONNX (version 2) and measuring it..."):
        with repo.publish(NAME, "onnx", digits.SIGNATURE,
                          Lineage(parent=v1.version, recipe=[{"pass": "export", "format": "onnx", "opset": 17}])) as stage:
            digits.export_onnx(model, stage.path / "model.onnx")
            rt = open_runtime(stage.path, "onnx", digits.SIGNATURE, threads)
            metrics = measure_classifier(rt, test.pixels, test.labels)
            stage.metrics = {"parameters": count_parameters_onnx(stage.path / "model.onnx"), **metrics}
            stage.extra["zoo"] = "digits"
        v2 = stage.manifest
    assert v2 is not None
    # Serve both versions side by side: /v2/models/digits/versions/1 and .../2 (default: 2).
    config = repo.model_config(NAME)
    repo.write_model_config(NAME, config.model_copy(update={"version_policy": "all"}))
    return v1, v2


def train_digits() -> Any:
    """digits.train() under a progress bar drawn from its step callback."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from shipyard.train.callbacks import StepInfo
    from shipyard.zoo import digits

    columns = (TextColumn("training digits on scikit-learn's digits"), BarColumn(), MofNCompleteColumn(),
               TextColumn("steps, loss {task.fields[loss]}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("digits", total=None, loss="-")

        def on_step(info: StepInfo) -> None:
            bar.update(task, completed=info.step, total=info.total, loss=f"{float(info.loss):.3f}")

        model = digits.train(on_step=on_step)
    console.print(f"trained digits ({bar.tasks[0].completed:.0f} steps, final loss {bar.tasks[0].fields['loss']})")
    return model


def comparison(versions: list[Manifest]) -> Table:
    from shipyard.units import human_size

    table = Table(title=f"{NAME}: measured on this machine (held-out test split of scikit-learn's digits)")
    for col in ("version", "format", "size", "parameters", "b1 p50 ms", "b32 p50 ms", "accuracy"):
        table.add_column(col, justify="right" if col not in ("format",) else "left")
    for m in versions:
        mt: dict[str, Any] = m.metrics
        table.add_row(
            str(m.version), m.format, human_size(m.size_bytes), f"{mt.get('parameters', 0):,}",
            f"{mt.get('latency_b1_p50_ms', float('nan')):.3f}", f"{mt.get('latency_b32_p50_ms', float('nan')):.3f}",
            f"{mt.get('accuracy', float('nan')):.2%}",
        )
    return table


def client_examples(host: str, port: int) -> str:
    url = f"http://{host}:{port}"
    return f"""[bold]Try it[/] (in another terminal):

  curl -s {url}/v2/models/{NAME}

  curl -s -X POST {url}/v2/models/{NAME}/infer -H 'content-type: application/json' \\
    -d '{{"inputs":[{{"name":"pixels","datatype":"FP32","shape":[1,1,8,8],"data":[{",".join(["0.5"] * 64)}]}}]}}'

  # Python (pip install tritonclient[http])
  import numpy as np, tritonclient.http as http
  from sklearn.datasets import load_digits
  client = http.InferenceServerClient("{host}:{port}")
  x = http.InferInput("pixels", [4, 1, 8, 8], "FP32")
  x.set_data_from_numpy((load_digits().images[:4, None] / 16).astype(np.float32))
  print(client.infer("{NAME}", [x]).as_numpy("logits").argmax(1))  # -> [0 1 2 3]
"""


def build_code_lm(repo: Repository, threads: int) -> Manifest:
    """The code-lm demo LM (issue 5): trained once (about 2 minutes), then reused."""
    from shipyard.zoo import code_lm

    found = code_lm.existing(repo)
    if found is None:
        console.print("training code-lm on Python's standard library (once; about 2 minutes)...")
        model, tokenizer, metrics = code_lm.train(code_lm.SIZES["demo"], threads=threads)
        found = code_lm.publish(repo, model, tokenizer, metrics, "demo")
    else:
        console.print(f"reusing {code_lm.NAME}:{found.version} from {repo.root}")
    mt = found.metrics
    console.print(f"{code_lm.NAME}:{found.version}: {mt.get('parameters', 0):,} parameters, held-out perplexity "
                  f"{mt.get('heldout_perplexity', float('nan')):.2f} ({mt.get('heldout_files')} standard-library "
                  "files held out)", highlight=False, soft_wrap=True)
    return found


def code_lm_examples(host: str, port: int) -> str:
    return f"""[bold]code-lm[/] over OpenAI's API:

  curl -s {host}:{port}/v1/completions -H 'content-type: application/json' \\
    -d '{{"model":"code-lm","prompt":"def __init__(self, ","max_tokens":40,"temperature":0}}'
"""


def run_demo(settings: Settings, serve: bool = True) -> None:
    repo = Repository(settings.repository)
    v1, v2 = build(repo, settings.threads)
    console.print(comparison([v1, v2]))
    build_code_lm(repo, settings.threads)
    if not serve:
        return
    from shipyard.serve.app import serve as run_server

    console.print(f"serving {repo.root} on http://{settings.host}:{settings.port} (Ctrl-C stops)\n")
    console.print(client_examples(settings.host, settings.port), highlight=False)
    console.print(code_lm_examples(settings.host, settings.port), highlight=False)
    run_server(settings, log_level="info")

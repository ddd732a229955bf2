"""`shipyard zoo ...`: demo models trained here from data that ships with Python or its packages."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

zoo_app = typer.Typer(no_args_is_help=True, help="Train the demo models and publish them.")
train_app = typer.Typer(no_args_is_help=True, help="Train one demo model.")
zoo_app.add_typer(train_app, name="train")


@train_app.command("code-lm")
def train_code_lm(
    repository: Annotated[Path | None, typer.Option("--repository", "-r", help="Model repository folder.")] = None,
    size: Annotated[str, typer.Option(help="demo (about 2 min on 2 cores) or small (longer, better text).")] = "demo",
    steps: Annotated[int | None, typer.Option(help="Override the size's number of training steps.")] = None,
    max_seconds: Annotated[float | None, typer.Option(help="Override the size's wall-clock cap on training (the demo stops at 150 s, however many steps ran).")] = None,
    max_files: Annotated[int | None, typer.Option(help="Train on only the first N standard-library files (quick checks).")] = None,
    threads: Annotated[int | None, typer.Option(help="Training threads (default: all cores).")] = None,
) -> None:
    """Train a small GPT-style model of Python on the standard library and publish it as code-lm."""
    from dataclasses import replace

    from rich.console import Console

    from shipyard.cli.common import fail, run, settings
    from shipyard.repository import Repository
    from shipyard.zoo import code_lm

    if size not in code_lm.SIZES:
        fail(f"unknown size '{size}'; choose one of {', '.join(code_lm.SIZES)}")
    s = settings(repository=repository)
    chosen = code_lm.SIZES[size]
    if steps is not None:
        chosen = replace(chosen, steps=steps)
    if max_seconds is not None:
        chosen = replace(chosen, max_seconds=max_seconds)
    model, tokenizer, metrics = code_lm.train(chosen, max_files=max_files, threads=threads or s.threads)
    manifest = run(code_lm.publish, Repository(s.repository), model, tokenizer, metrics, size)
    Console().print(
        f"published {manifest.name}:{manifest.version} ({metrics['parameters']:,} parameters, "
        f"{metrics['train_steps']} steps in {metrics['train_seconds']} s): held-out perplexity "
        f"[bold]{metrics['heldout_perplexity']:.2f}[/] on {metrics['heldout_files']} standard-library files "
        "never seen in training", highlight=False, soft_wrap=True)

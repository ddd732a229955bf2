"""What every `shipyard` subcommand module shares: the library-call wrapper, the one-line error,
settings from the environment, and the common options. The entry point (`cli/main.py`) imports
the subcommand modules, never the other way round, so nothing here may import `cli.main`; and
like the rest of the CLI it imports only typer at module level, so `shipyard --help` stays instant."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

RepoOpt = Annotated[Path | None, typer.Option("--repository", "-r", help="Model repository folder [env SHIPYARD_REPOSITORY; default ./model-repository].")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def settings(**overrides: Any) -> Any:
    """Settings from the environment, with the CLI flags that were given on top."""
    from pydantic import ValidationError

    from shipyard.config import Settings

    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as e:  # e.g. SHIPYARD_PORT=abc: one line, not a traceback
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        fail(f"invalid settings ({problems}); check the SHIPYARD_* environment variables")


def fail(message: str) -> NoReturn:
    """Print `error: MESSAGE` on one line of stderr and exit with status 1."""
    from rich.console import Console
    from rich.markup import escape

    # soft_wrap: one line however narrow the terminal; escape: paths like '[x]' are not markup.
    Console(stderr=True).print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def run(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call into the library; a ShipyardError becomes a one-line message and exit status 1."""
    from shipyard.errors import ShipyardError

    try:
        return fn(*args, **kwargs)
    except ShipyardError as e:
        fail(e.message)

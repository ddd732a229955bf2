"""What every `shipyard` subcommand module shares: the library-call wrapper, the one-line error,
settings from the environment, and the common options. The entry point (`cli/main.py`) imports
the subcommand modules, never the other way round, so nothing here may import `cli.main`; and
like the rest of the CLI it imports only typer at module level, so `shipyard --help` stays instant."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

# -h as well as --help, on every command (subcommands inherit it from the root's context).
CONTEXT = {"help_option_names": ["-h", "--help"]}
RepoOpt = Annotated[Path | None, typer.Option("--repository", "-r", help="Model repository folder.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def document_settings(command: Any) -> None:
    """Finish the help of every option that sets a `Settings` field (named after the field, with
    no default of its own, so the environment applies): the field's description when the option
    has none, then its environment variable and default, both read from `shipyard.config`, the one
    source of defaults. Brackets are escaped: typer reads help as rich markup, where `[...]` is a tag."""
    from shipyard.config import Settings

    fields = Settings.model_fields
    for param in command.params:
        if getattr(param, "param_type_name", None) != "option":
            continue
        text = (param.help or "").replace("[", "\\[")
        if param.name in fields and param.default is None:
            field = fields[param.name]
            facts = [f"env SHIPYARD_{param.name.upper()}"]
            if field.default_factory is None and field.default is not None:
                facts.append(f"default {field.default}")
            text = f"{text or field.description} \\[{'; '.join(facts)}]"
        param.help = text
    for sub in getattr(command, "commands", {}).values():  # a group's subcommands
        document_settings(sub)


def settings(**overrides: Any) -> Any:
    """Settings from the environment, with the CLI flags that were given on top."""
    from pydantic import ValidationError

    from shipyard.config import Settings

    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as e:  # e.g. SHIPYARD_PORT=abc: one line, not a traceback
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        fail(f"invalid settings ({problems}); check the SHIPYARD_* environment variables")


# Hugging Face libraries talk on their own: transformers' warnings and advice, and tqdm bars for
# loading and writing weights. shipyard draws its own progress; the user's own values are kept.
# Set in the environment before transformers is imported, so torchrun's ranks inherit it.
QUIET = {"TRANSFORMERS_VERBOSITY": "error", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
         "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


def quiet_libraries() -> None:
    import os

    for name, value in QUIET.items():
        os.environ.setdefault(name, value)


def version_text() -> str:
    """`shipyard X.Y.Z` on the first line (what scripts read), then Python and the libraries that
    decide how models run. Read from the installed packages' metadata: nothing heavy is imported."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    from shipyard import __version__

    libraries = []
    for name in ("torch", "onnxruntime", "transformers"):
        try:
            libraries.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            libraries.append(f"{name} not installed")
    return f"shipyard {__version__}\npython {platform.python_version()}, {', '.join(libraries)}"


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

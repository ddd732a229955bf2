"""`shipyard keys`: create, list and revoke API keys. The file keeps only salted hashes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

keys_app = typer.Typer(no_args_is_help=True, help="Create, list and revoke API keys (for `serve --auth`).")

FileOpt = Annotated[Path, typer.Option("--file", "-f", help="Key file (YAML) that `serve --auth` reads.")]


def _channels() -> str:
    # The channels' declarations only (no routes, no server): cheap enough for `--help`.
    from shipyard.serve.channels import channels

    return ", ".join(c.name for c in channels())


def _split(text: str | None) -> list[str] | None:
    return [p.strip() for p in text.split(",") if p.strip()] if text else None


@keys_app.command("create")
def create(
    file: FileOpt,
    models: Annotated[str | None, typer.Option(help="Comma-separated models the key may use; '*' or patterns (default: all).")] = None,
    channels: Annotated[str | None, typer.Option(help=f"Comma-separated channels: {_channels()} (default: all).")] = None,
    rate: Annotated[float | None, typer.Option(min=0.001, help="Requests per second allowed (token bucket); default unlimited.")] = None,
    burst: Annotated[int | None, typer.Option(min=1, help="Requests allowed at once above the rate (bucket size).")] = None,
    name: Annotated[str, typer.Option(help="A label: who or what uses this key.")] = "",
    admin: Annotated[bool, typer.Option("--admin", help="Admin scope: may also load and unload models "
                                        "(repository control) and read every model's metrics. Off by default.")] = False,
) -> None:
    """Make a new key; it is printed once and only its salted hash is stored."""
    from shipyard.cli.common import run
    from shipyard.serve.auth import create_key

    key, record = run(create_key, file, name=name, models=_split(models), channels=_split(channels),
                      rate=rate, burst=burst, admin=admin)
    typer.echo(key)
    scope = "; admin: may load and unload" if record.admin else ""
    typer.echo(f"key {record.id} ({', '.join(record.models)} over {', '.join(record.channels)}{scope}) added to "
               f"{file}; it is shown only now", err=True)


@keys_app.command("list")
def list_keys(file: FileOpt, as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False) -> None:
    """Every key's id, name, models, channels, scope and rate (never a secret: the file has none)."""
    from rich.console import Console
    from rich.table import Table

    from shipyard.cli.common import run
    from shipyard.serve.auth import read_keys

    keys = run(read_keys, file).keys
    rows = [k.model_dump(exclude={"salt", "hash"}) for k in keys]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table("id", "name", "models", "channels", "scope", "rate/s", "burst", "created")
    for k in keys:
        table.add_row(k.id, k.name, ",".join(k.models), ",".join(k.channels), "admin" if k.admin else "inference",
                      f"{k.rate:g}" if k.rate else "-", str(k.burst or "-"), k.created)
    Console().print(table)


@keys_app.command("revoke")
def revoke(ref: Annotated[str, typer.Argument(help="The key's id (or its unique name).")], file: FileOpt) -> None:
    """Remove a key; a running server stops accepting it within a second or two."""
    from shipyard.cli.common import run
    from shipyard.serve.auth import revoke_key

    record = run(revoke_key, file, ref)
    typer.echo(f"revoked {record.id} ({record.name or 'no name'})")

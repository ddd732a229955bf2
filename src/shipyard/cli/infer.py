"""`shipyard infer`: send .npy files to a running server and show (or save) the outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def infer_cmd(
    model: Annotated[str, typer.Argument(help="Model name.")],
    inputs: Annotated[list[str], typer.Option("--input", "-i", help="FILE.npy for a one-input model, or NAME=FILE.npy (repeat).")],
    url: Annotated[str, typer.Option(envvar="SHIPYARD_URL", help="Server: http://HOST:PORT or grpc://HOST:PORT.")] = "http://127.0.0.1:8000",
    version: Annotated[int | None, typer.Option(min=1, help="Model version (default: the server's choice).")] = None,
    api_key: Annotated[str | None, typer.Option(envvar="SHIPYARD_API_KEY", help="API key (for `serve --auth`).")] = None,
    save: Annotated[Path | None, typer.Option(help="Write the outputs to this .npz file.")] = None,
) -> None:
    """Run a model on a running server with numpy files (V2 over HTTP or gRPC)."""
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from shipyard.cli.common import fail, run
    from shipyard.client import Client

    arrays: dict[str, np.ndarray] = {}
    single: np.ndarray | None = None
    for item in inputs:
        name, _, file = item.rpartition("=")
        try:
            array = np.load(file, allow_pickle=False)
        except (OSError, ValueError) as e:
            fail(f"cannot read input {file!r} as a .npy file: {e}")
        if name:
            arrays[name] = array
        elif len(inputs) == 1:
            single = array
        else:
            fail(f"with several inputs, name each one: NAME=FILE.npy (got {item!r})")
    with run(Client, url, api_key) as client:
        outputs = run(client.infer, model, single if single is not None else arrays, version)
    if save is not None:
        np.savez(save, **outputs)
    table = Table("output", "datatype", "shape", "values")
    for name, a in outputs.items():
        text = np.array2string(a, threshold=20, precision=4, max_line_width=100)
        table.add_row(name, str(a.dtype), str(list(a.shape)), text)
    Console().print(table)

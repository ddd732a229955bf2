"""`shipyard` command line. Imports are lazy so `shipyard --help` is instant."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from shipyard.cli.common import CONTEXT, JsonOpt, RepoOpt, document_settings, fail, quiet_libraries, run, settings
from shipyard.cli.infer import infer_cmd
from shipyard.cli.keys import keys_app
from shipyard.cli.zoo import zoo_app

# The subcommand modules hold typer apps only and import their work lazily. Registration order is
# the order `shipyard --help` lists the commands in.
app = typer.Typer(no_args_is_help=True, add_completion=False, context_settings=CONTEXT,
                  help="Turn a trained model into a fast, compact, versioned service.")
models_app = typer.Typer(no_args_is_help=True, help="List, inspect, import and remove models.")
app.add_typer(models_app, name="models")
app.add_typer(zoo_app, name="zoo")


def _print_version(value: bool) -> None:
    if value:
        from shipyard.cli.common import version_text

        typer.echo(version_text())
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[bool | None, typer.Option("--version", "-V", is_eager=True, callback=_print_version,
                                                 help="Print the version (then its main libraries') and exit.")] = None,
) -> None:
    """Turn a trained model into a fast, compact, versioned service."""


@app.command()
def demo(
    repository: RepoOpt = None,
    serve: Annotated[bool, typer.Option("--serve/--no-serve", help="Serve the models after building them.")] = True,
    host: Annotated[str, typer.Option(help="Address to serve on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port.")] = 8000,
) -> None:
    """Train the digits classifier (PyTorch v1, ONNX v2) and code-lm (a small LM of Python), and serve them."""
    from shipyard.cli.demo import run_demo

    run(run_demo, settings(repository=repository, host=host, port=port), serve=serve)


@app.command("serve")
def serve_cmd(
    repository: RepoOpt = None,
    host: Annotated[str | None, typer.Option(help="Address to bind.")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port.")] = None,
    models: Annotated[str | None, typer.Option(help="Comma-separated models to load (default: all).")] = None,
    threads: Annotated[int | None, typer.Option(help="Intra-op threads per model (default: all cores).")] = None,
    max_batch_size: Annotated[int | None, typer.Option(help="Override every model's max_batch_size (1 = batching off).")] = None,
    max_queue_delay_us: Annotated[int | None, typer.Option(help="Override every model's max_queue_delay_us.")] = None,
    max_queue_size: Annotated[int | None, typer.Option(help="Override every model's max_queue_size.")] = None,
    adaptive: Annotated[bool | None, typer.Option("--adaptive/--no-adaptive", help="Override every model's adaptive batching (under load, wait briefly for the last batch's clients).")] = None,
    max_request_bytes: Annotated[int | None, typer.Option(help="Largest request body (413 beyond).")] = None,
    device: Annotated[str | None, typer.Option(help="'cpu' or 'cuda'.")] = None,
    spin: Annotated[bool | None, typer.Option("--spin/--no-spin", help="Let ONNX Runtime threads spin between ops (default: no; spinning burns CPU the server needs).")] = None,
    trust_pickle: Annotated[bool | None, typer.Option("--trust-pickle", help="Allow pickle-based model files.")] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "warning",
    kv_cache_mb: Annotated[int | None, typer.Option(help="Override every causal LM's KV-cache memory in MiB (default 512).")] = None,
    max_num_seqs: Annotated[int | None, typer.Option(help="Override every causal LM's limit of sequences decoded together (default 32).")] = None,
    grpc_port: Annotated[int | None, typer.Option(help="gRPC port (KServe V2 gRPC); 0 turns gRPC off.")] = None,
    auth: Annotated[Path | None, typer.Option(help="API key file from `shipyard keys create`; every route but health then needs a key.")] = None,
    model_control: Annotated[str | None, typer.Option(help="'none': serve what was loaded at start-up until POST .../load; 'poll': load new versions and models and drop removed ones as the repository changes.")] = None,
    poll_interval_s: Annotated[float | None, typer.Option(help="Seconds between looks at the repository with --model-control poll.")] = None,
    header_timeout_s: Annotated[float | None, typer.Option(help="Seconds a connection has to send a request's headers (408 past it; silent connections are closed).")] = None,
    body_timeout_s: Annotated[float | None, typer.Option(help="Longest pause in seconds between two pieces of a request body (408 past it).")] = None,
    min_body_rate_bytes_s: Annotated[float | None, typer.Option(help="Slowest average a request body may arrive at, bytes/s, after its first body-timeout-s (408 under it; 0: none).")] = None,
    keep_alive_timeout_s: Annotated[float | None, typer.Option(help="Seconds an idle HTTP connection is kept for its next request.")] = None,
    max_connections: Annotated[int | None, typer.Option(help="Most connections open at once on each port, HTTP and gRPC (503 past it).")] = None,
) -> None:
    """Serve models over KServe V2 REST with dynamic batching, and causal LMs over OpenAI's API."""
    from shipyard.serve.app import serve

    s = run(settings, repository=repository, host=host, port=port, threads=threads,
            max_batch_size=max_batch_size, max_queue_delay_us=max_queue_delay_us,
            max_queue_size=max_queue_size, adaptive=adaptive, max_request_bytes=max_request_bytes, device=device, spin=spin,
            trust_pickle=trust_pickle or None, kv_cache_mb=kv_cache_mb, max_num_seqs=max_num_seqs)
    s = run(settings, **{**s.model_dump(), "grpc_port": grpc_port, "auth": auth})
    s = run(settings, **{**s.model_dump(), "model_control": model_control, "poll_interval_s": poll_interval_s})
    s = run(settings, **{**s.model_dump(), "header_timeout_s": header_timeout_s, "body_timeout_s": body_timeout_s,
                         "min_body_rate_bytes_s": min_body_rate_bytes_s, "keep_alive_timeout_s": keep_alive_timeout_s, "max_connections": max_connections})
    if s.auth is not None and not s.auth.is_file():
        fail(f"key file {s.auth} does not exist; make one with `shipyard keys create --file {s.auth}`")
    if not s.repository.is_dir():
        fail(f"repository {s.repository} does not exist; run `shipyard demo --no-serve` or `shipyard models import`")
    names = [m.strip() for m in models.split(",") if m.strip()] if models else None
    if names:
        from shipyard.repository import Repository

        repo = Repository(s.repository)
        for n in names:
            run(repo.resolve, n)
    serve(s, names, log_level=log_level)


@models_app.command("list")
def models_list(repository: RepoOpt = None, as_json: JsonOpt = False) -> None:
    """Every model with its versions, formats and sizes."""
    from shipyard.cli import views

    run(views.list_models, settings(repository=repository).repository, as_json)


@models_app.command("show")
def models_show(ref: Annotated[str, typer.Argument(help="NAME or NAME:VERSION.")],
                repository: RepoOpt = None, as_json: JsonOpt = False) -> None:
    """One version's manifest: signature, files, lineage and metrics."""
    from shipyard.cli import views

    run(views.show_model, settings(repository=repository).repository, ref, as_json)


@models_app.command("verify")
def models_verify(ref: Annotated[str | None, typer.Argument(help="NAME or NAME:VERSION (default: every model).")] = None,
                  repository: RepoOpt = None, as_json: JsonOpt = False) -> None:
    """Check every file against the sha256 in its manifest; exit 1 if any version fails."""
    from shipyard.cli.verify import verify_models

    if not run(verify_models, settings(repository=repository).repository, ref, as_json):
        raise typer.Exit(1)


TASK_HELP = ("What the outputs mean: multiclass, binary, multilabel, regression, language-modelling or embeddings "
             "(default: inferred from the signature, the output activation and the eval labels).")


@models_app.command("import")
def models_import(
    path: Annotated[Path, typer.Argument(help="ONNX file, torch.export .pt2, TorchScript file, Hugging Face folder, Keras .keras/.h5, SavedModel folder, .tflite file, or MLflow model folder.")],
    name: Annotated[str, typer.Option("--name", "-n", help="Model name in the repository.")],
    repository: RepoOpt = None,
    inputs: Annotated[list[str] | None, typer.Option("--input", help="Override an input: NAME:DATATYPE:DIMS, e.g. pixels:FP32:-1,1,8,8 (repeat).")] = None,
    outputs: Annotated[list[str] | None, typer.Option("--output", help="Override an output: NAME:DATATYPE:DIMS (repeat).")] = None,
    trust_pickle: Annotated[bool, typer.Option("--trust-pickle", help="Allow a pickled torch module (it can run code); it is exported to torch.export on import.")] = False,
    task: Annotated[str | None, typer.Option("--task", help=TASK_HELP)] = None,
    as_json: JsonOpt = False,
) -> None:
    """Publish a model file as the next version of NAME; its signature is read from the file."""
    from shipyard.cli import views

    run(views.import_model, settings(repository=repository).repository, path, name, inputs or [], outputs or [], trust_pickle, as_json,
        task)


@models_app.command("remove")
def models_remove(ref: Annotated[str, typer.Argument(help="NAME:VERSION to remove.")], repository: RepoOpt = None) -> None:
    """Remove one version (it disappears atomically)."""
    from shipyard.repository import Repository, parse_ref

    name, version = run(parse_ref, ref)
    if version is None:
        fail(f"give the version to remove, as in '{name}:1'")
    run(Repository(settings(repository=repository).repository).remove, name, version)
    typer.echo(f"removed {name}:{version}")


@app.command("train")
def train_cmd(
    config: Annotated[Path, typer.Argument(help="Training config (YAML); see examples/train/.")],
    nproc: Annotated[int, typer.Option("--nproc", help="Ranks on this machine (>1: launched with torchrun).")] = 1,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the newest checkpoint that passes its checksums.")] = False,
    repository: RepoOpt = None,
    nnodes: Annotated[int, typer.Option("--nnodes", help="Machines in the job (torchrun rendezvous).")] = 1,
    rdzv_endpoint: Annotated[str | None, typer.Option("--rdzv-endpoint", help="HOST:PORT of the rendezvous, for --nnodes > 1.")] = None,
    rdzv_id: Annotated[str, typer.Option("--rdzv-id", help="Job id shared by every node.")] = "shipyard",
) -> None:
    """Train as the config says (one process, DDP or FSDP ranks), checkpoint, and publish."""
    from shipyard.train.launch import launch

    run(launch, config, nproc=nproc, resume=resume, repository=settings(repository=repository).repository,
        nnodes=nnodes, rdzv_endpoint=rdzv_endpoint, rdzv_id=rdzv_id)


@app.command("optimize")
def optimize_cmd(
    ref: Annotated[str, typer.Argument(help="NAME or NAME:VERSION to optimize (default: the latest version).")],
    recipe: Annotated[Path | None, typer.Option("--recipe", help="Recipe YAML: a list of passes.")] = None,
    preset: Annotated[str | None, typer.Option("--preset", help="Built-in recipe: int8-dynamic, int8-static, fp16, prune-structured-50, lowrank-90, distill-half, int8-weight-only, int4-weight-only.")] = None,
    auto: Annotated[bool, typer.Option("--auto", help="Search recipes for the best --objective within --max-accuracy-drop.")] = False,
    to: Annotated[str | None, typer.Option("--to", help="Convert: tflite or tflite-int8 (a TensorFlow/Keras import; int8 calibrated on --calibrate), onnx (a TFLite version).")] = None,
    max_accuracy_drop: Annotated[float, typer.Option(help="Accuracy points the search may lose vs the parent.")] = 1.0,
    objective: Annotated[str, typer.Option(help="What the search minimises: latency or size.")] = "latency",
    eval_data: Annotated[str | None, typer.Option("--eval", help="Eval data: FILE.npz (inputs by name, optional 'labels') or zoo:digits.")] = None,
    calibrate: Annotated[str | None, typer.Option(help="Calibration data (static int8), named like --eval.")] = None,
    train: Annotated[str | None, typer.Option(help="Training data for fine-tuning, named like --eval.")] = None,
    threads: Annotated[int | None, typer.Option(help="Threads for measuring (default: all cores).")] = None,
    latency_budget: Annotated[float, typer.Option(help="Seconds spent timing each batch size.")] = 2.0,
    task: Annotated[str | None, typer.Option("--task", help=TASK_HELP)] = None,
    metric: Annotated[str | None, typer.Option("--metric", help="A user metric, package.module:function, called with (outputs, labels); reported, and with --auto the budget is in its points.")] = None,
    importance: Annotated[str | None, typer.Option("--importance", help="Which weights pruning removes and the sensitivity ranks: l1 or l2 norm (default l1).")] = None,
    repository: RepoOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Compress/convert a version with a recipe, preset or search; publish it with a measured report."""
    from shipyard.cli.optimize import run_optimize

    s = settings(repository=repository, threads=threads)  # SHIPYARD_THREADS applies here too
    steps: Path | list[dict[str, str]] | None = recipe
    if to is not None:
        from shipyard.optimize.passes.tflite import conversion

        if recipe or preset or auto:
            fail("--to is a recipe of its own; drop --recipe, --preset and --auto")
        steps = run(conversion, to)
    run(run_optimize, s.repository, ref, steps, preset, auto, max_accuracy_drop,
        objective, eval_data, calibrate, train, s.threads, as_json, latency_budget, task, metric, importance)


app.add_typer(keys_app, name="keys")
app.command("infer")(infer_cmd)


def command(documented: bool = True) -> Any:
    """The click command typer builds from `app`; `documented`: with every setting's environment
    variable and default in its options' help (that reads `shipyard.config`, so only for help)."""
    built = typer.main.get_command(app)
    if documented:
        document_settings(built)
    return built


def main() -> None:
    quiet_libraries()
    try:
        command(documented=bool({"-h", "--help"} & set(sys.argv[1:])))(prog_name="shipyard")
    except KeyboardInterrupt:  # pragma: no cover
        sys.exit(130)


if __name__ == "__main__":
    main()

"""`shipyard train`: check everything that can be checked, then run the loop in this process
(one rank) or launch torchrun (`python -m torch.distributed.run`) for N ranks and, if the job
fails, say which rank failed and why."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from shipyard.errors import InvalidInput, TrainingFailed
from shipyard.train.config import TrainConfig, load_config
from shipyard.train.worker import ERRORS_ENV


def preflight(cfg: TrainConfig, repository: Path | None, resume: bool) -> None:
    """What fails here fails before any process starts."""
    from shipyard.train import checkpoint
    from shipyard.train.tasks import resolve

    if cfg.task is None:
        raise InvalidInput("the config has no task; `shipyard train` needs `task: {name: ...}`")
    import inspect

    factory = resolve(cfg.task.name)
    try:  # unknown options are named now, without building the task (which loads its data)
        inspect.signature(factory).bind(**cfg.task.options)
    except TypeError as e:
        raise InvalidInput(f"task.options for {cfg.task.name!r}: {e}") from None
    if cfg.distill is not None:
        if repository is None:
            raise InvalidInput("distill.teacher names a repository version: give --repository")
        from shipyard.train.distill import check_teacher

        check_teacher(repository, cfg.distill.teacher)
    if cfg.on_step:
        from shipyard.train.callbacks import check_callbacks

        check_callbacks(cfg.on_step)
    found = checkpoint.listing(cfg.output_dir / "checkpoints")
    if resume and not found:
        raise InvalidInput(f"--resume: no checkpoint in {cfg.output_dir / 'checkpoints'}; start without --resume")
    if not resume and found:
        raise InvalidInput(
            f"{cfg.output_dir} holds checkpoints of an earlier run (newest {found[0].name}); continue "
            "it with --resume, or delete that folder, or set another output_dir"
        )


def launch(config: Path, nproc: int = 1, resume: bool = False, repository: Path | None = None,
           nnodes: int = 1, rdzv_endpoint: str | None = None, rdzv_id: str = "shipyard") -> None:
    cfg = load_config(config)
    if nproc < 1 or nnodes < 1:
        raise InvalidInput(f"--nproc and --nnodes must be at least 1, got {nproc} and {nnodes}")
    if nnodes > 1 and not rdzv_endpoint:
        raise InvalidInput("--nnodes > 1 needs --rdzv-endpoint HOST:PORT (a node every node can reach)")
    preflight(cfg, repository, resume)
    if nproc == 1 and nnodes == 1:
        from shipyard.train.loop import fit

        fit(cfg, repository=repository, resume=resume)
        return
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}"]
    if nnodes == 1 and not rdzv_endpoint:
        cmd.append("--standalone")  # a private rendezvous on a free local port
    else:
        cmd += [f"--nnodes={nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv_endpoint}",
                f"--rdzv-id={rdzv_id}"]
    cmd += ["-m", "shipyard.train.worker", str(config)]
    if repository is not None:
        cmd += ["--repository", str(repository)]
    if resume:
        cmd.append("--resume")
    reports = Path(tempfile.mkdtemp(prefix="shipyard-train-"))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    env = {**os.environ, ERRORS_ENV: str(reports),
           "OMP_NUM_THREADS": str(cfg.threads or max(1, cores // nproc))}
    try:
        proc = subprocess.Popen(cmd, env=env)
        try:
            rc = proc.wait()
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)  # torchrun passes it on to every rank
            rc = proc.wait()
        if rc != 0:
            raise TrainingFailed(summarize(reports, nproc, rc))
    finally:
        shutil.rmtree(reports, ignore_errors=True)


def summarize(reports: Path, nproc: int, rc: int) -> str:
    """One message: the first rank that failed and its error, then what happened to the others."""
    errors = []
    for p in reports.glob("rank*.error"):
        try:
            errors.append(json.loads(p.read_text()))
        except ValueError:
            continue
    errors.sort(key=lambda e: e["time"])
    started = {int(p.name[4:].split(".")[0]) for p in reports.glob("rank*.started")}
    ended = {int(p.name[4:].split(".")[0]) for p in [*reports.glob("rank*.done"),
                                                      *reports.glob("rank*.terminated"),
                                                      *reports.glob("rank*.error")]}
    vanished = sorted(started - ended)
    parts = []
    if vanished:
        # A rank that left no record was killed outright (SIGKILL, the OOM killer): no chance to
        # write one. It is the root cause whenever it exists.
        who = ", ".join(map(str, vanished))
        parts.append(f"rank {who} died without reporting an error (killed by a signal, e.g. out of "
                     "memory); torchrun's report above gives its exit code")
    for e in errors:
        parts.append(f"rank {e['rank']} failed: {e['message']}")
    if not parts:
        return f"training failed: torchrun exited with status {rc} before any rank started; see its output above"
    stopped = sorted(int(p.name[4:].split(".")[0]) for p in reports.glob("rank*.terminated"))
    tail = f" (torchrun then stopped rank {', '.join(map(str, stopped))})" if stopped else ""
    return "training failed: " + "; then ".join(parts) + tail

"""Checkpoints: atomic, checksummed, resumable, sharded under FSDP.

Layout of `<output_dir>/checkpoints/step-00000012/`:
  .metadata, __<rank>_0.distcp   model + optimizer through torch.distributed.checkpoint (each rank
                                 writes its own shard; under DDP replicated tensors once)
  rng-rank<r>.pt                 each rank's RNG state (dropout differs per rank)
  meta.json                      step, position (epoch, micro-batch), scheduler, world size, config
  checksums.json                 sha256 of every file above, written last

Everything is written into a `.tmp-` folder first and renamed into place by rank 0 after every
rank finished, so a crash mid-save leaves no `step-*` folder. On resume a folder whose files fail
their checksum is refused (with the reason) and the one before it is used. Multi-node runs need
`output_dir` on storage every node sees, as with any sharded checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shipyard.errors import IntegrityError, InvalidInput
from shipyard.repository.store import sha256_file
from shipyard.train.dist import DistEnv, barrier, broadcast_object

PREFIX = "step-"
CHECKSUMS = "checksums.json"
META = "meta.json"


@dataclass
class Position:
    step: int  # optimizer steps done
    epoch: int
    batch: int  # micro-batches of `epoch` already trained on


def _dcp() -> Any:
    import torch.distributed.checkpoint as dcp

    return dcp


def _states(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    msd, osd = get_state_dict(model, optimizer)
    return {"model": msd, "optim": osd}


def save(root: Path, pos: Position, model: nn.Module, optimizer: torch.optim.Optimizer,
         scheduler: Any, env: DistEnv, extra: dict[str, Any], keep: int) -> Path:
    """Collective: every rank calls it at the same step."""
    root.mkdir(parents=True, exist_ok=True)
    tmp_name = broadcast_object(f".tmp-{PREFIX}{pos.step:08d}-{uuid.uuid4().hex[:8]}", env)
    tmp = root / tmp_name
    final = root / f"{PREFIX}{pos.step:08d}"
    with warnings.catch_warnings():  # "assuming the intent is to save in a single process": yes
        warnings.simplefilter("ignore", UserWarning)
        _dcp().save(_states(model, optimizer), checkpoint_id=str(tmp))
    torch.save({"cpu": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
               tmp / f"rng-rank{env.rank}.pt")
    barrier(env)
    if env.is_main:
        meta = {"step": pos.step, "epoch": pos.epoch, "batch": pos.batch, "world": env.world,
                "strategy": env.strategy, "scheduler": scheduler.state_dict(), **extra}
        (tmp / META).write_text(json.dumps(meta, indent=2, default=str))
        sums = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        (tmp / CHECKSUMS).write_text(json.dumps(sums, indent=2))
        for p in tmp.iterdir():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        if final.exists():  # a resumed run passing the same step again
            shutil.rmtree(final)
        os.rename(tmp, final)
        _prune(root, keep)
    barrier(env)
    return final


def _prune(root: Path, keep: int) -> None:
    for old in listing(root)[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(f".tmp-{PREFIX}*"):  # left by a crash mid-save
        shutil.rmtree(stale, ignore_errors=True)


def listing(root: Path) -> list[Path]:
    """Checkpoint folders, newest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX)
             and p.name[len(PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]), reverse=True)


def verify(path: Path) -> None:
    """Raise IntegrityError naming the first file that is missing or fails its sha256."""
    sums_path = path / CHECKSUMS
    if not sums_path.is_file():
        raise IntegrityError(f"{path.name} has no {CHECKSUMS}")
    try:
        sums = json.loads(sums_path.read_text())
    except ValueError:
        raise IntegrityError(f"{path.name}/{CHECKSUMS} is not valid JSON") from None
    for name, digest in sums.items():
        p = path / name
        if not p.is_file():
            raise IntegrityError(f"{path.name}/{name} is listed but missing")
        if sha256_file(p) != digest:
            raise IntegrityError(f"{path.name}/{name} fails its sha256 checksum")


def choose(root: Path, env: DistEnv) -> tuple[Path | None, list[str]]:
    """Rank 0 picks the newest checkpoint that passes its checksums; every rank gets the same."""
    refused: list[str] = []
    chosen: str | None = None
    if env.is_main:
        for path in listing(root):
            try:
                verify(path)
            except IntegrityError as e:
                refused.append(f"{e.message}: refused")
                continue
            chosen = str(path)
            break
    chosen, refused = broadcast_object((chosen, refused), env)
    return (Path(chosen) if chosen else None), refused


def load(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
         env: DistEnv) -> Position:
    from torch.distributed.checkpoint.state_dict import set_state_dict

    meta = json.loads((path / META).read_text())
    if meta["world"] != env.world or meta["strategy"] != env.strategy:
        raise InvalidInput(
            f"checkpoint {path} was written by {meta['world']} rank(s) with strategy "
            f"{meta['strategy']!r}; resume with the same (--nproc {meta['world']}) so the data "
            "order continues where it stopped, or start without --resume"
        )
    states = _states(model, optimizer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        _dcp().load(states, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=states["model"], optim_state_dict=states["optim"])
    scheduler.load_state_dict(meta["scheduler"])
    rng = torch.load(path / f"rng-rank{env.rank}.pt", weights_only=True)
    torch.set_rng_state(rng["cpu"])
    if rng["cuda"]:
        torch.cuda.set_rng_state_all(rng["cuda"])
    return Position(step=meta["step"], epoch=meta["epoch"], batch=meta["batch"])

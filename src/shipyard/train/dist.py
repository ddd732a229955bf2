"""The distributed environment: who am I (rank, world), which backend, how the model is wrapped.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; without them this is one
process and nothing is initialised. Collectives get a timeout so a dead or stuck peer ends the job
with an error instead of a hang.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from shipyard.train.config import ParallelConfig


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world: int
    local_rank: int
    device: torch.device
    backend: str | None  # None: a single process, no process group
    strategy: str  # "none", "ddp" or "fsdp"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None


def setup(cfg: ParallelConfig) -> DistEnv:
    """Join the process group torchrun prepared (if any), with timeouts on every collective."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local_rank}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    strategy = cfg.strategy
    if strategy == "auto":
        strategy = "ddp" if world > 1 else "none"
    if world == 1 and "RANK" not in os.environ:
        # One process without torchrun: DDP/FSDP over a group of one still works (and checks the
        # code path), but needs a group; plain "none" needs nothing.
        if strategy == "none":
            return DistEnv(0, 1, 0, device, None, "none")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
    backend = cfg.backend if cfg.backend != "auto" else ("nccl" if cuda else "gloo")
    if not dist.is_initialized():
        dist.init_process_group(
            backend, timeout=datetime.timedelta(seconds=cfg.timeout_s),
            device_id=device if backend == "nccl" else None,
        )
    return DistEnv(rank, world, local_rank, device, backend, strategy)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def teardown(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, env: DistEnv) -> nn.Module:
    """DDP: a full replica per rank, gradients all-reduced. FSDP (fully_shard, "FSDP2"): each
    submodule's parameters, gradients and optimizer state live as shards (DTensors) across ranks
    and are gathered only around that submodule's forward/backward."""
    model.to(env.device)
    if env.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [env.device.index] if env.device.type == "cuda" else None
        # A [16, 1, 3, 3] conv weight has two valid stride layouts for its size-1 dim; DDP warns
        # about the mismatch every step though the copy it makes is a no-op in effect.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        return DistributedDataParallel(model, device_ids=ids)
    if env.strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        # Shard every leaf module that holds parameters, then the root: each is gathered just in
        # time, so peak memory is one layer's full weights plus the shards.
        for mod in list(model.modules())[1:]:
            if any(True for _ in mod.parameters(recurse=False)) and not list(mod.children()):
                fully_shard(mod)
        fully_shard(model)
        return model
    return model


@contextlib.contextmanager
def no_grad_sync(model: nn.Module, env: DistEnv, skip: bool) -> Iterator[None]:
    """Accumulate gradients locally on all but the last micro-batch of a step (no all-reduce)."""
    if not skip or env.strategy == "none":
        yield
        return
    if env.strategy == "ddp":
        with model.no_sync():  # type: ignore[operator]
            yield
        return
    model.set_requires_gradient_sync(False)  # type: ignore[operator]
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)  # type: ignore[operator]


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model, nn.parallel.DistributedDataParallel) else model


def full_state_dict(model: nn.Module, env: DistEnv) -> dict[str, Any]:
    """The whole model's weights on rank 0 (a collective under FSDP; empty on other ranks)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if env.strategy == "none":
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )


def broadcast_object(obj: Any, env: DistEnv) -> Any:
    """Rank 0's value on every rank."""
    if not env.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_mean(value: float, env: DistEnv) -> float:
    if not env.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=env.device)
    dist.all_reduce(t)
    return float(t.item()) / env.world


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()

"""Real 2-rank runs under torchrun with gloo on loopback, compared with one process."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from shipyard.repository import Repository
from shipyard.train import fit
from tests.train import faults
from tests.train.conftest import config, max_diff, published_weights, shipyard_train, write

TOL = 2e-5


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("parallel")


@pytest.fixture(scope="module")
def single(work: Path) -> dict[str, torch.Tensor]:
    """One process, batch 32: the reference."""
    cfg = config(work, "single", publish={"name": "single"})
    result = fit(cfg, repository=work / "repo")
    assert result.steps == 16
    return published_weights(work / "repo", "single")


def two_ranks(work: Path, strategy: str, name: str, *extra: str,
              on_step: list[dict[str, object]] | None = None) -> tuple[int, str]:
    cfg = config(work, name, data={"batch_size": 16}, parallel={"strategy": strategy, "timeout_s": 60},
                 publish={"name": name}, **({"on_step": on_step} if on_step else {}))
    out = shipyard_train(write(work, cfg, f"{name}.yaml"), "--nproc", "2", "--repository",
                         str(work / "repo"), *extra)
    return out.returncode, out.stdout + out.stderr


@pytest.fixture(scope="module")
def fsdp(work: Path) -> dict[str, torch.Tensor]:
    rc, log = two_ranks(work, "fsdp", "fsdp")
    assert rc == 0, log
    return published_weights(work / "repo", "fsdp")


def test_ddp_two_ranks_batch_b_equals_one_process_batch_2b(work: Path, single: dict[str, torch.Tensor]) -> None:
    rc, log = two_ranks(work, "ddp", "ddp")
    assert rc == 0, log
    ddp = published_weights(work / "repo", "ddp")
    assert max_diff(ddp, single) < TOL
    manifest = Repository(work / "repo").manifest("ddp")
    assert manifest.extra["training"]["strategy"] == "ddp"
    assert manifest.extra["training"]["world_size"] == 2
    assert manifest.metrics["steps"] == 16
    # Not trivially equal: training moved the weights.
    init = published_weights(work / "repo", "single")
    assert max_diff(init, {k: torch.zeros_like(v) for k, v in init.items()}) > 0.01


def test_fsdp_two_ranks_equals_one_process(work: Path, single: dict[str, torch.Tensor],
                                           fsdp: dict[str, torch.Tensor]) -> None:
    assert max_diff(fsdp, single) < TOL
    # Sharded checkpoints: each rank wrote its own shard file.
    last = sorted((work / "fsdp" / "checkpoints").iterdir())[-1]
    assert {"__0_0.distcp", "__1_0.distcp", "rng-rank0.pt", "rng-rank1.pt"} <= {p.name for p in last.iterdir()}
    assert Repository(work / "repo").manifest("fsdp").extra["training"]["strategy"] == "fsdp"


def test_killed_rank_then_resume_equals_uninterrupted(work: Path, fsdp: dict[str, torch.Tensor]) -> None:
    # Rank 1 is SIGKILLed right after step 6 (the last checkpoint is step 4): the job must end
    # (not hang), name the rank, and --resume must end with the uninterrupted run's weights.
    rc, log = two_ranks(work, "fsdp", "resumed", on_step=faults.on_step(6, 1, "kill"))
    assert rc == 1
    assert "rank 1 died without reporting an error" in log
    assert "step-00000004" in {p.name for p in (work / "resumed" / "checkpoints").iterdir()}
    assert not Repository(work / "repo").versions("resumed")
    rc, log = two_ranks(work, "fsdp", "resumed", "--resume")
    assert rc == 0, log
    assert "resumed from step-00000004" in log
    assert max_diff(published_weights(work / "repo", "resumed"), fsdp) == 0.0


def test_rank_error_is_named_and_ends_the_job(work: Path) -> None:
    rc, log = two_ranks(work, "ddp", "dead", on_step=faults.on_step(2, 1, "raise"))
    assert rc == 1
    assert "training failed: rank 1 failed: RuntimeError: injected fault at step 2" in log
    assert not Repository(work / "repo").versions("dead")

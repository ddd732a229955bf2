"""Checkpoints in one process: resume equals uninterrupted, a corrupt one is refused and the one
before it used, accumulation equals a bigger batch, seeds make runs repeat."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from shipyard.errors import InvalidInput
from shipyard.train import fit
from shipyard.train.checkpoint import listing, verify
from tests.train.conftest import config, max_diff


def weights(result) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    return {k: v.detach().clone() for k, v in result.model.state_dict().items()}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    tmp = tmp_path_factory.mktemp("ckpt")
    cfg = config(tmp, "full", task={"name": "digits", "options": {"subset": 128, "eval_subset": 32}},
                 checkpoint={"every_steps": 2, "keep": 3})
    result = fit(cfg)  # dropout on (0.2): the RNG state must survive the checkpoint too
    assert result.steps == 8
    return tmp, weights(result)


def test_checkpoints_are_atomic_and_pruned(uninterrupted: tuple[Path, dict[str, torch.Tensor]]) -> None:
    tmp, _ = uninterrupted
    names = [p.name for p in listing(tmp / "full" / "checkpoints")]
    assert names == ["step-00000008", "step-00000006", "step-00000004"]  # keep 3
    assert not list((tmp / "full" / "checkpoints").glob(".tmp-*"))
    for name in names:
        verify(tmp / "full" / "checkpoints" / name)


def test_corrupt_checkpoint_is_refused_and_the_previous_used(
        uninterrupted: tuple[Path, dict[str, torch.Tensor]], capsys: pytest.CaptureFixture[str]) -> None:
    tmp, full = uninterrupted
    shutil.copytree(tmp / "full", tmp / "corrupt")
    ckpts = tmp / "corrupt" / "checkpoints"
    shutil.rmtree(ckpts / "step-00000008")  # as if killed after step 7
    shard = ckpts / "step-00000006" / "__0_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    shard.write_bytes(bytes(data))
    cfg = config(tmp, "corrupt", task={"name": "digits", "options": {"subset": 128, "eval_subset": 32}},
                 checkpoint={"every_steps": 2, "keep": 3})
    result = fit(cfg, resume=True)
    err = " ".join(capsys.readouterr().err.split())
    assert "step-00000006/__0_0.distcp fails its sha256 checksum: refused" in err
    assert "resumed from step-00000004" in err
    assert result.steps == 8
    assert max_diff(weights(result), full) == 0.0


def test_resume_with_every_checkpoint_corrupt_fails_clearly(uninterrupted: tuple[Path, dict[str, torch.Tensor]]) -> None:
    tmp, _ = uninterrupted
    shutil.copytree(tmp / "full", tmp / "allbad")
    for p in listing(tmp / "allbad" / "checkpoints"):
        (p / "meta.json").write_text("{}")
    cfg = config(tmp, "allbad", task={"name": "digits", "options": {"subset": 128}})
    with pytest.raises(InvalidInput, match="--resume: no usable checkpoint"):
        fit(cfg, resume=True)


def test_same_seed_same_weights_other_seed_differs(tmp_path: Path) -> None:
    small = {"task": {"name": "digits", "options": {"subset": 64, "eval_subset": 16}}, "epochs": 1}
    a = weights(fit(config(tmp_path, "a", **small)))
    b = weights(fit(config(tmp_path, "b", **small)))
    c = weights(fit(config(tmp_path, "c", seed=4, **small)))
    assert max_diff(a, b) == 0.0
    assert max_diff(a, c) > 1e-3


def test_grad_accumulation_equals_the_bigger_batch(tmp_path: Path) -> None:
    task = {"name": "digits", "options": {"subset": 64, "dropout": 0.0, "eval_subset": 16}}
    big = weights(fit(config(tmp_path, "big", task=task, epochs=1)))
    accum = weights(fit(config(tmp_path, "acc", task=task, epochs=1,
                               data={"batch_size": 8, "grad_accum": 4})))
    assert max_diff(big, accum) < 2e-5
    # and it is not simply the same run: 4 steps of batch 8 would differ
    small = weights(fit(config(tmp_path, "small", task=task, epochs=1, data={"batch_size": 8})))
    assert max_diff(big, small) > 1e-3

"""Distillation on the digits task: the teacher is the demo's published digits:1."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from shipyard.errors import InvalidInput
from shipyard.repository import Repository
from shipyard.train import distillation_loss, fit


def test_distillation_loss_is_the_combined_formula() -> None:
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 10, generator=g), torch.randn(6, 10, generator=g)
    y = torch.randint(0, 10, (6,), generator=g)
    alpha, temp = 0.3, 3.0
    p_t = torch.softmax(t / temp, -1)
    kl = (p_t * (p_t.log() - torch.log_softmax(s / temp, -1))).sum(-1).mean()
    expected = alpha * torch.nn.functional.cross_entropy(s, y) + (1 - alpha) * temp**2 * kl
    assert torch.allclose(distillation_loss(s, t, y, alpha, temp), expected, atol=1e-6)
    assert torch.allclose(distillation_loss(s, t, y, 1.0, temp), torch.nn.functional.cross_entropy(s, y))
    # A student that already equals its teacher pays only the hard term.
    assert torch.allclose(distillation_loss(t, t, y, alpha, temp), alpha * torch.nn.functional.cross_entropy(t, y), atol=1e-6)
    # Sequence logits [B, T, C] average over every position.
    seq = distillation_loss(s.view(2, 3, 10), t.view(2, 3, 10), y.view(2, 3), alpha, temp)
    assert torch.allclose(seq, distillation_loss(s, t, y, alpha, temp), atol=1e-6)
    with pytest.raises(InvalidInput, match=r"teacher logits have shape \[6, 5\]"):
        distillation_loss(s, t[:, :5], y)


def test_student_with_teacher_beats_student_alone(digits_repo: Repository, tmp_path: Path) -> None:
    # The same student, data (100 samples), epochs and seeds; only the loss differs.
    wins = []
    for seed in (0, 1):
        base = {"task": {"name": "digits", "options": {"subset": 100}}, "epochs": 25, "seed": seed,
                "threads": 1, "progress": False, "data": {"batch_size": 10}, "optimizer": {"lr": 0.003}}
        alone = fit({**base, "output_dir": str(tmp_path / f"alone{seed}")})
        taught = fit({**base, "output_dir": str(tmp_path / f"taught{seed}"),
                      "distill": {"teacher": "digits:1", "alpha": 0.2, "temperature": 4.0},
                      "publish": {"name": "student"}}, repository=digits_repo.root)
        wins.append(taught.metrics["accuracy"] - alone.metrics["accuracy"])
        assert taught.metrics["steps"] == alone.metrics["steps"]
    assert all(w > 0 for w in wins), wins
    assert sum(wins) / len(wins) >= 0.01, wins
    m = digits_repo.manifest("student")
    assert m.lineage.recipe[0]["pass"] == "distill"
    assert m.extra["training"]["teacher"] == "digits:1"


def test_teacher_module_in_python_api(tmp_path: Path) -> None:
    # teacher= an nn.Module: run under inference mode, its logits usable in the loss.
    from shipyard.zoo.digits import DigitsCNN

    torch.manual_seed(0)
    teacher = DigitsCNN().eval()
    result = fit({"task": {"name": "digits", "options": {"subset": 32}}, "epochs": 1, "progress": False,
                  "data": {"batch_size": 16}, "output_dir": str(tmp_path / "run"),
                  "distill": {"teacher": "unused-by-the-api", "alpha": 0.0}}, teacher=teacher)
    assert result.steps == 2 and result.history[0]["train_loss"] > 0

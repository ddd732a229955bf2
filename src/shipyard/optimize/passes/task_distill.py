"""Distillation for tasks other than multi-class classification (binary, multi-label, regression,
embeddings): the student learns

    loss = alpha * L(student, labels) + (1 - alpha) * L(student, teacher's outputs)

with L the task's loss (`shipyard.tasks.torch_loss`: BCE, BCE per label, MSE, 1 - cosine), through
`shipyard.train.fit` like the classifier path. The teacher runs once over the training data; its
outputs ride beside the labels in the target tensor, so the loop itself needs no change."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from shipyard.optimize.data import Dataset
from shipyard.optimize.passes.base import Context
from shipyard.tasks import torch_loss

CLASS_TASKS = (None, "multiclass", "language-modelling")  # these keep the KL + CE distillation


def fit_task_student(student: Any, teacher: Any, inputs: list[torch.Tensor], data: Dataset, n: int,
                     config: Any, ctx: Context, train_cfg: dict[str, Any]) -> Any:
    from torch.utils.data import TensorDataset

    from shipyard.train import fit
    from shipyard.train.tasks import Task

    task = ctx.task
    assert task is not None
    with torch.inference_mode():
        soft = torch.cat([teacher(*[x[i:i + 256] for x in inputs]).float() for i in range(0, n, 256)])
    soft = soft.reshape(n, -1)
    alpha = config.alpha if data.labels is not None else 0.0
    if data.labels is not None:
        hard = torch.from_numpy(data.labels[:n]).float().reshape(n, -1)
        target = torch.cat([hard, soft], dim=1)
    else:
        target = soft
        ctx.note(f"distill: {data.name} has no labels; the student learns the teacher's outputs ({task} loss)")
    width = soft.shape[1]

    def loss(out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        o = out.reshape(len(out), -1)
        term = torch_loss(task, o, t[:, -width:], soft=True)
        if alpha > 0:
            term = alpha * torch_loss(task, o, t[:, :-width], soft=False) + (1 - alpha) * term
        return term

    def unused_export(module: Any, path: Path) -> None:
        raise AssertionError("the distill pass publishes through the runner")

    spec = Task(name=f"distill ({task})", build_model=lambda: student, train_data=TensorDataset(*inputs, target),
                signature=None, export=unused_export, loss=loss)  # type: ignore[arg-type]
    cfg = {k: v for k, v in train_cfg.items() if k != "distill"}
    ctx.note(f"distill: task {task}: loss = {alpha} x {task} loss on the labels + {1 - alpha:g} x {task} loss "
             "against the teacher's outputs")
    return fit(cfg, model=student, data=TensorDataset(*inputs, target), task=spec)

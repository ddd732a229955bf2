"""Publishing the finished model: a torch.export program, with the training config and the
measured metrics in its manifest, as the next version of `publish.name` (rank 0 only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from shipyard.repository import Lineage, Manifest, Repository
from shipyard.train.config import TrainConfig
from shipyard.train.tasks import Task


def publish(repository: Path, config: TrainConfig, task: Task, model: nn.Module,
            metrics: dict[str, Any], facts: dict[str, Any]) -> Manifest:
    assert config.publish.name is not None
    repo = Repository(repository)
    if config.distill is not None:
        recipe = [{"pass": "distill", "teacher": facts.get("teacher"), "alpha": config.distill.alpha,
                   "temperature": config.distill.temperature}]
    else:
        recipe = [{"pass": "train", "task": task.name, "epochs": config.epochs}]
    lineage = Lineage(source=f"shipyard.train (task {task.name}, trained here)", recipe=recipe)
    extra = {"training": {"config": config.model_dump(mode="json"), **facts}}
    if task.publish is not None:
        manifest: Manifest = task.publish(model.eval(), repo, config.publish.name, lineage, metrics, extra)
        return manifest
    with repo.publish(config.publish.name, "torch-export", task.signature, lineage, metrics) as stage:
        task.export(model.eval(), stage.path / "model.pt2")
        stage.extra.update(extra)
    assert stage.manifest is not None
    return stage.manifest

"""Helpers for the training tests: small digits configs, `shipyard train` in a child process
(real torchrun, real gloo on loopback), and reading back published weights."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import torch
import yaml

from tests.fixtures import ROOT, SHIPYARD

# 256 samples, batch 32 (one process) = 16 per rank x 2: 8 steps an epoch. Dropout 0 so ranks and
# one process draw no different random masks; one thread per rank so sums reduce in one order.
BASE: dict[str, Any] = {
    "task": {"name": "digits", "options": {"subset": 256, "dropout": 0.0, "eval_subset": 64}},
    "epochs": 2, "seed": 3, "threads": 1, "progress": False,
    "data": {"batch_size": 32},
    "optimizer": {"name": "adamw", "lr": 0.003},
    "schedule": {"name": "cosine", "warmup_steps": 2},
    "clip_grad_norm": 5.0,
    "checkpoint": {"every_steps": 4, "keep": 3},
}


def config(tmp: Path, name: str, **changes: Any) -> dict[str, Any]:
    cfg = {**BASE, **changes, "output_dir": str(tmp / name)}
    return cfg


def write(tmp: Path, cfg: dict[str, Any], name: str = "train.yaml") -> Path:
    path = tmp / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def shipyard_train(path: Path, *args: str, env: dict[str, str] | None = None,
                   timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SHIPYARD, "train", str(path), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout, env={**os.environ, **(env or {})})


def published_weights(repository: Path, name: str, version: int | None = None) -> dict[str, torch.Tensor]:
    from shipyard.repository import Repository

    repo = Repository(repository)
    m = repo.manifest(name, version)
    program = torch.export.load(str(repo.path(name, m.version) / "model.pt2"))
    return {k: v.detach().clone() for k, v in program.module().state_dict().items()}


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)

"""Distillation: the combined loss and a teacher read from the repository.

    loss = alpha * CE(student, labels) + (1 - alpha) * T^2 * KL(softmax(teacher/T) || softmax(student/T))

The T^2 factor keeps the soft term's gradients on the same scale as the hard term's whatever the
temperature (Hinton et al., 2015). The teacher is any repository version, in any format a runtime
serves; it runs under inference mode on every rank, on that rank's own micro-batch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from shipyard.errors import InvalidInput
from shipyard.repository import Repository, parse_ref


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      targets: torch.Tensor, alpha: float = 0.5, temperature: float = 2.0) -> torch.Tensor:
    """alpha * CE + (1 - alpha) * T^2 * KL, averaged over samples (and positions for [B, T, C])."""
    if student_logits.shape != teacher_logits.shape:
        raise InvalidInput(
            f"teacher logits have shape {list(teacher_logits.shape)} but the student's have "
            f"{list(student_logits.shape)}; the teacher must predict the same classes"
        )
    classes = student_logits.shape[-1]
    s = student_logits.reshape(-1, classes)
    t = teacher_logits.reshape(-1, classes).to(s.dtype)
    hard = nn.functional.cross_entropy(s, targets.reshape(-1))
    if alpha >= 1.0:
        return hard
    soft = nn.functional.kl_div(
        nn.functional.log_softmax(s / temperature, dim=-1),
        nn.functional.log_softmax(t / temperature, dim=-1),
        reduction="batchmean", log_target=True,
    )
    return alpha * hard + (1.0 - alpha) * temperature**2 * soft


class Teacher:
    """A published version, loaded through its runtime, returning logits as a torch tensor."""

    def __init__(self, repository: Path, ref: str, threads: int, device: str = "cpu") -> None:
        from shipyard.runtimes import RuntimeOptions, runtime_for

        repo = Repository(repository)
        name, version = parse_ref(ref)
        self.manifest = repo.manifest(name, version)
        repo.verify(self.manifest)
        self.ref = f"{name}:{self.manifest.version}"
        self.runtime = runtime_for(self.manifest, repo.path(name, self.manifest.version),
                                   RuntimeOptions(threads=threads, device=device))
        self.runtime.load()
        self.inputs = [t.name for t in self.manifest.signature.inputs]
        self.output = self.manifest.signature.outputs[0].name

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        if len(inputs) != len(self.inputs):
            raise InvalidInput(
                f"teacher {self.ref} takes {len(self.inputs)} input(s) ({', '.join(self.inputs)}); "
                f"the task gives {len(inputs)}"
            )
        with torch.inference_mode():
            feed = {n: np.ascontiguousarray(x.detach().cpu().numpy()) for n, x in zip(self.inputs, inputs, strict=True)}
            out = self.runtime.infer(feed, [self.output])[self.output]
        return torch.from_numpy(np.asarray(out))


def check_teacher(repository: Path, ref: str) -> str:
    """Before any process starts: the teacher exists and its files match their checksums."""
    repo = Repository(repository)
    name, version = parse_ref(ref)
    manifest = repo.manifest(name, version)
    repo.verify(manifest)
    return f"{name}:{manifest.version}"

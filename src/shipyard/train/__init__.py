"""Training: one loop for one process, data-parallel (DDP) and sharded (FSDP) ranks, distillation.

Command line (validates the config, then launches torchrun for you when --nproc > 1):

    shipyard train examples/train/digits.yaml --repository model-repository
    shipyard train examples/train/digits.yaml --nproc 2        # DDP (or FSDP: parallel.strategy)
    shipyard train examples/train/digits.yaml --nproc 2 --resume

Two machines, two ranks each (the same command on both; torchrun's c10d rendezvous; the output
folder must be on storage both machines see, since each rank writes its own checkpoint shard):

    shipyard train cfg.yaml --nproc 2 --nnodes 2 --rdzv-endpoint node0.example:29400 --rdzv-id run1

which runs `python -m torch.distributed.run --nnodes 2 --nproc-per-node 2 --rdzv-backend c10d
--rdzv-endpoint node0.example:29400 --rdzv-id run1 -m shipyard.train.worker cfg.yaml ...`.

Python API (what the optimize issue's distill pass calls):

    from shipyard.train import fit, distillation_loss, TrainConfig

    result = fit(
        {"epochs": 3, "data": {"batch_size": 64}, "distill": {"teacher": "digits:1", "alpha": 0.5}},
        model=student,            # an nn.Module, or a zero-argument factory (called after seeding)
        data=dataset,             # a Dataset of (inputs..., target); TensorDataset is fastest
        teacher=None,             # None: config's distill.teacher from `repository`; or an nn.Module
                                  # / callable(*inputs) -> logits, run under inference mode
        repository="model-repository",
    )
    result.model, result.metrics, result.history, result.manifest

    loss = distillation_loss(student_logits, teacher_logits, labels, alpha=0.5, temperature=2.0)

Code of yours can run after every optimizer step, on every rank (tracking, logging): pass
`fit(..., on_step=[callback])`, or name a factory in the config (`on_step: [{name:
"package.module:factory", options: {...}}]`) so `shipyard train` runs it too; a callback takes a
`StepInfo` (see `shipyard.train.callbacks`).

`fit` may be called in one process or on every rank under torchrun (it joins the process group
from the environment). Instead of model=/data= a config may name a task (`task: {name: digits}`),
which also gives the export and the evaluation used when publishing (`publish: {name: ...}`).
"""

from shipyard.train.callbacks import StepCallback, StepInfo
from shipyard.train.config import TrainConfig, load_config, parse_config
from shipyard.train.distill import Teacher, distillation_loss
from shipyard.train.loop import FitResult, fit
from shipyard.train.tasks import Task

__all__ = [
    "FitResult",
    "StepCallback",
    "StepInfo",
    "Task",
    "Teacher",
    "TrainConfig",
    "distillation_loss",
    "fit",
    "load_config",
    "parse_config",
]

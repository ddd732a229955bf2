"""The training config: one typed, bounded document, validated before any process starts.

A YAML file is read into `TrainConfig`; an unknown key or a bad value fails with a message that
names the key (`optimizer.lrr is not a known key; known keys here: lr, name, ...`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shipyard.errors import InvalidInput


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskConfig(_Strict):
    """What is trained on what: a task from `shipyard.train.tasks` (or 'package.module:attr')."""

    name: str = Field(description="Task name ('digits') or 'package.module:attr' of a Task factory.")
    options: dict[str, Any] = Field(
        default_factory=dict, description="Task-specific options, e.g. digits: subset, dropout."
    )


class DataConfig(_Strict):
    batch_size: int = Field(64, ge=1, le=1 << 20, description="Samples per micro-batch on EACH rank.")
    grad_accum: int = Field(1, ge=1, le=4096, description="Micro-batches per optimizer step.")
    shuffle: bool = Field(True, description="Reshuffle every epoch (seeded by seed and epoch).")
    drop_last: bool = Field(
        False, description="Drop the last incomplete batch of each rank (otherwise it is smaller)."
    )


class OptimizerConfig(_Strict):
    name: Literal["adamw", "sgd"] = Field("adamw", description="torch.optim.AdamW or SGD.")
    lr: float = Field(2e-3, gt=0, le=10, description="Peak learning rate.")
    weight_decay: float = Field(1e-4, ge=0, le=1, description="Decoupled (AdamW) or L2 (SGD).")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")


class ScheduleConfig(_Strict):
    name: Literal["constant", "cosine", "linear"] = Field(
        "cosine", description="Learning rate after warm-up: constant, cosine or linear decay to min_lr_ratio."
    )
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up from 0 over this many steps.")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="Final lr as a fraction of the peak.")


class ParallelConfig(_Strict):
    strategy: Literal["auto", "none", "ddp", "fsdp"] = Field(
        "auto",
        description="'auto': DDP when launched with several ranks, none for one. 'fsdp': "
        "parameters, gradients and optimizer state sharded across ranks (fully_shard).",
    )
    backend: Literal["auto", "gloo", "nccl"] = Field("auto", description="'auto': nccl on GPU, gloo on CPU.")
    timeout_s: float = Field(
        120, gt=0, le=86400,
        description="A collective that waits longer (a peer died or hangs) fails instead of hanging.",
    )


class CheckpointConfig(_Strict):
    every_steps: int = Field(0, ge=0, description="Save every N optimizer steps (0: only at the end).")
    keep: int = Field(2, ge=1, le=1000, description="Newest checkpoints kept (2+ allows falling back).")


class DistillConfig(_Strict):
    teacher: str = Field(description="Repository version to learn from, 'NAME' or 'NAME:VERSION'.")
    alpha: float = Field(0.5, ge=0, le=1, description="Weight of cross-entropy on labels; 1-alpha on the teacher.")
    temperature: float = Field(2.0, gt=0, le=100, description="Softens both distributions in the KL term.")


class PublishConfig(_Strict):
    name: str | None = Field(None, description="Publish the finished model under this name (None: do not).")


class StepCallbackConfig(_Strict):
    """A callback the loop calls after every optimizer step (see `shipyard.train.callbacks`)."""

    name: str = Field(description="'package.module:attr' of a factory that returns the callback.")
    options: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the factory.")


class TrainConfig(_Strict):
    """One training run. The same file runs as one process or under torchrun with N ranks."""

    task: TaskConfig | None = Field(
        None, description="What to train; may be left out when the Python API is given model= and data=."
    )
    epochs: int = Field(1, ge=1, le=100_000, description="Passes over the training data.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps.")
    seed: int = Field(0, ge=0, description="Seeds initialisation, shuffling and dropout (per rank).")
    deterministic: bool = Field(True, description="torch.use_deterministic_algorithms on.")
    threads: int | None = Field(None, ge=1, le=256, description="torch intra-op threads per rank.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="'auto': bf16 autocast on a GPU that supports it, fp32 on CPU."
    )
    clip_grad_norm: float | None = Field(None, gt=0, description="Clip the global gradient norm to this.")
    data: DataConfig = Field(default_factory=DataConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    parallel: ParallelConfig = Field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    distill: DistillConfig | None = Field(None, description="Train against a teacher's logits.")
    publish: PublishConfig = Field(default_factory=PublishConfig)
    output_dir: Path = Field(Path("runs/train"), description="Checkpoints, metrics.jsonl, TensorBoard.")
    progress: bool = Field(True, description="A rich progress bar on rank 0.")
    log_every_steps: int = Field(10, ge=1, description="Progress and TensorBoard update interval.")
    on_step: list[StepCallbackConfig] = Field(
        default_factory=list, description="Callbacks run after every optimizer step on every rank (tracking, logging)."
    )

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.publish.name is not None:
            from shipyard.repository import check_model_name

            try:
                check_model_name(self.publish.name)
            except InvalidInput as e:
                raise ValueError(f"publish.name: {e.message}") from None
        return self


def _known_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys allowed at `loc` (the parent of an unknown key), for the error message."""
    current: Any = model
    for part in loc:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        args = [a for a in getattr(ann, "__args__", ()) if isinstance(a, type)]
        current = ann if isinstance(ann, type) else next(
            (a for a in args if issubclass(a, BaseModel)), None)
        if current is None:
            return []
    return sorted(getattr(current, "model_fields", {}))


def describe_errors(e: ValidationError, source: str) -> str:
    """A pydantic error as lines that name each key, its value and what is allowed."""
    lines = []
    for err in e.errors():
        loc = tuple(err["loc"])
        key = ".".join(map(str, loc)) or "(top level)"
        if err["type"] == "extra_forbidden":
            known = _known_keys(TrainConfig, loc[:-1])
            lines.append(f"{key} is not a known key" + (f"; known keys here: {', '.join(known)}" if known else ""))
        elif err["type"] == "missing":
            lines.append(f"{key} is required")
        else:
            lines.append(f"{key}: {err['msg']} (got {err.get('input')!r})")
    return f"invalid training config {source}: " + "; ".join(lines)


def parse_config(data: Any, source: str = "(given)") -> TrainConfig:
    if not isinstance(data, dict):
        raise InvalidInput(f"training config {source} must be a mapping of keys, got {type(data).__name__}")
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as e:
        raise InvalidInput(describe_errors(e, source)) from None


def load_config(path: str | Path) -> TrainConfig:
    """Read and validate a YAML training config; every problem names its key."""
    from shipyard.config import read_yaml

    return parse_config(read_yaml(path, "training config"), str(path))

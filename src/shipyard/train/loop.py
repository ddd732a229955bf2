"""The one training loop. It runs unchanged as one process or as torchrun ranks; it branches only
on "am I rank 0" and on how the model is wrapped (nothing, DDP, or FSDP's fully_shard)."""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from shipyard.errors import InvalidInput
from shipyard.repository import Manifest
from shipyard.train import checkpoint as ckpt
from shipyard.train import dist as d
from shipyard.train.callbacks import StepCallback, StepInfo, build_callbacks
from shipyard.train.config import OptimizerConfig, ScheduleConfig, TrainConfig, load_config, parse_config
from shipyard.train.distill import Teacher, distillation_loss
from shipyard.train.report import Reporter
from shipyard.train.sampler import ShardedBatches
from shipyard.train.tasks import Task, build_task


@dataclass
class FitResult:
    """`model`: the trained, unwrapped model with full weights (on rank 0; other ranks under FSDP
    hold their shards). `metrics`: what was measured and published."""

    model: nn.Module
    metrics: dict[str, Any]
    steps: int
    manifest: Manifest | None = None
    checkpoint: Path | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


def make_optimizer(cfg: OptimizerConfig, params: Any) -> torch.optim.Optimizer:
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def lr_factor(cfg: ScheduleConfig, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.name == "constant":
            return 1.0
        span = max(1, total - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.name == "cosine" else 1 - progress
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * shape

    return factor


def _autocast(precision: str, device: torch.device) -> Any:
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _resolve_precision(cfg: TrainConfig, device: torch.device) -> str:
    if cfg.precision != "auto":
        return cfg.precision
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def _as_teacher(teacher: Any, cfg: TrainConfig, repository: Path | None, env: d.DistEnv) -> Any:
    if teacher is None and cfg.distill is not None:
        if repository is None:
            raise InvalidInput("distill.teacher names a repository version: give --repository")
        teacher = cfg.distill.teacher
    if teacher is None:
        return None
    if isinstance(teacher, str):
        return Teacher(repository or Path("model-repository"), teacher, torch.get_num_threads(), env.device.type)
    if isinstance(teacher, nn.Module):
        module = teacher.to(env.device).eval()

        def run(*inputs: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                out = module(*inputs)
            return out.clone()  # a normal tensor: inference tensors cannot be saved for backward

        return run
    return teacher


def fit(config: TrainConfig | dict[str, Any] | str | Path, *, model: nn.Module | Callable[[], nn.Module] | None = None,
        data: Dataset[Any] | None = None, task: Task | None = None, teacher: Any = None,
        repository: str | Path | None = None, resume: bool = False,
        on_step: Sequence[StepCallback] = ()) -> FitResult:
    """Train as configured; see the package docstring for the API. `on_step`: callables run after
    every optimizer step, before those the config's `on_step` names (`shipyard.train.callbacks`)."""
    cfg = config if isinstance(config, TrainConfig) else (
        parse_config(config) if isinstance(config, dict) else load_config(config))
    repo = Path(repository) if repository is not None else None
    env = d.setup(cfg.parallel)
    try:
        return _fit(cfg, env, model, data, task, teacher, repo, resume, on_step)
    finally:
        d.teardown(env)


def _fit(cfg: TrainConfig, env: d.DistEnv, model: Any, data: Any, task: Task | None, teacher: Any,
         repo: Path | None, resume: bool, on_step: Sequence[StepCallback]) -> FitResult:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(cfg.deterministic)
    if task is None and cfg.task is not None:
        task = build_task(cfg.task.name, cfg.task.options)
    if task is None and (model is None or data is None):
        raise InvalidInput("give a task in the config, or both model= and data=")
    build = (model if callable(model) and not isinstance(model, nn.Module) else None) or (
        task.build_model if task is not None and model is None else None)
    torch.manual_seed(cfg.seed)  # every rank builds the same initial weights
    student: nn.Module = model if isinstance(model, nn.Module) else build()  # type: ignore[misc]
    template = copy.deepcopy(student) if env.strategy == "fsdp" and build is None else None
    dataset = data if data is not None else task.train_data  # type: ignore[union-attr]
    loss_fn = task.loss if task is not None else None
    batches = ShardedBatches(dataset, cfg.data.batch_size, env.rank, env.world, cfg.seed,
                             cfg.data.shuffle, cfg.data.drop_last)
    accum = cfg.data.grad_accum
    steps_per_epoch = math.ceil(batches.batches_per_epoch / accum)
    total = cfg.epochs * steps_per_epoch if cfg.max_steps is None else min(cfg.max_steps, cfg.epochs * steps_per_epoch)
    wrapped = d.wrap(student, env)
    optimizer = make_optimizer(cfg.optimizer, wrapped.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg.schedule, total))
    torch.manual_seed(cfg.seed + 1 + env.rank)  # dropout and the like differ per rank, reproducibly
    teach = _as_teacher(teacher, cfg, repo, env)
    callbacks = [*on_step, *build_callbacks(cfg.on_step)]
    precision = _resolve_precision(cfg, env.device)
    out = cfg.output_dir
    pos = ckpt.Position(0, 0, 0)
    reporter = Reporter(out, total, env.is_main, cfg.progress)
    last_ckpt: Path | None = None
    if resume:
        chosen, refused = ckpt.choose(out / "checkpoints", env)
        for line in refused:
            reporter.log(f"[yellow]checkpoint {line}[/]")
        if chosen is None:
            raise InvalidInput(f"--resume: no usable checkpoint in {out / 'checkpoints'}")
        pos = ckpt.load(chosen, wrapped, optimizer, scheduler, env)
        last_ckpt = chosen
        reporter.log(f"resumed from {chosen.name} (epoch {pos.epoch}, step {pos.step})")
    elif env.is_main:
        _fresh_start(out, reporter)
    reporter.log(
        f"training {task.name if task else type(student).__name__} on {env.world} rank(s), "
        f"strategy {env.strategy}, backend {env.backend or '-'}, {env.device}, precision {precision}"
        + (" (bf16 autocast is used on GPUs only; this CPU trains in fp32)" if precision == "fp32" and env.device.type == "cpu" else "")
    )
    if reporter.progress is not None:
        reporter.progress.update(reporter.task, completed=pos.step)
    history: list[dict[str, Any]] = []
    micro_samples = cfg.data.batch_size * env.world
    started = time.perf_counter()
    wrapped.train()

    def step(group: list[tuple[torch.Tensor, ...]]) -> torch.Tensor:
        n = len(group)
        total_loss = torch.zeros((), device=env.device)
        for i, batch in enumerate(group):
            *inputs, target = (t.to(env.device, non_blocking=True) for t in batch)
            with d.no_grad_sync(wrapped, env, skip=i < n - 1), _autocast(precision, env.device):
                logits = wrapped(*inputs)
                if teach is not None:
                    loss = distillation_loss(logits, teach(*inputs).to(env.device), target,
                                             cfg.distill.alpha if cfg.distill else 0.5,
                                             cfg.distill.temperature if cfg.distill else 2.0)
                else:
                    loss = loss_fn(logits, target) if loss_fn else nn.functional.cross_entropy(logits, target)
                (loss / n).backward()
            total_loss += loss.detach()
        if cfg.clip_grad_norm is not None:
            nn.utils.clip_grad_norm_(wrapped.parameters(), cfg.clip_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return total_loss / n

    while pos.step < total:
        if pos.batch >= batches.batches_per_epoch:  # a checkpoint taken at the end of an epoch
            pos.epoch, pos.batch = pos.epoch + 1, 0
        epoch_loss = torch.zeros((), device=env.device)
        epoch_steps, epoch_micro = 0, 0
        epoch_start = window_start = time.perf_counter()
        window_samples = 0
        group: list[tuple[torch.Tensor, ...]] = []
        for batch in batches.epoch(pos.epoch, pos.batch):
            group.append(batch)
            if len(group) < accum and pos.batch + len(group) < batches.batches_per_epoch:
                continue
            loss = step(group)
            pos.batch += len(group)
            epoch_micro += len(group)
            pos.step += 1
            window_samples += len(group) * micro_samples
            group = []
            epoch_loss += loss
            epoch_steps += 1
            if pos.step % cfg.log_every_steps == 0 or pos.step == total:
                now = time.perf_counter()
                reporter.step(pos.step, float(loss), window_samples / max(now - window_start, 1e-9),
                              scheduler.get_last_lr()[0])
                window_start, window_samples = now, 0
            saved = None
            if cfg.checkpoint.every_steps and pos.step % cfg.checkpoint.every_steps == 0 and pos.step < total:
                last_ckpt = saved = _save(out, pos, wrapped, optimizer, scheduler, env, cfg)
            if callbacks:
                info = StepInfo(step=pos.step, total=total, epoch=pos.epoch, rank=env.rank, world=env.world,
                                loss=loss, lr=scheduler.get_last_lr()[0], checkpoint=saved)
                for callback in callbacks:
                    callback(info)
            if pos.step >= total:
                break
        seconds = time.perf_counter() - epoch_start
        record = {"epoch": pos.epoch + 1, "step": pos.step,
                  "train_loss": d.all_reduce_mean(float(epoch_loss) / max(epoch_steps, 1), env),
                  "lr": scheduler.get_last_lr()[0],
                  "samples_per_s": epoch_micro * micro_samples / max(seconds, 1e-9), "seconds": seconds}
        record.update(_evaluate(task, wrapped, env))
        history.append(record)
        reporter.epoch(record)
    train_seconds = time.perf_counter() - started
    last_ckpt = _save(out, pos, wrapped, optimizer, scheduler, env, cfg)
    full = d.full_state_dict(wrapped, env)
    reporter.close()
    final = d.unwrap(wrapped)
    metrics: dict[str, Any] = {}
    manifest = None
    if env.is_main:
        if env.strategy == "fsdp":
            final = build() if build is not None else template  # type: ignore[assignment]
            final.load_state_dict(full)
        final.eval()
        metrics = {
            "parameters": int(sum(p.numel() for p in final.parameters())),
            "train_loss": history[-1]["train_loss"] if history else None,
            "steps": pos.step, "epochs": cfg.epochs, "world_size": env.world,
            "train_seconds": train_seconds,
            **({k: v for k, v in task.evaluate(final).items()} if task and task.evaluate else {}),
        }
        if cfg.publish.name is not None:
            if task is None or repo is None:
                raise InvalidInput("publishing needs a task (for the export) and a repository")
            from shipyard.train.publish import publish

            facts = {"strategy": env.strategy, "world_size": env.world, "precision": precision,
                     "history": history, "teacher": getattr(teach, "ref", None)}
            manifest = publish(repo, cfg, task, final, metrics, facts)
            reporter.log(f"published {manifest.name}:{manifest.version} into {repo}")
    d.barrier(env)
    return FitResult(model=final, metrics=metrics, steps=pos.step, manifest=manifest,
                     checkpoint=last_ckpt, history=history)


def _save(out: Path, pos: ckpt.Position, model: nn.Module, optimizer: torch.optim.Optimizer,
          scheduler: Any, env: d.DistEnv, cfg: TrainConfig) -> Path:
    return ckpt.save(out / "checkpoints", pos, model, optimizer, scheduler, env,
                     {"config": cfg.model_dump(mode="json")}, cfg.checkpoint.keep)


def _fresh_start(out: Path, reporter: Reporter) -> None:
    """A run started without resume owns its folder: an earlier run's checkpoints must not be
    mistaken for this one's by a later --resume, nor its metrics mixed in. (`shipyard train`
    refuses earlier, before starting; the Python API asked for a fresh run.)"""
    import shutil

    old = ckpt.listing(out / "checkpoints")
    for p in old:
        shutil.rmtree(p, ignore_errors=True)
    if old:
        reporter.log(f"removed {len(old)} checkpoint(s) of an earlier run in {out / 'checkpoints'}")
    (out / "metrics.jsonl").unlink(missing_ok=True)


def _evaluate(task: Task | None, model: nn.Module, env: d.DistEnv) -> dict[str, float]:
    """Per-epoch metrics on the task's evaluation data. Under FSDP every rank takes part (the
    forward gathers shards); otherwise rank 0 alone on its full replica."""
    if task is None or task.evaluate is None or (env.strategy != "fsdp" and not env.is_main):
        return {}
    model.eval()
    try:
        return task.evaluate(d.unwrap(model))
    finally:
        model.train()

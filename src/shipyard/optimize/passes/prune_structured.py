"""Structured pruning: physically remove the weakest output channels of conv/linear layers (and of
everything that reads them), or attention heads and FFN neurons of transformers, so compute and
size drop. Optional fine-tuning on training data recovers accuracy. ONNX models are converted to
PyTorch first (`onnx_torch.py`); the result is PyTorch (an `export` pass takes it back to ONNX)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from shipyard.errors import InvalidInput
from shipyard.optimize.artifact import Artifact, set_mode, torch_forward
from shipyard.optimize.passes import graph
from shipyard.optimize.passes.base import TORCH, Context, PassConfig, register
from shipyard.optimize.passes.onnx_torch import to_torch
from shipyard.optimize.passes.transformer_prune import prune_transformer


class PruneStructured(PassConfig):
    """Remove a fraction of channels (CNN/MLP layers) or heads and FFN neurons (transformers)."""

    name: ClassVar[str] = "prune-structured"
    accepts: ClassVar[frozenset[str] | None] = TORCH | {"onnx"}
    amount: float = Field(0.5, ge=0.0, lt=1.0, description="Fraction of output channels removed from each prunable layer.")
    heads: float | None = Field(None, ge=0.0, lt=1.0, description="Transformers: fraction of attention heads removed per layer (default: amount).")
    ffn: float | None = Field(None, ge=0.0, lt=1.0, description="Transformers: fraction of FFN neurons removed per layer (default: amount).")
    fine_tune_epochs: int = Field(0, ge=0, le=1000, description="Epochs of fine-tuning on --train data after pruning (0: none).")
    lr: float = Field(1e-3, gt=0, le=1.0, description="Fine-tuning peak learning rate (AdamW, cosine decay to 0).")
    batch_size: int = Field(64, ge=1, le=65536, description="Fine-tuning batch size.")
    importance: Literal["l1", "l2"] = Field("l1", description="Which channels go: those whose weights have the smallest L1 or L2 norm.")


def _prune_graph(gm: Any, config: PruneStructured, ctx: Context) -> dict[str, Any]:
    groups, fixed = graph.prunable_groups(gm)
    if not groups:
        raise InvalidInput(
            "pass 'prune-structured' found no layer whose channels it can remove (layers: "
            f"{fixed}); only conv/linear outputs that flow through activations, pooling, batch norm "
            "or flatten into another conv/linear can be pruned. Try prune-unstructured or low-rank")
    removed: dict[str, list[int]] = {}
    for g in groups:
        scores = graph.channel_scores(gm, g, config.importance)
        n = len(scores)
        keep_n = max(1, round(n * (1 - config.amount)))
        keep = torch.sort(torch.topk(scores, keep_n).indices).values
        graph.remove_channels(gm, g, keep)
        removed[g.name] = [n, keep_n]
    gm.recompile()
    ctx.note(f"structured pruning removed output channels ({config.importance.upper()} magnitude): " +
             ", ".join(f"{k} {a}->{b}" for k, (a, b) in removed.items()) +
             (f"; left whole (output feeds the model output or an op that needs all channels): {fixed}" if fixed else ""))
    return {"channels": removed, "kept_whole": fixed}


def fine_tune(artifact: Artifact, config: PruneStructured, ctx: Context) -> dict[str, float]:
    """A few epochs of the task's loss (cross-entropy for classifiers) on the training split:
    enough to recover from pruning."""
    data = ctx.train
    if data is None or data.labels is None:
        raise InvalidInput("pass 'prune-structured' asks for fine-tuning but no labelled --train data "
                           "was given; pass --train zoo:digits-train (or an .npz with labels), or set fine_tune_epochs: 0")
    module = artifact.module
    params = [p for p in module.parameters() if p.is_floating_point()]
    for p in params:
        p.requires_grad_(True)
    call = torch_forward(artifact)
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=1e-4)
    # Cosine decay to zero: the last epochs settle in a minimum instead of bouncing around it at
    # the full rate, which is worth a few tenths of a point on a small test set.
    steps = config.fine_tune_epochs * -(-len(data.labels) // config.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))
    gen = torch.Generator().manual_seed(ctx.seed)
    inputs = {k: torch.from_numpy(v) for k, v in data.inputs.items()}
    labels = torch.from_numpy(data.labels)
    labels = labels.long() if ctx.task in (None, "multiclass", "language-modelling") else labels.float()
    names = [t.name for t in artifact.signature.inputs]
    set_mode(module, True)
    last = float("nan")
    for _ in range(config.fine_tune_epochs):
        order = torch.randperm(len(labels), generator=gen)
        total, count = 0.0, 0
        for i in range(0, len(order), config.batch_size):
            idx = order[i : i + config.batch_size]
            logits = call(*[inputs[n][idx] for n in names])[0]
            loss = task_loss(ctx.task, logits, labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        last = total / count
    set_mode(module, False)
    for p in params:
        p.requires_grad_(False)
    ctx.note(f"fine-tuned {config.fine_tune_epochs} epochs on {data.name} (final train loss {last:.4f})")
    return {"fine_tune_epochs": config.fine_tune_epochs, "final_train_loss": last}


def task_loss(task: str | None, out: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for classifiers (and when the task is unknown), else the task's own loss."""
    if task in (None, "multiclass"):
        return nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), labels.reshape(-1))
    from shipyard.tasks import torch_loss

    return torch_loss(task, out, labels, soft=False)


@register(PruneStructured)
def prune_structured(artifact: Artifact, config: PruneStructured, ctx: Context) -> Artifact:
    if artifact.kind == "onnx":  # channels are removed in PyTorch: converted once, checked (onnx_torch.py)
        artifact = to_torch(artifact, ctx, config.name)
    if artifact.is_transformers:
        facts = prune_transformer(artifact.module, config.amount if config.heads is None else config.heads,
                                  config.amount if config.ffn is None else config.ffn, ctx)
        # Pruned layers no longer match any config: the version is published as torch.export.
        out = artifact.evolve(extra={"save_as": "torch-export"})
    elif graph.is_graph(artifact.module):
        facts = _prune_graph(artifact.module, config, ctx)
        out = artifact
    else:
        raise InvalidInput(f"pass 'prune-structured' cannot trace a {type(artifact.module).__name__}; "
                           "publish the model as torch.export (or a transformers folder) first")
    if config.fine_tune_epochs:
        facts.update(fine_tune(out, config, ctx))
    ctx.facts["prune_structured"] = facts
    return out

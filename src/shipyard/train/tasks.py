"""Tasks: what the loop trains (model, data, loss, evaluation, export). One registry line each.

A `Task` is plain data built by a factory `factory(**options) -> Task`. The loop knows nothing of
digits or language models; it asks the task. Users add their own with `task.name:
"package.module:factory"` in the config.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from shipyard.errors import InvalidInput
from shipyard.repository import Signature
from shipyard.train.named import load_named


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over every position (works for [B, C] and [B, T, C] logits)."""
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


@dataclass
class Task:
    """What an implementer must give: a model factory (called once per rank, after seeding, so
    every rank starts from the same weights), training data of `(inputs..., target)` samples, and
    an export for publishing. `evaluate` returns metrics for the manifest (run on rank 0 only)."""

    name: str
    build_model: Callable[[], nn.Module]
    train_data: Dataset[Any]
    signature: Signature
    export: Callable[[nn.Module, Path], None]
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = cross_entropy
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    # Publishing in a format other than a torch.export program (a causal LM's folder, say):
    # `publish(model, repository, name, lineage, metrics, extra) -> Manifest` replaces `export`.
    publish: Callable[..., Any] | None = None


def digits(subset: int | None = None, dropout: float = 0.2, eval_subset: int | None = None) -> Task:
    """The digits CNN (`shipyard.zoo.digits`) on scikit-learn's bundled digits, train split.

    subset: train on the first N samples only (small, fast runs; distillation on little data).
    dropout: the CNN's dropout probability (0 makes runs bit-comparable across rank counts).
    """
    from shipyard.zoo import digits as zoo

    if subset is not None and subset < 1:
        raise InvalidInput(f"task.options.subset must be at least 1, got {subset}")
    if not 0 <= dropout < 1:
        raise InvalidInput(f"task.options.dropout must be in [0, 1), got {dropout}")
    train = zoo.load("train")
    test = zoo.load("test")
    n = len(train.labels) if subset is None else min(subset, len(train.labels))
    data = TensorDataset(torch.from_numpy(train.pixels[:n]), torch.from_numpy(train.labels[:n]))
    m = len(test.labels) if eval_subset is None else min(eval_subset, len(test.labels))
    test_x, test_y = torch.from_numpy(test.pixels[:m]), torch.from_numpy(test.labels[:m])

    def build() -> nn.Module:
        model = zoo.DigitsCNN()
        for mod in model.modules():
            if isinstance(mod, nn.Dropout):
                mod.p = dropout
        return model

    def evaluate(model: nn.Module) -> dict[str, float]:
        with torch.inference_mode():
            logits = model(test_x)
        return {
            "accuracy": float((logits.argmax(1) == test_y).float().mean()),
            "eval_loss": float(cross_entropy(logits, test_y)),
        }

    return Task(
        name="digits", build_model=build, train_data=data, signature=zoo.SIGNATURE,
        export=zoo.export_program, evaluate=evaluate,
        options={"subset": subset, "dropout": dropout, "eval_subset": eval_subset},
    )


def code_lm(size: str = "demo", max_files: int | None = None, max_windows: int | None = None,
            layers: int | None = None, hidden: int | None = None, heads: int | None = None,
            vocab: int | None = None, seq: int | None = None) -> Task:
    """code-lm (`shipyard.zoo.code_lm`): a GPT-2-style model of Python, on the standard library.

    size: 'demo' or 'small' (shape, vocabulary and window from `zoo.code_lm.SIZES`); layers,
    hidden, heads, vocab and seq override it. max_files: train on the first N files only.
    max_windows: at most N training windows of `seq` tokens (an epoch's length).
    Published as `hf-causal-lm` (weights, config and tokenizer), ready for the OpenAI channel.
    """
    from shipyard.zoo import code_lm as zoo
    from shipyard.zoo import lm

    if size not in zoo.SIZES:
        raise InvalidInput(f"task.options.size {size!r} is not known; use one of {', '.join(zoo.SIZES)}")
    for key, value in {"max_files": max_files, "max_windows": max_windows, "layers": layers,
                       "hidden": hidden, "heads": heads, "vocab": vocab, "seq": seq}.items():
        if value is not None and value < 1:
            raise InvalidInput(f"task.options.{key} must be at least 1, got {value}")
    base = zoo.SIZES[size]
    shape = {"layers": layers or base.layers, "hidden": hidden or base.hidden, "heads": heads or base.heads}
    window = seq or base.seq
    train_texts, held_texts = zoo.texts(max_files)
    tokenizer = lm.train_tokenizer(train_texts, vocab or base.vocab)  # deterministic: same on every rank
    ids, held = zoo.tokens(tokenizer, train_texts), zoo.tokens(tokenizer, held_texts)
    count = (len(ids) - 1) // window
    if max_windows is not None:
        count = min(count, max_windows)
    if count < 1:
        raise InvalidInput(f"the training text holds fewer than {window + 1} tokens; give more files")
    rows = ids[: count * window + 1]
    data = TensorDataset(rows[:-1].view(count, window), rows[1:].view(count, window))

    class NextTokenLogits(nn.Module):
        """The HF model as the loop wants it: token ids in, logits out."""

        def __init__(self) -> None:
            super().__init__()
            self.lm = lm.build_model("gpt2", len(tokenizer), context=max(base.context, window), **shape)
            self.lm.config.eos_token_id = self.lm.config.bos_token_id = tokenizer.eos_token_id
            self.lm.generation_config.eos_token_id = tokenizer.eos_token_id

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.lm(ids).logits  # type: ignore[no-any-return]

    def evaluate(model: nn.Module) -> dict[str, float]:
        return {"heldout_perplexity": round(zoo.perplexity(model.lm, held, window), 3)}

    def publish(model: nn.Module, repo: Any, name: str, lineage: Any, metrics: dict[str, Any],
                extra: dict[str, Any]) -> Any:
        return zoo.publish(repo, model.lm, tokenizer, metrics, size, name=name, lineage=lineage, extra=extra)

    def no_export(model: nn.Module, path: Path) -> None:
        raise InvalidInput("code-lm publishes as hf-causal-lm, not as a torch.export program")

    return Task(
        name="code-lm", build_model=NextTokenLogits, train_data=data, signature=Signature(inputs=[], outputs=[]),
        export=no_export, evaluate=evaluate, publish=publish,
        options={"size": size, "max_files": max_files, "max_windows": max_windows, **shape,
                 "vocab": vocab or base.vocab, "seq": window},
    )


REGISTRY: dict[str, Callable[..., Task]] = {"digits": digits, "code-lm": code_lm}


def resolve(name: str) -> Callable[..., Task]:
    """A task factory by registry name or 'package.module:attr'."""
    if name in REGISTRY:
        return REGISTRY[name]
    if ":" not in name:
        raise InvalidInput(
            f"task.name {name!r} is not a known task; known: {', '.join(sorted(REGISTRY))}, "
            "or 'package.module:factory' for your own"
        )
    return load_named(name, "task.name")  # type: ignore[no-any-return]


def build_task(name: str, options: dict[str, Any]) -> Task:
    factory = resolve(name)
    try:
        task = factory(**options)
    except TypeError as e:  # an unknown option: name it
        raise InvalidInput(f"task.options for {name!r}: {e}") from None
    if not isinstance(task, Task):
        raise InvalidInput(f"task {name!r} returned {type(task).__name__}, not a shipyard.train.Task")
    return task

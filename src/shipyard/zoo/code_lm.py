"""code-lm: a small GPT-style model of Python, trained here on the running interpreter's own
standard library (`Lib/*.py`), so nothing is downloaded.

Files are split, not lines: every 20th file (sorted by name) is held out, and the held-out
perplexity is measured on those files only. A byte-level BPE tokenizer is trained on the training
files first. The demo size trains in about two minutes on two cores.
"""

from __future__ import annotations

import math
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shipyard.repository import Lineage, Manifest, Repository

NAME = "code-lm"
HOLDOUT_EVERY = 20


@dataclass(frozen=True)
class Size:
    """One training size: model shape, tokenizer vocabulary, steps and a wall-clock cap."""

    layers: int
    hidden: int
    heads: int
    context: int
    vocab: int
    steps: int
    batch: int
    seq: int
    lr: float
    max_seconds: float


SIZES = {
    "demo": Size(layers=4, hidden=128, heads=4, context=512, vocab=2048, steps=600, batch=16, seq=128,
                 lr=3e-3, max_seconds=150),
    "small": Size(layers=6, hidden=256, heads=8, context=1024, vocab=8192, steps=3000, batch=16, seq=256,
                  lr=1e-3, max_seconds=3600),
}


def stdlib_files() -> tuple[list[Path], list[Path]]:
    """(train, held-out) Python files of the standard library this interpreter runs on."""
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    held = files[::HOLDOUT_EVERY]
    return [f for f in files if f not in held], held


def _read(files: list[Path]) -> list[str]:
    return [f.read_text(encoding="utf-8", errors="replace") for f in files]


def texts(max_files: int | None = None) -> tuple[list[str], list[str]]:
    """(train, held-out) texts; with `max_files`, the first N training files and a tenth as many
    held-out ones (small, fast runs)."""
    train_files, held_files = stdlib_files()
    if max_files:
        train_files, held_files = train_files[:max_files], held_files[:max(1, max_files // 10)]
    return _read(train_files), _read(held_files)


def tokens(tokenizer: Any, texts: list[str]) -> Any:
    import torch

    ids: list[int] = []
    for row in tokenizer(texts, add_special_tokens=False)["input_ids"]:  # one batch: Rust threads
        ids.extend(row)
        ids.append(tokenizer.eos_token_id)  # a file boundary the model can learn
    return torch.tensor(ids, dtype=torch.long)


def perplexity(model: Any, data: Any, seq: int, max_tokens: int = 60_000) -> float:
    """exp(mean next-token loss) over consecutive windows of held-out tokens."""
    import torch

    data = data[:max_tokens]
    windows = (len(data) - 1) // seq
    total, count = 0.0, 0
    model.eval()
    with torch.inference_mode():
        for start in range(0, windows, 16):
            rows = torch.stack([data[i * seq:(i + 1) * seq + 1] for i in range(start, min(windows, start + 16))])
            out = model(rows[:, :-1], labels=rows[:, :-1].clone())
            # HF shifts labels internally: seq-1 predictions per row.
            total += float(out.loss) * rows.shape[0] * (seq - 1)
            count += rows.shape[0] * (seq - 1)
    return math.exp(total / max(count, 1))


def train(size: Size, *, max_files: int | None = None, threads: int = 2, seed: int = 0,
          progress: bool = True) -> tuple[Any, Any, dict[str, Any]]:
    """Train tokenizer and model; return (model, tokenizer, metrics)."""
    import torch
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from shipyard.zoo import lm

    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    train_files, held_files = stdlib_files()
    if max_files:
        train_files, held_files = train_files[:max_files], held_files[:max(1, max_files // 10)]
    train_texts, held_texts = _read(train_files), _read(held_files)
    start = time.perf_counter()
    tokenizer = lm.train_tokenizer(train_texts, size.vocab)
    data, held = tokens(tokenizer, train_texts), tokens(tokenizer, held_texts)
    model = lm.build_model("gpt2", len(tokenizer), layers=size.layers, hidden=size.hidden,
                           heads=size.heads, context=size.context)
    model.config.eos_token_id = model.config.bos_token_id = tokenizer.eos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=size.lr, weight_decay=0.01, betas=(0.9, 0.95))
    warmup = max(1, size.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, size.steps) / size.steps)))
    gen = torch.Generator().manual_seed(seed)
    columns = (TextColumn("training code-lm"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
               TextColumn("loss {task.fields[loss]:.3f}"), TimeElapsedColumn())
    steps_done, loss_value = 0, float("nan")
    loop_start = time.perf_counter()
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("train", total=size.steps, loss=float("nan"))
        for step in range(size.steps):
            if time.perf_counter() - loop_start > size.max_seconds:
                break  # the wall-clock cap wins on a busy machine: fewer steps, same recipe
            starts = torch.randint(0, len(data) - size.seq - 1, (size.batch,), generator=gen)
            rows = torch.stack([data[s:s + size.seq] for s in starts.tolist()])
            loss = model(rows, labels=rows).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            steps_done, loss_value = step + 1, loss.item()
            bar.update(task, advance=1, loss=loss_value)
    model.eval()
    seconds = time.perf_counter() - start
    metrics = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "heldout_perplexity": round(perplexity(model, held, size.seq), 3),
        "train_loss": round(loss_value, 4),
        "train_steps": steps_done,
        "train_seconds": round(seconds, 1),
        "train_tokens": steps_done * size.batch * size.seq,
        "train_files": len(train_files),
        "heldout_files": len(held_files),
        "heldout_tokens": int(min(len(held), 60_000)),
    }
    return model, tokenizer, metrics


def existing(repo: Repository) -> Manifest | None:
    for v in reversed(repo.versions(NAME)):
        m = repo.manifest(NAME, v)
        if m.extra.get("zoo") == NAME:
            return m
    return None


def publish(repo: Repository, model: Any, tokenizer: Any, metrics: dict[str, Any], size_name: str, *,
            name: str = NAME, lineage: Lineage | None = None, extra: dict[str, Any] | None = None) -> Manifest:
    from shipyard.runtimes import RuntimeOptions
    from shipyard.runtimes.hf_causal import HFCausalLMRuntime
    from shipyard.zoo import lm

    with tempfile.TemporaryDirectory() as tmp:
        folder = lm.save(model, tokenizer, Path(tmp) / NAME)
        options = RuntimeOptions()
        signature = HFCausalLMRuntime.inspect(folder, options)
        lineage = lineage or Lineage(
            source=f"shipyard.zoo.code_lm --size {size_name} (trained here on the Python standard library)")
        with repo.publish(name, HFCausalLMRuntime.format, signature, lineage, metrics) as stage:
            stage.extra.update(HFCausalLMRuntime.stage(folder, stage.path, options))
            stage.extra.update(extra or {})
            stage.extra["zoo"] = NAME
            stage.extra["size"] = size_name
    assert stage.manifest is not None
    return stage.manifest

"""Causal LMs (`hf-causal-lm`): held-out next-token loss, perplexity and top-1 accuracy of the
parent and the new version on the same tokens (code-lm: its held-out standard-library files;
otherwise the text files `--eval` names), each loaded from its files, plus their weight bytes."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from shipyard.errors import InvalidInput
from shipyard.optimize.data import DataSpec
from shipyard.optimize.evaluators.base import Evaluator, PassData
from shipyard.optimize.formats.hf_causal_lm import open_model
from shipyard.optimize.measure import Versions
from shipyard.optimize.passes import Context
from shipyard.optimize.progress import Progress
from shipyard.repository import Manifest, Repository


def eval_tokens(parent_extra: dict[str, Any], eval_data: Any, tokenizer: Any, max_tokens: int) -> tuple[Any, str]:
    """Held-out token ids: code-lm's held-out stdlib files, or the text files named by `eval_data`."""
    import torch

    if eval_data is None and parent_extra.get("zoo") == "code-lm":
        from shipyard.zoo.code_lm import stdlib_files

        files, label = stdlib_files()[1], "code-lm held-out stdlib files"
    elif isinstance(eval_data, (str, Path)) and Path(eval_data).exists():
        p = Path(eval_data)
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        label = str(p)
    else:
        raise InvalidInput(f"a causal LM is evaluated on text: --eval FILE_OR_FOLDER of text files (got {eval_data!r}); "
                           "code-lm versions default to their held-out standard-library files")
    ids: list[int] = []
    for f in files:
        ids.extend(tokenizer(f.read_text(encoding="utf-8", errors="replace"), add_special_tokens=False)["input_ids"])
        if tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
        if len(ids) > max_tokens:
            break
    if len(ids) < 3:
        raise InvalidInput(f"eval data {label} has {len(ids)} tokens; a perplexity needs at least 3")
    return torch.tensor(ids[:max_tokens], dtype=torch.long), label


def lm_metrics(model: Any, tokens: Any, seq: int) -> dict[str, Any]:
    """Next-token loss, perplexity and top-1 accuracy over consecutive windows of `tokens`."""
    import torch
    import torch.nn.functional as F

    seq, windows = _windows(len(tokens), seq)
    nll, correct, count = 0.0, 0, 0
    started = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, windows, 8):
            rows = torch.stack([tokens[i * seq:(i + 1) * seq + 1] for i in range(start, min(windows, start + 8))])
            logits = model(rows[:, :-1]).logits.float()
            target = rows[:, 1:]
            nll += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="sum"))
            correct += int((logits.argmax(-1) == target).sum())
            count += target.numel()
    loss = nll / count
    return {"loss": round(loss, 5), "perplexity": round(math.exp(loss), 4), "accuracy": correct / count,
            "eval_tokens": count, "eval_seconds": round(time.perf_counter() - started, 2)}


def _windows(tokens: int, seq: int) -> tuple[int, int]:
    """(window length, windows) for `tokens` tokens: each window predicts `seq` next tokens."""
    seq = max(2, min(seq, tokens - 1))
    return seq, (tokens - 1) // seq


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file() and f.suffix == ".safetensors")


class Perplexity(Evaluator):
    task = "language-modelling"

    def prepare(self, repo: Repository, parent: Manifest, calibrate: DataSpec, train: DataSpec) -> PassData:
        import torch
        from transformers import AutoConfig, AutoTokenizer

        torch.set_num_threads(self.options.threads)
        base = repo.path(parent.name, parent.version)
        tokenizer = AutoTokenizer.from_pretrained(str(base), local_files_only=True)
        self.tokens, self.name = eval_tokens(parent.extra, self.options.eval_data, tokenizer, self.options.max_eval_tokens)
        config = AutoConfig.from_pretrained(str(base), local_files_only=True)
        self.seq = min(128, int(getattr(config, "n_positions", None) or config.max_position_embeddings))
        return None, None, None  # the passes that run on an LM (weight-only) need no data

    def facts(self) -> dict[str, Any]:
        seq, windows = _windows(len(self.tokens), self.seq)
        return {"eval": {"data": self.name, "tokens": seq * windows, "window": self.seq}}

    def measure(self, versions: Versions, parent: Manifest, progress: Progress) -> dict[str, dict[str, Any]]:
        # The root is not measured: another pass over the tokens; the report compares with the parent.
        measured: dict[str, dict[str, Any]] = {}
        for key, doing in (("parent", f"measuring {parent.name}:{parent.version} (parent)"),
                           ("new", "measuring the new version (loaded from its files)")):
            progress.update(doing)
            folder, _, extra = versions[key]
            model = open_model(folder, extra)
            measured[key] = {**lm_metrics(model, self.tokens, self.seq), "size_bytes": folder_size(folder)}
            del model
        return measured

    def describe(self, parent: Manifest, measured: dict[str, dict[str, Any]]) -> tuple[int, str]:
        return int(measured["new"]["eval_tokens"]), "top-1 next-token accuracy on the held-out tokens"

    def deltas(self, new: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
        d = super().deltas(new, base)
        d["perplexity"] = round(new["perplexity"] - base["perplexity"], 4)
        d["perplexity_ratio"] = round(new["perplexity"] / base["perplexity"], 5)
        return d

    def summarize(self, measured: dict[str, dict[str, Any]], ctx: Context) -> dict[str, Any]:
        new = measured["new"]
        pp, np_ = measured["parent"]["perplexity"], new["perplexity"]
        ctx.note(f"held-out perplexity {pp:.3f} -> {np_:.3f} ({np_ - pp:+.3f}, {100 * (np_ / pp - 1):+.2f}%) "
                 f"on {new['eval_tokens']:,} tokens of {self.name}")
        return {"perplexity_delta": round(np_ - pp, 4)}

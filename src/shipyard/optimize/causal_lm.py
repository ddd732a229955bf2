"""Weight-only quantized causal LMs: optimize an `hf-causal-lm` version into a new `hf-causal-lm`
version whose Linear weights are stored as int8 (or packed int4) + scales in safetensors.

The folder format (`weight_only.json` beside the safetensors) lives in `shipyard.quant.lm_folder`,
where the `hf-causal-lm` runtime reads it too; this module runs the passes, saves, and measures.

The report measures held-out next-token loss, perplexity and top-1 accuracy of parent and new
version on the same tokens (code-lm: its held-out standard-library files; otherwise text files).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from shipyard.errors import InvalidInput
from shipyard.quant.lm_folder import is_weight_only, load_weight_only, save_weight_only


# -- measuring -------------------------------------------------------------------------------
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

    seq = max(2, min(seq, len(tokens) - 1))
    windows = (len(tokens) - 1) // seq
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


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file() and f.suffix == ".safetensors")


# -- the optimize run ------------------------------------------------------------------------
def optimize_causal_lm(repo: Any, parent: Any, root: Any, steps: Any, eval_data: Any, threads: int,
                       progress: Any, task: Any, max_eval_tokens: int = 20_000) -> tuple[Any, dict[str, Any]]:
    """Apply weight-only passes to an hf-causal-lm version and publish the result (same format)."""
    import gc

    import torch
    import transformers
    from transformers import AutoTokenizer

    from shipyard.optimize.artifact import Artifact
    from shipyard.optimize.passes import Context
    from shipyard.optimize.passes.weight_only import WeightOnly
    from shipyard.optimize.report import build_report, write_reports
    from shipyard.optimize.runner import apply_recipe
    from shipyard.repository import Lineage

    others = [c.name for c in steps if not isinstance(c, WeightOnly)]
    if others:
        raise InvalidInput(f"{parent.name}:{parent.version} is an hf-causal-lm; its recipe may only use the "
                           f"'weight-only' pass (presets int8-weight-only, int4-weight-only), not {others}")
    torch.set_num_threads(threads)
    base = repo.path(parent.name, parent.version)
    arch = parent.extra.get("architecture") or "AutoModelForCausalLM"
    loader = getattr(transformers, arch, transformers.AutoModelForCausalLM)

    def open_parent() -> Any:
        if is_weight_only(base):
            return load_weight_only(base)
        return loader.from_pretrained(str(base), local_files_only=True, use_safetensors=True).eval()

    tokenizer = AutoTokenizer.from_pretrained(str(base), local_files_only=True)
    tokens, label = eval_tokens(parent.extra, eval_data, tokenizer, max_eval_tokens)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="shipyard-optimize-") as tmp:
        ctx = Context(workdir=Path(tmp), threads=threads, eval_data=None, calibration=None, train=None)
        model = open_parent()
        seq = min(128, int(getattr(model.config, "n_positions", None) or model.config.max_position_embeddings))
        progress.update(task, description=f"measuring {parent.name}:{parent.version} (parent)")
        measured: dict[str, Any] = {"parent": {**lm_metrics(model, tokens, seq), "size_bytes": folder_size(base)}}
        # saved_as: the weight-only pass may pick kernels that torch.export could not save.
        artifact = Artifact("torch", parent.signature, module=model, extra={"architecture": arch, "saved_as": "safetensors"})
        artifact = apply_recipe(artifact, steps, ctx, lambda i, c: progress.update(
            task, description=f"step {i}/{len(steps)}: {c.name}"))
        lineage = Lineage(parent=parent.version, recipe=[c.record() for c in steps])
        with repo.publish(parent.name, "hf-causal-lm", parent.signature, lineage) as stage:
            progress.update(task, description="saving")
            meta = save_weight_only(artifact.module, base, stage.path)
            del model, artifact
            gc.collect()
            progress.update(task, description="measuring the new version (loaded from its files)")
            new = {**lm_metrics(load_weight_only(stage.path), tokens, seq), "size_bytes": folder_size(stage.path)}
            measured["new"] = new
            ctx.facts["eval"] = {"data": label, "tokens": new["eval_tokens"], "window": seq}
            ctx.facts["weight_only_file"] = {k: v for k, v in meta.items() if k != "layers"} | {"layers": len(meta["layers"])}
            pp, np_ = measured["parent"]["perplexity"], new["perplexity"]
            ctx.note(f"held-out perplexity {pp:.3f} -> {np_:.3f} ({np_ - pp:+.3f}, {100 * (np_ / pp - 1):+.2f}%) "
                     f"on {new['eval_tokens']:,} tokens of {label}")
            stage.metrics = {**new, "eval_data": label, "threads": threads,
                             "perplexity_delta": round(np_ - pp, 4)}
            stage.extra = {"architecture": arch, "weight_only": {"bits": meta["bits"], "group_size": meta["group_size"]},
                           "notes": ctx.notes}
            data = type("EvalSet", (), {"name": label, "labels": True, "__len__": lambda self: new["eval_tokens"]})()
            report = build_report(repo, parent.name, parent, root, steps, measured, ctx, data, threads,
                                  {"format": "hf-causal-lm", "lineage": lineage})
            for key in ("vs_parent", "vs_root"):
                report["deltas"][key]["perplexity"] = round(np_ - pp, 4)
                report["deltas"][key]["perplexity_ratio"] = round(np_ / pp, 5)
            report["accuracy_is"] = "top-1 next-token accuracy on the held-out tokens"
            write_reports(report, stage.path)
    assert stage.manifest is not None
    report["version"] = stage.manifest.version
    return stage.manifest, report

#!/usr/bin/env python3
"""Optimize benchmark (issue 3): every preset vs torch eager fp32 and vs plain ONNX Runtime
`quantize_dynamic`, side by side in one run, on

  digits   the demo CNN (trained here; accuracy on its held-out split)
  bert     BertForSequenceClassification, random weights (latency and size only), seq 128
  gpt2     GPT2LMHeadModel, random weights (latency and size only), seq 128
  keras-mlp, keras-cnn   Keras models against Keras predict and TFLite (bench/optimize_keras.py)

Baselines are measured in this process like the shipyard versions: torch eager runs the model
object directly; "ORT qdyn" is torch.onnx.export + onnxruntime's quantize_dynamic with its defaults
(what a user does without shipyard). Shipyard variants are published into a scratch repository by
`shipyard.optimize.optimize` and measured by the runtime that would serve them.

Usage:
  .venv/bin/python bench/optimize.py                    # full sizes: bert-base, gpt2-small (long)
  .venv/bin/python bench/optimize.py --small            # bert 4x256, gpt2 4x256: proves it works
  .venv/bin/python bench/optimize.py --models digits --budget 1
  .venv/bin/python bench/optimize.py --keras-only         # only the Keras rows (TensorFlow extra)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
WORK = ROOT / "bench" / ".work" / "optimize"
RESULTS = ROOT / "bench" / "results"

from shipyard.optimize.data import Dataset  # noqa: E402
from shipyard.optimize.evaluate import latency_ms  # noqa: E402
from shipyard.quant import cpu  # noqa: E402


def tokens(n: int, seq: int, vocab: int, labels: bool = False) -> Dataset:
    rng = np.random.default_rng(0)
    return Dataset({"input_ids": rng.integers(0, vocab, (n, seq)).astype(np.int64),
                    "attention_mask": np.ones((n, seq), np.int64)},
                   rng.integers(0, 2, n).astype(np.int64) if labels else None, f"random tokens seq {seq}")


def build_transformer(kind: str, small: bool, folder: Path) -> Any:
    import torch
    import transformers

    torch.manual_seed(0)
    if kind == "bert":
        cfg = (transformers.BertConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024)
               if small else transformers.BertConfig())  # bert-base: 12 x 768, 110M parameters
        model = transformers.BertForSequenceClassification(cfg)
    else:
        cfg = (transformers.GPT2Config(n_embd=256, n_layer=4, n_head=4) if small else transformers.GPT2Config())
        model = transformers.GPT2LMHeadModel(cfg)
    model.eval().save_pretrained(str(folder), safe_serialization=True)
    return model


def publish_transformer(repo: Any, folder: Path, name: str) -> None:
    """Publish as hf-transformers (input_ids -> logits). A tokenizer-less GPT-2 folder is refused by
    the importer, which hands LM folders to the causal-LM (generation) runtime; optimize measures the
    tensor form here."""
    from shipyard.repository import Lineage
    from shipyard.runtimes import REGISTRY, RuntimeOptions

    cls, options = REGISTRY["hf-transformers"], RuntimeOptions()
    with repo.publish(name, cls.format, cls.inspect(folder, options), Lineage(source=str(folder))) as stage:
        stage.extra.update(cls.stage(folder, stage.path, options))


def torch_eager(model: Any, inputs: dict[str, np.ndarray], budget: float, batch_sizes: tuple[int, ...]) -> dict[str, float]:
    import torch

    out: dict[str, float] = {}
    for b in batch_sizes:
        args = {k: torch.from_numpy(np.ascontiguousarray(np.resize(v, (b, *v.shape[1:])))) for k, v in inputs.items()}
        with torch.inference_mode():
            call = (lambda a=args: model(**a)) if "input_ids" in args else (lambda a=args: model(*a.values()))
            out[f"latency_b{b}_p50_ms"] = latency_ms(call, budget_s=budget, warmup=3, iterations=100)["p50"]
    return out


def ort_qdyn(model: Any, sample: dict[str, np.ndarray], folder: Path, budget: float,
             batch_sizes: tuple[int, ...], out_names: list[str]) -> dict[str, Any]:
    """The baseline a user gets without shipyard: plain export, ORT quantize_dynamic defaults."""
    import onnxruntime as ort
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32, q = folder / "plain.onnx", folder / "plain-qdyn.onnx"
    names = list(sample)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, tuple(torch.from_numpy(sample[n][:1]) for n in names), str(fp32),
                          input_names=names, output_names=out_names, opset_version=17, dynamo=False,
                          dynamic_axes={n: {0: "b", **({1: "s"} if sample[n].ndim == 2 else {})} for n in names})
        quantize_dynamic(str(fp32), str(q), weight_type=QuantType.QInt8)
    so = ort.SessionOptions()
    so.intra_op_num_threads = torch.get_num_threads()
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(q), so, providers=["CPUExecutionProvider"])
    out: dict[str, Any] = {"size_bytes": q.stat().st_size}
    for b in batch_sizes:
        feed = {k: np.ascontiguousarray(np.resize(v, (b, *v.shape[1:]))) for k, v in sample.items()}
        out[f"latency_b{b}_p50_ms"] = latency_ms(lambda f=feed: sess.run(None, f), budget_s=budget, warmup=3, iterations=100)["p50"]
    out["_session"] = sess
    return out


def row(model: str, variant: str, m: dict[str, Any], eager: dict[str, Any], qdyn: dict[str, Any],
        eager_size: int) -> dict[str, Any]:
    r = {"model": model, "variant": variant, "size_bytes": m.get("size_bytes"),
         "latency_b1_p50_ms": m.get("latency_b1_p50_ms"), "latency_b32_p50_ms": m.get("latency_b32_p50_ms"),
         "accuracy": m.get("accuracy"), "parameters": m.get("parameters")}
    for b in (1, 32):
        k = f"latency_b{b}_p50_ms"
        if r.get(k) and eager.get(k):
            r[f"speedup_b{b}_vs_torch"] = eager[k] / r[k]
        if r.get(k) and qdyn.get(k):
            r[f"speedup_b{b}_vs_ort_qdyn"] = qdyn[k] / r[k]
    if r["size_bytes"]:
        r["size_vs_torch"] = r["size_bytes"] / eager_size
    return r


def bench_digits(repo_root: Path, budget: float, with_auto: bool) -> list[dict[str, Any]]:
    import torch

    from shipyard.cli.demo import build
    from shipyard.optimize.runner import optimize
    from shipyard.optimize.search import search
    from shipyard.repository import Repository
    from shipyard.zoo import digits

    repo = Repository(repo_root)
    v1, v2 = build(repo, threads=torch.get_num_threads())
    test = digits.load("test")
    torch.manual_seed(0)
    model = digits.train()
    eager = torch_eager(model, {"pixels": test.pixels}, budget, (1, 32))
    eager["accuracy"] = digits.accuracy(model(torch.from_numpy(test.pixels)).detach().numpy(), test.labels)
    eager_size = sum(p.numel() * 4 for p in model.parameters())
    qd = ort_qdyn(model, {"pixels": test.pixels}, repo_root, budget, (1, 32), ["logits"])
    sess = qd.pop("_session")
    logits = sess.run(None, {"pixels": test.pixels})[0]
    qd["accuracy"] = digits.accuracy(logits, test.labels)
    del sess
    rows = [row("digits", "torch eager fp32", {**eager, "size_bytes": eager_size}, eager, qd, eager_size),
            row("digits", "ORT quantize_dynamic (plain)", qd, eager, qd, eager_size)]
    common = dict(latency_budget_s=budget, eval_data="zoo:digits", calibrate="zoo:digits-train", train="zoo:digits-train")
    for ref, variant, kw in [
        ("digits:2", "onnx fp32 (v2)", None),
        ("digits:1", "int8-dynamic", {"preset_name": "int8-dynamic"}),
        ("digits:1", "int8-static", {"preset_name": "int8-static"}),
        ("digits:1", "fp16", {"preset_name": "fp16"}),
        ("digits:1", "prune-structured-50 (+ft)", {"preset_name": "prune-structured-50"}),
        ("digits:1", "lowrank-90", {"preset_name": "lowrank-90"}),
        ("digits:1", "distill-half", {"preset_name": "distill-half"}),
    ]:
        if kw is None:  # the published ONNX version as it is
            from shipyard.optimize.data import load_data
            from shipyard.optimize.measure import measure

            m, _ = measure(repo.path("digits", 2), "onnx", v2.signature, load_data("zoo:digits"), torch.get_num_threads(), budget_s=budget)
            rows.append(row("digits", variant, m, eager, qd, eager_size))
            continue
        result = optimize(repo_root, ref, **kw, **common)
        m = result.report["rows"][-1]["metrics"]
        r = row("digits", variant, m, eager, qd, eager_size)
        parent = result.report["rows"][0]["metrics"]
        r["speedup_b1_vs_parent"] = parent["latency_b1_p50_ms"] / m["latency_b1_p50_ms"]
        r["accuracy_drop_pt"] = 100 * (parent["accuracy"] - m["accuracy"])
        rows.append(r)
    if with_auto:
        result, tried = search(repo_root, "digits:1", max_accuracy_drop=1.0, objective="latency", **common)
        m = result.report["rows"][-1]["metrics"]
        r = row("digits", f"auto (latency, 1 pt): {result.report['facts']['search']['chosen']}", m, eager, qd, eager_size)
        r["accuracy_drop_pt"] = 100 * (result.report["rows"][0]["metrics"]["accuracy"] - m["accuracy"])
        rows.append(r)
    return rows


def bench_transformer(kind: str, repo_root: Path, small: bool, budget: float, seq: int) -> list[dict[str, Any]]:
    import torch

    from shipyard.optimize.runner import optimize
    from shipyard.repository import Repository

    folder = repo_root.parent / f"{kind}-src"
    model = build_transformer(kind, small, folder)
    publish_transformer(Repository(repo_root), folder, kind)
    vocab = model.config.vocab_size
    data = tokens(16, seq, vocab)
    batch_sizes = (1, 8)  # batch 32 at seq 128 on bert-base would take minutes per variant here
    eager = torch_eager(model, data.take(1), budget, batch_sizes)
    eager_size = sum(p.numel() * 4 for p in model.parameters())
    out_name = "logits"

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = model

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.m(input_ids=input_ids, attention_mask=attention_mask).logits

    qd = ort_qdyn(Logits().eval(), data.take(1), repo_root.parent, budget, batch_sizes, [out_name])
    qd.pop("_session")
    rows = [row(kind, "torch eager fp32", {**eager, "size_bytes": eager_size}, eager, qd, eager_size),
            row(kind, "ORT quantize_dynamic (plain)", qd, eager, qd, eager_size)]
    import shipyard.optimize.measure as measure_mod

    measure_mod.BATCHES = batch_sizes
    recipes = [("int8-dynamic", {"preset_name": "int8-dynamic"}),
               ("fp16", {"preset_name": "fp16"}),
               ("prune-structured-50", {"preset_name": "prune-structured-50"}),
               ("prune heads+FFN 50% + int8-dynamic", {"recipe": [{"pass": "prune-structured", "amount": 0.5},
                                                                   {"pass": "export"}, {"pass": "quantize", "mode": "dynamic"}]}),
               ("lowrank-90", {"preset_name": "lowrank-90"})]
    if kind == "gpt2":
        recipes.append(("weight-only int8", {"recipe": [{"pass": "weight-only", "bits": 8}]}))
    for variant, kw in recipes:
        try:
            result = optimize(repo_root, f"{kind}:1", eval_data=data, latency_budget_s=budget, **kw)
        except Exception as e:  # a failing variant is a row, not the end of the benchmark
            rows.append({"model": kind, "variant": variant, "error": str(e)[:200]})
            continue
        m = dict(result.report["rows"][-1]["metrics"])
        m["latency_b32_p50_ms"] = m.pop("latency_b8_p50_ms", None)
        r = row(kind, variant, m, {**eager, "latency_b32_p50_ms": eager.get("latency_b8_p50_ms")},
                {**qd, "latency_b32_p50_ms": qd.get("latency_b8_p50_ms")}, eager_size)
        r["agreement_with_parent"] = m.get("agreement")
        # The parent is this same torch eager fp32 model (hf-transformers runtime), timed by
        # optimize() side by side with the variant: a ratio that load drifting over the run
        # cannot skew, unlike one against the eager figure taken minutes earlier.
        parent = result.report["rows"][0]["metrics"]
        for b, key in ((1, "latency_b1_p50_ms"), (32, "latency_b8_p50_ms")):
            if parent.get(key) and r.get(f"latency_b{b}_p50_ms"):
                r[f"speedup_b{b}_vs_torch"] = parent[key] / r[f"latency_b{b}_p50_ms"]
        r["parent_latency_b1_p50_ms"] = parent.get("latency_b1_p50_ms")
        rows.append(r)
    measure_mod.BATCHES = (1, 32)
    return rows


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [f"# Optimize benchmark ({meta['date']})", "",
             f"Machine: {meta['cpu']}; torch threads {meta['threads']}; load average at start {meta['loadavg_start']}, "
             f"end {meta['loadavg_end']} (other processes share these cores: latencies are disturbed).",
             f"Command: `{meta['command']}`", "",
             f"Transformers rows: batch 8 in the b32 column (seq {meta.get('seq', 128)}); their 'vs torch' ratios are "
             "against the same torch eager fp32 model timed side by side with the variant (alternating rounds in "
             "one process), the eager row's own figure was taken once at the start.",
             "Keras rows: 'torch' columns are against Keras `predict` (the TF user's anchor); accuracy is computed "
             "from each row's outputs (threshold 0.5 for the binary MLP, argmax for the CNN).", "",
             "| model | variant | size | vs torch size | b1 p50 ms | b1 vs torch | b1 vs ORT qdyn | b32 p50 ms | b32 vs torch | accuracy | drop pt |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    f = lambda v, s="{:.3f}": "-" if v is None else s.format(v)  # noqa: E731
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['variant']} | error: {r['error']} |||||||||")
            continue
        lines.append(f"| {r['model']} | {r['variant']} | {f(r.get('size_bytes'), '{:,}')} | {f(r.get('size_vs_torch'), '{:.2f}')} | "
                     f"{f(r.get('latency_b1_p50_ms'))} | {f(r.get('speedup_b1_vs_torch'), '{:.2f}x')} | "
                     f"{f(r.get('speedup_b1_vs_ort_qdyn'), '{:.2f}x')} | {f(r.get('latency_b32_p50_ms'))} | "
                     f"{f(r.get('speedup_b32_vs_torch'), '{:.2f}x')} | {f(r.get('accuracy'), '{:.2%}')} | "
                     f"{f(r.get('accuracy_drop_pt'), '{:+.2f}')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="small transformers (4 layers, hidden 256)")
    ap.add_argument("--models", default="digits,bert,gpt2,keras-mlp,keras-cnn")
    ap.add_argument("--keras-only", action="store_true", help="only the Keras rows (keras-mlp, keras-cnn)")
    ap.add_argument("--budget", type=float, default=2.0, help="seconds of timing per batch size")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--no-auto", action="store_true", help="skip the --auto search on digits")
    ap.add_argument("--out", default="optimize" , help="results file stem under bench/results/")
    args = ap.parse_args()
    from rich.console import Console
    from rich.table import Table

    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpu": cpu.describe(cpu.cpu_features()),
            "features": cpu.cpu_features(), "python": platform.python_version(),
            "threads": __import__("torch").get_num_threads(), "loadavg_start": [round(x, 2) for x in os.getloadavg()],
            "command": " ".join(["bench/optimize.py", *sys.argv[1:]]), "seq": args.seq}
    shutil.rmtree(WORK, ignore_errors=True)
    rows: list[dict[str, Any]] = []
    models = ["keras-mlp", "keras-cnn"] if args.keras_only else args.models.split(",")
    if "digits" in models:
        (WORK / "digits").mkdir(parents=True)
        rows += bench_digits(WORK / "digits" / "repo", args.budget, not args.no_auto)
    for kind in ("bert", "gpt2"):
        if kind in models:
            (WORK / kind).mkdir(parents=True)
            rows += bench_transformer(kind, WORK / kind / "repo", args.small, args.budget, args.seq)
    for kind in ("keras-mlp", "keras-cnn"):
        if kind in models:
            from optimize_keras import bench_keras  # bench/ is the script's folder: TensorFlow only here

            rows += bench_keras(kind, WORK / kind, args.budget, meta["threads"])
    meta["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2, default=str))
    md = markdown(rows, meta)
    (RESULTS / f"{args.out}.md").write_text(md)
    t = Table(title="optimize benchmark")
    for c in ("model", "variant", "size", "b1 ms", "b1 vs torch", "b1 vs ORT qdyn", "b32 ms", "b32 vs torch", "accuracy"):
        t.add_column(c)
    for r in rows:
        if "error" in r:
            t.add_row(r["model"], r["variant"], "error", r["error"][:60])
            continue
        g = lambda k, s="{:.3f}": "-" if r.get(k) is None else s.format(r[k])  # noqa: E731
        t.add_row(r["model"], r["variant"], g("size_bytes", "{:,}"), g("latency_b1_p50_ms"), g("speedup_b1_vs_torch", "{:.2f}x"),
                  g("speedup_b1_vs_ort_qdyn", "{:.2f}x"), g("latency_b32_p50_ms"), g("speedup_b32_vs_torch", "{:.2f}x"),
                  g("accuracy", "{:.2%}"))
    Console(width=200).print(t)
    print(f"saved {RESULTS / (args.out + '.json')} and .md")


if __name__ == "__main__":
    main()

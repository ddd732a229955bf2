#!/usr/bin/env python3
"""Training benchmark (issue 6), digits CNN on scikit-learn's digits (1,437 training samples).

Three measurements, side by side in one run:
  1. loop overhead: `shipyard.train.fit` vs a bare PyTorch loop of the same model, optimizer,
     schedule, clipping, batch order and batch size, in one process, one thread, alternated A/B
     `--reps` times (medians). Target: <= 5 %.
  2. samples/s for 1 rank and 2 ranks (DDP, gloo, one thread per rank), through the real
     `shipyard train --nproc N`; from metrics.jsonl, median over epochs after the first.
     Batch size is per rank (64), so 2 ranks step with 128 samples.
  3. DDP all-reduce share of step time: a 2-rank torchrun job times steps with gradient sync
     and the same steps under `no_sync()` (no all-reduce); share = (sync - nosync) / sync.

The code LM (issue 5) is not here yet: it lands with the generative issue.

Usage:
  .venv/bin/python bench/train.py              # full
  .venv/bin/python bench/train.py --quick      # smoke run (few epochs)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
BATCH = 64


def config(out: Path, epochs: int, **extra: Any) -> dict[str, Any]:
    return {"task": {"name": "digits"}, "epochs": epochs, "seed": 0, "threads": 1, "progress": False,
            "data": {"batch_size": BATCH}, "optimizer": {"name": "adamw", "lr": 0.003},
            "schedule": {"name": "cosine", "warmup_steps": 20}, "clip_grad_norm": 1.0,
            "output_dir": str(out), **extra}


def bare_loop(epochs: int) -> float:
    """The same work written by hand: seconds in the training loop."""
    from shipyard.train.config import ScheduleConfig
    from shipyard.train.loop import lr_factor
    from shipyard.zoo import digits

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)  # as fit does by default: the same kernels
    torch.manual_seed(0)
    data = digits.load("train")
    x, y = torch.from_numpy(data.pixels), torch.from_numpy(data.labels)
    model = digits.DigitsCNN()
    opt = torch.optim.AdamW(model.parameters(), lr=0.003, weight_decay=1e-4)
    steps = epochs * math.ceil(len(x) / BATCH)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(ScheduleConfig(name="cosine", warmup_steps=20), steps))
    model.train()
    start = time.perf_counter()
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))
        for i in range(0, len(x), BATCH):
            idx = order[i : i + BATCH]
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def shipyard_loop(epochs: int, work: Path, rep: int) -> tuple[float, float]:
    """(seconds in the loop itself, seconds including per-epoch evaluation and the checkpoint)."""
    from shipyard.train import fit

    torch.set_num_threads(1)
    result = fit(config(work / f"overhead{rep}", epochs))
    return sum(h["seconds"] for h in result.history), result.metrics["train_seconds"]


# code-lm at its demo shape (4 layers, hidden 128, windows of 128 tokens) on a slice of the standard
# library, so that a rank count costs about a minute: samples here are 128-token windows.
CODE_LM = {"task": {"name": "code-lm", "options": {"size": "demo", "max_files": 60, "max_windows": 512}},
           "data": {"batch_size": 16}}


def ranks_throughput(nproc: int, epochs: int, work: Path, task: str = "digits") -> dict[str, Any]:
    out = work / f"{task}-ranks{nproc}"
    path = work / f"{task}-ranks{nproc}.yaml"
    path.write_text(yaml.safe_dump(config(out, epochs, **(CODE_LM if task == "code-lm" else {}))))
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "shipyard.cli.main", "train", str(path), "--nproc", str(nproc)],
                          capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    wall = time.perf_counter() - t
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r["samples_per_s"] for r in records[1:]] or [records[0]["samples_per_s"]]
    batch = CODE_LM["data"]["batch_size"] if task == "code-lm" else BATCH
    return {"task": task, "ranks": nproc, "samples_per_s": statistics.median(rates), "global_batch": batch * nproc,
            "final_accuracy": records[-1].get("accuracy"), "final_perplexity": records[-1].get("heldout_perplexity"),
            "wall_s_with_startup": wall}


DDP_WORKER = r'''
import json, os, sys, time, datetime, torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from shipyard.zoo import digits
dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
torch.set_num_threads(1)
torch.manual_seed(0)
rank = dist.get_rank()
data = digits.load("train")
x, y = torch.from_numpy(data.pixels), torch.from_numpy(data.labels)
model = DDP(digits.DigitsCNN())
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
steps = int(sys.argv[2])
def run(sync):
    times = []
    for i in range(steps):
        idx = torch.arange(i * 64, i * 64 + 64) % len(x)
        dist.barrier()
        t = time.perf_counter()
        if sync:
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx]); loss.backward()
        else:
            with model.no_sync():
                loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx]); loss.backward()
        opt.step(); opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    return times
run(True); run(False)  # warm-up
res = {"sync": [], "nosync": []}
for _ in range(3):  # alternate, so drift in machine load hits both
    res["sync"] += run(True); res["nosync"] += run(False)
if rank == 0:
    open(sys.argv[1], "w").write(json.dumps(res))
dist.destroy_process_group()
'''


def allreduce_share(work: Path, steps: int) -> dict[str, Any]:
    script = work / "ddp_share.py"
    script.write_text(DDP_WORKER)
    out = work / "ddp_share.json"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           str(script), str(out), str(steps)], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    res = json.loads(out.read_text())
    sync, nosync = statistics.median(res["sync"]) * 1e3, statistics.median(res["nosync"]) * 1e3
    return {"step_ms_with_allreduce": sync, "step_ms_without": nosync,
            "allreduce_share": max(0.0, (sync - nosync) / sync), "steps_timed": len(res["sync"])}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="Few epochs, few reps: proves it runs.")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    epochs, reps, share_steps = (3, 2, 20) if args.quick else (15, args.reps, 60)
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="shipyard-bench-train-"))
    bare, ours, ours_eval = [], [], []
    for rep in range(reps):  # A/B alternated
        bare.append(bare_loop(epochs))
        loop_s, total_s = shipyard_loop(epochs, work, rep)
        ours.append(loop_s)
        ours_eval.append(total_s)
    b, o, oe = statistics.median(bare), statistics.median(ours), statistics.median(ours_eval)
    samples = epochs * 1437
    overhead = {"epochs": epochs, "reps": reps, "bare_s": b, "shipyard_loop_s": o,
                "shipyard_with_eval_and_checkpoint_s": oe, "overhead": o / b - 1,
                "overhead_with_eval_and_checkpoint": oe / b - 1,
                "bare_samples_per_s": samples / b, "shipyard_samples_per_s": samples / o, "target": 0.05}
    ranks = [ranks_throughput(n, epochs, work) for n in (1, 2)]
    ranks += [ranks_throughput(n, 2, work, "code-lm") for n in (1, 2)]
    share = allreduce_share(work, share_steps)
    result = {"benchmark": "train", "model": "digits CNN (71,754 params); code-lm demo shape", "machine": {
        "platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
        "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "overhead": overhead, "ranks": ranks, "ddp_allreduce": share,
        "command": "python bench/train.py" + (" --quick" if args.quick else "")}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "train.json").write_text(json.dumps(result, indent=2))
    md = render(result)
    (RESULTS / "train.md").write_text(md)
    print(md)


def render(r: dict[str, Any]) -> str:
    o, s = r["overhead"], r["ddp_allreduce"]
    lines = [
        "# Training benchmark: digits CNN, CPU, gloo", "",
        f"Command: `{r['command']}`; torch {r['machine']['torch']}; {r['machine']['cpus']} CPUs; "
        f"load average before {r['machine']['loadavg_before'][0]:.2f}, after {r['machine']['loadavg_after'][0]:.2f} "
        "(other work on the machine disturbs these timings).", "",
        f"## Loop overhead, one process, one thread ({o['epochs']} epochs, median of {o['reps']} alternated runs)", "",
        "| loop | seconds | samples/s | vs bare |", "| --- | --- | --- | --- |",
        f"| bare PyTorch loop | {o['bare_s']:.3f} | {o['bare_samples_per_s']:,.0f} | - |",
        f"| shipyard.train.fit (training loop) | {o['shipyard_loop_s']:.3f} | {o['shipyard_samples_per_s']:,.0f} | {o['overhead']:+.1%} |",
        f"| ... plus per-epoch evaluation and final checkpoint | {o['shipyard_with_eval_and_checkpoint_s']:.3f} | | {o['overhead_with_eval_and_checkpoint']:+.1%} |",
        "", f"Target: loop overhead <= {o['target']:.0%}.", "",
        "## Ranks (`shipyard train --nproc N`, DDP, gloo, 1 thread per rank; digits batch 64 per rank, "
        "code-lm batch 16 windows of 128 tokens per rank)", "",
        "| task | ranks | global batch | samples/s | final accuracy / held-out perplexity | wall s (with startup) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for x in r["ranks"]:
        quality = (f"{x['final_accuracy']:.3f}" if x.get("final_accuracy") is not None
                   else f"ppl {x['final_perplexity']:.1f}" if x.get("final_perplexity") is not None else "-")
        lines.append(f"| {x.get('task', 'digits')} | {x['ranks']} | {x['global_batch']} | {x['samples_per_s']:,.1f} | "
                     f"{quality} | {x['wall_s_with_startup']:.1f} |")
    lines += ["", "## DDP all-reduce share of step time (2 ranks, batch 64 per rank)", "",
              "| step with all-reduce (ms) | same step under no_sync (ms) | all-reduce share |", "| --- | --- | --- |",
              f"| {s['step_ms_with_allreduce']:.2f} | {s['step_ms_without']:.2f} | {s['allreduce_share']:.1%} |", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

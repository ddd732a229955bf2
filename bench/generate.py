#!/usr/bin/env python3
"""Generation benchmark (issue 5): shipyard's engine through its OpenAI server vs transformers.

Model: a GPT-2-small-sized GPT2LMHeadModel (12 layers, hidden 768, vocab 50257, 124M parameters)
with random weights and a byte-level BPE tokenizer trained on the standard library (padded with
added tokens to the model's vocabulary), built into bench/.work/ on first use.
Each request: a prompt of exactly --prompt token ids, --new greedy tokens (ignore_eos).

Cells, all in one run on the same machine:
  transformers generate, batch 1 and static batch 16 (in-process, fp32)
  shipyard server, streaming /v1/completions, concurrency 1, 4, 16 (openai-style SSE over loopback)
Reported: generated tokens/s (all streams), time to first token, inter-token gap p50/p99 (between
SSE chunks; one chunk is one token unless bytes of a character are held back), and single-stream
decode as a share of the memory-bandwidth bound (fp32 weight bytes per token / read bandwidth,
measured here in the same run), and the same cells for `shipyard int8 weight-only`: the model
published through `shipyard.optimize` with the `int8-weight-only` preset (int8 per-channel Linear
weights, kernel picked by measuring; its bound uses int8 block weights), and llama.cpp's OpenAI server
from the `llama-cpp-python` package on the same checkpoint converted to GGUF f32 and q8_0, when that
package is built (`make bench-llama-setup`, ~15 min of compiling; the cells are skipped with a note
otherwise). llama-cpp-python's server runs one request at a time (it holds a lock per request, and is
started with --interrupt_requests False so a new request queues instead of cutting the running one
short): its concurrency cells show that queueing. It is sent the prompt as text (the same ids
decoded), so its prompt may tokenize to slightly more or fewer tokens. It runs in the environment this
script was started with; one more q8_0 cell gives it shipyard's OpenMP spin setting (GOMP_SPINCOUNT),
which helps it too. A "targets" table checks issue 5's targets against the same run.

Usage:
  .venv/bin/python bench/generate.py            # full run (several minutes)
  .venv/bin/python bench/generate.py --quick    # small model, short prompts: proves the script works
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

# transformers runs in this process as its users run it: libgomp's default wait policy (spin a
# while, then sleep). shipyard, imported later, would make this process's OpenMP threads sleep at
# once (its default, right for a server whose event loop shares the cores); its server child
# still gets that default, since the setting is dropped again once torch has read it.
# llama.cpp's server (built with OpenMP, libgomp) also runs in the environment its users give it:
# this one as it was before anything here, or importing shipyard, changed it.
USER_ENV = dict(os.environ)
_SPIN_SET = "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ
if _SPIN_SET:
    os.environ["GOMP_SPINCOUNT"] = "300000"
import torch  # noqa: E402

if _SPIN_SET:  # libgomp read it when `import torch` loaded the library
    del os.environ["GOMP_SPINCOUNT"]

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
WORK = ROOT / "bench" / ".work"
RESULTS = ROOT / "bench" / "results"


def build_model(folder: Path, layers: int, hidden: int, heads: int, vocab: int) -> Path:
    if (folder / "config.json").is_file():
        return folder
    from shipyard.zoo import code_lm, lm

    train, _ = code_lm.stdlib_files()
    tokenizer = lm.train_tokenizer([f.read_text(errors="replace") for f in train[:40]], 4096)
    tokenizer.add_tokens([f"<pad{i}>" for i in range(vocab - len(tokenizer))])
    torch.manual_seed(0)
    model = lm.build_model("gpt2", vocab, layers=layers, hidden=hidden, heads=heads, context=1024)
    return lm.save(model, tokenizer, folder)


def bandwidth_gbs(threads: int) -> float:
    """Read bandwidth: sum of a 1 GiB fp32 tensor (well beyond the caches), best of 5."""
    torch.set_num_threads(threads)
    x = torch.ones(256 * 2**20)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t)
    return x.numel() * 4 / best / 1e9


def transformers_cells(folder: Path, prompt: int, new: int, threads: int) -> list[dict[str, Any]]:
    from transformers import GPT2LMHeadModel

    torch.set_num_threads(threads)
    model = GPT2LMHeadModel.from_pretrained(str(folder)).eval()
    cells = []
    for batch in (1, 16):
        ids = torch.randint(10, 4000, (batch, prompt), generator=torch.Generator().manual_seed(batch))
        kw = {"do_sample": False, "pad_token_id": 0, "attention_mask": torch.ones_like(ids)}
        with torch.inference_mode():
            t = time.perf_counter()
            model.generate(ids, max_new_tokens=1, **kw)
            ttft = time.perf_counter() - t
            t = time.perf_counter()
            model.generate(ids, max_new_tokens=new, min_new_tokens=new, **kw)
            total = time.perf_counter() - t
        cells.append({"engine": "transformers generate (static batch)", "concurrency": batch,
                      "tokens_per_s": batch * new / total, "ttft_s": ttft,
                      "itl_p50_ms": (total - ttft) / (new - 1) * 1000, "itl_p99_ms": None})
        print(f"  transformers batch {batch}: {batch * new / total:.1f} tok/s, TTFT {ttft:.3f} s", flush=True)
    return cells


async def one_stream(client: httpx.AsyncClient, prompt: list[int] | str, new: int,
                     model: str = "bench", extra: dict[str, Any] | None = None) -> dict[str, Any]:
    body = {"model": model, "prompt": prompt, "max_tokens": new, "temperature": 0, "stream": True,
            "ignore_eos": True, "stream_options": {"include_usage": True}, **(extra or {})}
    start = time.perf_counter()
    stamps: list[float] = []
    tokens = 0
    async with client.stream("POST", "/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event["choices"]:
                stamps.append(time.perf_counter())
            elif event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
    return {"start": start, "stamps": stamps, "tokens": tokens or len(stamps)}  # a server without usage: chunks


def prompts_for(concurrency: int, prompt: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(concurrency)
    return [torch.randint(10, 4000, (prompt,), generator=gen).tolist() for _ in range(concurrency)]


async def server_cell(url: str, concurrency: int, prompt: int, new: int, rounds: int,
                      model: str = "bench", label: str = "shipyard server (SSE)",
                      as_text: Any = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, timeout=1800) as client:
        prompts: list[Any] = prompts_for(concurrency, prompt)
        if as_text is not None:
            prompts = [as_text(p) for p in prompts]
        await one_stream(client, prompts[0], 4, model, extra)  # warm-up
        results = []
        t = time.perf_counter()
        for _ in range(rounds):
            results += await asyncio.gather(*[one_stream(client, p, new, model, extra) for p in prompts])
        wall = time.perf_counter() - t
    ttft = [r["stamps"][0] - r["start"] for r in results]
    gaps = sorted(b - a for r in results for a, b in zip(r["stamps"], r["stamps"][1:], strict=False))
    tokens = sum(r["tokens"] for r in results)
    return {"engine": label, "concurrency": concurrency, "tokens_per_s": tokens / wall,
            "ttft_s": statistics.median(ttft), "ttft_max_s": max(ttft),
            "itl_p50_ms": gaps[len(gaps) // 2] * 1000, "itl_p99_ms": gaps[int(len(gaps) * 0.99)] * 1000}


def show(cell: dict[str, Any]) -> dict[str, Any]:
    """Print a server cell's line as it is measured; return it."""
    print(f"  {cell['engine']} c={cell['concurrency']}: {cell['tokens_per_s']:.1f} tok/s, TTFT p50 "
          f"{cell['ttft_s']:.3f} s, ITL p50 {cell['itl_p50_ms']:.1f} ms p99 {cell['itl_p99_ms']:.1f} ms", flush=True)
    return cell


LLAMA_VENV = WORK / "llama-venv"


def llama_source() -> Path | None:
    """The llama.cpp tree shipped inside the llama-cpp-python source package (for its GGUF converter)."""
    found = sorted((WORK / "llama-src").glob("llama_cpp_python-*/vendor/llama.cpp/convert_hf_to_gguf.py"))
    return found[-1].parent if found else None


def to_gguf(folder: Path, outtype: str) -> Path:
    """Convert the checkpoint with llama.cpp's own converter. Two adjustments, both for this bench
    model rather than for GPT-2 in general: its config gets `n_ctx` (the converter reads it; recent
    transformers no longer write it), and its BPE tokenizer, trained here, is declared to split text
    the GPT-2 way (which it does): the converter only recognises pre-tokenizers by a hash of known
    vocabularies."""
    out = WORK / f"{folder.name}-{outtype}.gguf"
    if out.is_file():
        return out
    src = llama_source()
    assert src is not None
    staged = WORK / f"{folder.name}-gguf-src"
    if not staged.is_dir():
        import shutil

        shutil.copytree(folder, staged)
        cfg = json.loads((staged / "config.json").read_text())
        cfg.setdefault("n_ctx", cfg["n_positions"])
        (staged / "config.json").write_text(json.dumps(cfg, indent=1))
    script = ("import sys; sys.path[:0] = [sys.argv.pop(1), sys.argv.pop(1)]; import conversion.base as b; "
              "b.TextModel.get_vocab_base_pre = lambda self, tok: 'gpt-2'; import convert_hf_to_gguf as c; c.main()")
    import subprocess

    subprocess.run([sys.executable, "-c", script, str(src), str(src / "gguf-py"), str(staged), "--outtype", outtype,
                    "--outfile", str(out)], check=True, capture_output=True)
    return out


# shipyard's own OpenMP default (src/shipyard/__init__.py), also tried on llama.cpp: its threads
# share the cores with its server's Python event loop just as shipyard's do.
SHIPYARD_SPIN = {"GOMP_SPINCOUNT": "30000"}


def llama_cells(folder: Path, prompt: int, new: int, threads: int, concurrencies: tuple[int, ...],
                rounds: int, shipyard_url: str, duel_rounds: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    """llama-cpp-python's OpenAI server on GGUF f32 and q8_0 of the same checkpoint, in the user's
    environment; then q8_0 at one stream with shipyard's OpenMP spin setting, for reference.

    Single-stream figures of either engine were seen to swing by a third between runs minutes apart
    on this VM, so each llama.cpp format is also timed in a duel: `duel_rounds` alternating single-stream
    runs of it and of shipyard's matching version (fp32 `bench`, q8_0 vs int8 `bench-int8`), the
    shipyard server staying up beside it. Returns (cells, duels, note)."""
    import signal
    import subprocess

    python = LLAMA_VENV / "bin" / "python"
    if not python.is_file() or llama_source() is None:
        return [], [], "llama.cpp cells skipped: run `make bench-llama-setup` first (builds llama-cpp-python, ~15 min)"
    from transformers import AutoTokenizer

    from tests.fixtures import free_port

    tok = AutoTokenizer.from_pretrained(str(folder))
    eos = tok.eos_token_id
    # No ignore_eos there: a strong negative bias on the end-of-text token keeps every stream to `new` tokens.
    extra = {"logit_bias": {str(eos): -100.0}} if eos is not None else {}
    cells, duels = [], []
    rival = {"f32": ("bench", "shipyard fp32"), "q8_0": ("bench-int8", "shipyard int8 weight-only")}
    runs = [("f32", {}, concurrencies), ("q8_0", {}, concurrencies), ("q8_0", SHIPYARD_SPIN, (1,))]
    for outtype, env, streams in runs:
        model = to_gguf(folder, outtype)
        port = free_port()
        log = open(WORK / f"llama-server-{outtype}{'-spin' if env else ''}.log", "w")
        proc = subprocess.Popen([str(python), "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
                                 "--port", str(port), "--n_threads", str(threads), "--n_threads_batch", str(threads),
                                 "--n_ctx", "2048", "--interrupt_requests", "False", "--model_alias", "bench"],
                                stdout=log, stderr=subprocess.STDOUT, env={**USER_ENV, **env})
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 120
            while True:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"llama.cpp server did not start; see {log.name}")
                try:
                    if httpx.get(f"{url}/v1/models", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.3)
            label = f"llama.cpp server {outtype} (llama-cpp-python, SSE)"
            if env:
                label = f"llama.cpp server {outtype}, {' '.join(f'{k}={v}' for k, v in env.items())} (shipyard's)"
            for c in streams:
                cells.append(show(asyncio.run(server_cell(url, c, prompt, new, rounds, "bench", label,
                                                          as_text=lambda ids: tok.decode(ids), extra=extra))))
            if not env and duel_rounds:
                mine, name = rival[outtype]
                theirs: list[float] = []
                ours: list[float] = []
                for _ in range(duel_rounds):
                    ours.append(asyncio.run(server_cell(shipyard_url, 1, prompt, new, 1, mine))["tokens_per_s"])
                    theirs.append(asyncio.run(server_cell(url, 1, prompt, new, 1, "bench", label,
                                                          as_text=lambda ids: tok.decode(ids),
                                                          extra=extra))["tokens_per_s"])
                duels.append({"shipyard": name, "llama.cpp": f"llama.cpp {outtype}", "shipyard_tok_s": ours,
                              "llama_tok_s": theirs, "ratio_of_medians": statistics.median(ours) / statistics.median(theirs)})
                print(f"  duel at 1 stream, {name} vs llama.cpp {outtype}: " + ", ".join(
                    f"{a:.1f}/{b:.1f}" for a, b in zip(ours, theirs, strict=True)) + " tok/s", flush=True)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
    return cells, duels, ""


def target_rows(cells: list[dict[str, Any]], bound: float, duels: list[dict[str, Any]] | None = None) -> list[str]:
    """Issue 5's targets, each checked against this run's cells."""
    def cell(prefix: str, streams: int) -> dict[str, Any] | None:
        return next((c for c in cells if c["engine"].startswith(prefix) and c["concurrency"] == streams), None)

    fp32, int8, int8_16 = cell("shipyard server", 1), cell("shipyard int8", 1), cell("shipyard int8", 16)
    llama8 = cell("llama.cpp server q8_0 (", 1)
    rows = []
    if fp32:
        # Every single-stream run of it: its cell, and its duel runs when there were duels.
        runs = [fp32["tokens_per_s"], *next((d["shipyard_tok_s"] for d in duels or [] if d["llama.cpp"] == "llama.cpp f32"), [])]
        single = statistics.median(runs)
        rows.append((f"fp32 single stream >= 60% of the bound ({0.6 * bound:.1f} tok/s)",
                     f"{single:.1f} tok/s ({single / bound:.0%}; median of {len(runs)} runs: "
                     f"{', '.join(f'{r:.1f}' for r in runs)})", single >= 0.6 * bound))
    duel = next((d for d in duels or [] if d["llama.cpp"] == "llama.cpp q8_0"), None)
    if duel:
        ours, theirs = statistics.median(duel["shipyard_tok_s"]), statistics.median(duel["llama_tok_s"])
        rows.append((f"int8 single stream >= llama.cpp q8_0 server (duel medians: {theirs:.1f} tok/s)",
                     f"{ours:.1f} tok/s ({duel['ratio_of_medians']:.2f}x)", ours >= theirs))
    elif int8 and llama8:
        rows.append((f"int8 single stream >= llama.cpp q8_0 server ({llama8['tokens_per_s']:.1f} tok/s)",
                     f"{int8['tokens_per_s']:.1f} tok/s ({int8['tokens_per_s'] / llama8['tokens_per_s']:.2f}x)",
                     int8["tokens_per_s"] >= llama8["tokens_per_s"]))
    if int8_16:
        rows.append(("int8 at 16 streams >= 250 tok/s", f"{int8_16['tokens_per_s']:.1f} tok/s",
                     int8_16["tokens_per_s"] >= 250))
    for prefix, name in (("shipyard server", "fp32"), ("shipyard int8", "int8")):
        if (c := cell(prefix, 16)) is not None:
            rows.append((f"{name} TTFT p50 at 16 streams <= 1.5 s", f"{c['ttft_s']:.2f} s", c["ttft_s"] <= 1.5))
    return [f"| {t} | {v} | {'yes' if ok else 'no'} |" for t, v, ok in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2-layer model, prompt 32, 16 new tokens")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1, help="rounds of `concurrency` requests per cell")
    ap.add_argument("--no-llama", action="store_true", help="skip the llama.cpp cells")
    ap.add_argument("--duel-rounds", type=int, default=3,
                    help="alternating single-stream runs of shipyard and llama.cpp, per llama.cpp format")
    args = ap.parse_args()
    prompt, new = (32, 16) if args.quick else (128, 128)
    layers = 2 if args.quick else 12
    folder = build_model(WORK / f"gpt2-{layers}l", layers, 768, 12, 50257)
    from shipyard.repository import Repository
    from shipyard.runtimes.importer import import_model
    from tests.fixtures import ServerProcess

    load_before = os.getloadavg()
    bw = bandwidth_gbs(args.threads)
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(str(folder))
    # Weights read per decoded token: every block (12 h^2 each) and the tied embedding / LM head.
    params = 12 * cfg.n_layer * cfg.n_embd**2 + (cfg.vocab_size + cfg.n_positions) * cfg.n_embd
    bound = bw * 1e9 / (params * 4)
    print(f"read bandwidth {bw:.1f} GB/s; ~{params / 1e6:.0f}M parameters -> fp32 decode bound {bound:.1f} tok/s",
          flush=True)
    cells = transformers_cells(folder, prompt, new, args.threads)
    repo_root = WORK / f"repo-{layers}l"
    import shutil

    shutil.rmtree(repo_root, ignore_errors=True)  # the int8 version is rebuilt by this run's code
    repo = Repository(repo_root)
    if not repo.versions("bench"):
        import_model(repo, folder, "bench")
    if len(repo.versions("bench-int8")) < 2:  # v1 fp32 import, v2 its int8 weight-only child
        from shipyard.optimize import optimize
        from shipyard.zoo.code_lm import stdlib_files

        if not repo.versions("bench-int8"):
            import_model(repo, folder, "bench-int8")
        result = optimize(repo_root, "bench-int8", preset_name="int8-weight-only", eval_data=str(stdlib_files()[1][0]),
                          threads=args.threads, max_eval_tokens=1024)
        print("int8 weight-only:", *result.report["notes"], sep="\n  ", flush=True)
    int8_notes = repo.manifest("bench-int8", max(repo.versions("bench-int8"))).extra.get("notes", [])
    server = ServerProcess(repo_root, "--threads", str(args.threads))
    try:
        runs = [(m, label, c) for m, label in (("bench", "shipyard server (SSE)"),
                                               ("bench-int8", "shipyard int8 weight-only (SSE)"))
                for c in ((1, 4, 16) if not args.quick else (1, 4))]
        for model, label, c in runs:
            cells.append(show(asyncio.run(server_cell(server.url, c, prompt, new, args.rounds, model, label))))
        llama_note, duels = "llama.cpp cells skipped (--no-llama)", []
        if not args.no_llama:
            more, duels, llama_note = llama_cells(folder, prompt, new, args.threads,
                                                  (1, 4) if args.quick else (1, 4, 16), args.rounds, server.url,
                                                  args.duel_rounds)
            cells += more
            if llama_note:
                print(llama_note, flush=True)
    finally:
        server.stop()
    bw_after = bandwidth_gbs(args.threads)
    single = next(c for c in cells if c["engine"].startswith("shipyard server") and c["concurrency"] == 1)
    single8 = next(c for c in cells if c["engine"].startswith("shipyard int8") and c["concurrency"] == 1)
    blocks = 12 * cfg.n_layer * cfg.n_embd**2
    int8_folder = repo.path("bench-int8", max(repo.versions("bench-int8")))
    head_int8 = "lm_head" in json.loads((int8_folder / "weight_only.json").read_text())["layers"]
    head = cfg.vocab_size * cfg.n_embd
    # int8 blocks; the LM head int8 when it was quantized as an untied copy, else the fp32 tied embedding.
    bound8 = bw * 1e9 / (blocks + (head if head_int8 else 4 * (params - blocks)))
    result = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": args.threads,
                    "torch": torch.__version__, "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "setup": {"prompt_tokens": prompt, "new_tokens": new, "layers": layers, "parameters": params,
                  "quick": args.quick},
        "bandwidth_gbs": bw, "bandwidth_gbs_after": bw_after, "fp32_decode_bound_tok_s": bound,
        "single_stream_share_of_bound": single["tokens_per_s"] / bound,
        "int8_decode_bound_tok_s": bound8, "int8_single_stream_share_of_bound": single8["tokens_per_s"] / bound8,
        "int8_notes": int8_notes,
        "cells": cells, "duels": duels,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "generate-quick" if args.quick else "generate"
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2))
    lines = [f"# Generation benchmark ({'quick' if args.quick else 'GPT-2-small size'}, prompt {prompt}, {new} new tokens, greedy)",
             "", f"Read bandwidth {bw:.1f} GB/s ({bw_after:.1f} at the end) -> fp32 decode bound {bound:.1f} tok/s; shipyard single stream "
             f"= {result['single_stream_share_of_bound']:.0%} of it. Load average before/after: "
             f"{load_before[0]:.2f} / {os.getloadavg()[0]:.2f} (other work on the machine disturbs these figures).",
             "", f"int8 weight-only decode bound {bound8:.1f} tok/s (int8 blocks, {'int8' if head_int8 else 'fp32 tied'} LM head); "
             f"single stream = {result['int8_single_stream_share_of_bound']:.0%} of it. "
             + " ".join(n for n in int8_notes if "kernel" in n or "perplexity" in n),
             *(["", llama_note] if llama_note else []),
             "", "| engine | streams | tokens/s | TTFT p50 s | ITL p50 ms | ITL p99 ms |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for c in cells:
        p99 = f"{c['itl_p99_ms']:.1f}" if c["itl_p99_ms"] is not None else "-"
        lines.append(f"| {c['engine']} | {c['concurrency']} | {c['tokens_per_s']:.1f} | {c['ttft_s']:.3f} | "
                     f"{c['itl_p50_ms']:.1f} | {p99} |")
    if duels:
        lines += ["", "Duels at 1 stream (alternating runs, tok/s):", "",
                  "| shipyard | tok/s per run | llama.cpp | tok/s per run | ratio of medians |", "| --- | --- | --- | --- | ---: |"]
        lines += [f"| {d['shipyard']} | {', '.join(f'{v:.1f}' for v in d['shipyard_tok_s'])} | {d['llama.cpp']} | "
                  f"{', '.join(f'{v:.1f}' for v in d['llama_tok_s'])} | {d['ratio_of_medians']:.2f}x |" for d in duels]
    lines += ["", "| target (issue 5) | this run | met |", "| --- | --- | --- |", *target_rows(cells, bound, duels)]
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

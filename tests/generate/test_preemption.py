"""Preemption on real tiny models: a KV cache far too small for every request's prompt plus
max_tokens at once. Requests run anyway, the newest are preempted and recomputed when the cache
runs out, and every greedy output still equals transformers' own generate."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import torch

from shipyard.generate import AsyncEngine, SamplingParams
from tests.generate.test_engine import collect, open_engine, pristine

PROMPTS = ["def add(a, b):", "import os", "class Point:", "for i in range(10):", "while True:", "return x",
           "print('hello')", "with open(path) as f:", "if x is None:", "try:", "lambda y: y", "async def main():"]
TOKENS = 100


def reference(runtime: Any, prompt: str, tokens: int) -> list[int]:
    """Greedy decoding by transformers' own forward, eos included. (`generate` with
    `min_new_tokens` masks eos instead, where `ignore_eos` keeps it: over 100 tokens of a random
    model the two differ as soon as eos is the argmax.)"""
    ids = runtime.tokenizer(prompt, return_tensors="pt").input_ids
    model = pristine(runtime.path)
    with torch.inference_mode():
        out = model(ids, use_cache=True)
        new = [int(out.logits[0, -1].argmax())]
        for _ in range(tokens - 1):
            out = model(torch.tensor([new[-1:]]), past_key_values=out.past_key_values, use_cache=True)
            new.append(int(out.logits[0, -1].argmax()))
    return new


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_preempted_requests_still_match_transformers(lm_folders: dict[str, Path], tmp_path: Path,
                                                      family: str) -> None:
    # 1 MiB holds 1,024 tokens of the GPT-2 (2 layers x 64 x K,V x fp32 = 1 KiB a token), 2,048 of
    # the Llama (fewer KV heads); 24 requests need about 24 x 105 at once.
    runtime, eng = open_engine(lm_folders[family], tmp_path, kv_cache_mb=1, block_size=4, max_num_seqs=32)
    client = AsyncEngine(eng)
    params = SamplingParams(max_tokens=TOKENS, temperature=0, ignore_eos=True)
    prompts = PROMPTS * 2
    try:
        async def everyone() -> list[dict[int, list[int]]]:
            return await asyncio.gather(*[collect(client, p, params) for p in prompts])

        results = asyncio.run(everyone())
        stats = eng.snapshot()
        assert stats["preemptions"] >= 1 and stats["recomputed_tokens"] > 0, stats
        # More ran at once than reserving prompt + max_tokens would have let in.
        assert stats["most_in_a_step"] > eng.lm.pool.capacity_tokens // (TOKENS + 4), stats
        assert stats["free_blocks"] == stats["total_blocks"]  # every block came back
        expected = {p: reference(runtime, p, TOKENS) for p in PROMPTS}
        for prompt, got in zip(prompts, results, strict=True):
            assert got[0] == expected[prompt], prompt
    finally:
        eng.close()


def test_a_preempted_request_with_n_sequences_resumes_each(lm_folders: dict[str, Path], tmp_path: Path) -> None:
    """n=2 sequences with a seed next to greedy requests: preempted together, recomputed together,
    and the seeded output equals the same request run alone in a roomy cache."""
    runtime, small = open_engine(lm_folders["gpt2"], tmp_path / "small", kv_cache_mb=1, block_size=4)
    _, roomy = open_engine(lm_folders["gpt2"], tmp_path / "roomy", kv_cache_mb=8, block_size=4)
    seeded = SamplingParams(max_tokens=TOKENS, temperature=0.8, seed=11, n=2, ignore_eos=True)
    greedy = SamplingParams(max_tokens=TOKENS, temperature=0, ignore_eos=True)
    try:
        async def crowded() -> dict[int, list[int]]:
            client = AsyncEngine(small)
            others = [asyncio.create_task(collect(client, p, greedy)) for p in PROMPTS[:10]]
            await asyncio.sleep(0.05)  # the seeded request is admitted last: the first to be preempted
            mine = await collect(client, "def main():", seeded)
            await asyncio.gather(*others)
            return mine

        got = asyncio.run(crowded())
        assert small.snapshot()["preemptions"] >= 1
        alone = asyncio.run(collect(AsyncEngine(roomy), "def main():", seeded))
        assert roomy.snapshot()["preemptions"] == 0
        assert got == alone and len(got[0]) == len(got[1]) == TOKENS
    finally:
        small.close()
        roomy.close()

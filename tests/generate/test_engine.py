"""The engine in-process, on real tiny GPT-2 and Llama models: greedy output equals transformers'
generate (alone, in a busy batch, across prefill chunks), sampling is reproducible, stop strings,
n > 1, logprobs, cancellation frees the slot, bounded queue, KV-cache limits."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from shipyard.config import GenerationConfig
from shipyard.errors import InvalidInput, Unavailable
from shipyard.generate import AsyncEngine, ContextTooLong, Engine, SamplingParams
from shipyard.repository import Repository
from shipyard.runtimes import RuntimeOptions, runtime_for
from shipyard.runtimes.importer import import_model

PROMPTS = ["def add(a, b):", "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y", "import"]
GREEDY = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)


def open_engine(folder: Path, tmp: Path, **config: Any) -> tuple[Any, Engine]:
    repo = Repository(tmp / "repo")
    manifest = import_model(repo, folder, "lm")
    assert manifest.format == "hf-causal-lm"
    runtime = runtime_for(manifest, repo.path("lm", manifest.version), RuntimeOptions(threads=1))
    runtime.load()
    return runtime, Engine(runtime, GenerationConfig(**{"kv_cache_mb": 4, "block_size": 4, **config}), "lm")


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def engine(request: pytest.FixtureRequest, lm_folders: dict[str, Path],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, AsyncEngine]]:
    # A small step budget, so the longest prompt is prefilled in several chunks.
    runtime, eng = open_engine(lm_folders[request.param], tmp_path_factory.mktemp("eng"), max_batched_tokens=16)
    yield runtime, AsyncEngine(eng)
    eng.close()


@functools.cache
def pristine(folder: Path) -> Any:
    """The model as transformers loads it: the engine's own copy has its Linear weights repacked
    and GPT-2's GELU fused into a matmul, so it cannot be its own reference."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder)).eval()


def reference(runtime: Any, prompt: str, tokens: int) -> list[int]:
    ids = runtime.tokenizer(prompt, return_tensors="pt").input_ids
    with torch.inference_mode():
        out = pristine(runtime.path).generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                                              pad_token_id=runtime.tokenizer.eos_token_id)
    return list(out[0, ids.shape[1]:].tolist())


async def collect(eng: AsyncEngine, prompt: str, params: SamplingParams) -> dict[int, list[int]]:
    ids: dict[int, list[int]] = {}
    async for out in eng.submit(eng.encode(prompt), params):
        for d in out.deltas:
            ids.setdefault(d.index, []).extend(d.token_ids)
    return ids


def test_greedy_equals_transformers_alone(engine: tuple[Any, AsyncEngine]) -> None:
    runtime, eng = engine
    for prompt in PROMPTS:
        got = asyncio.run(collect(eng, prompt, GREEDY))[0]
        assert got == reference(runtime, prompt, 24), prompt


def test_greedy_equals_transformers_in_a_busy_batch(engine: tuple[Any, AsyncEngine]) -> None:
    """Sampled requests run; greedy ones join mid-flight (one with a prompt prefilled in chunks
    while the others decode) and must still match token for token."""
    runtime, eng = engine
    busy = SamplingParams(max_tokens=60, temperature=1.0, seed=3, ignore_eos=True)

    async def scenario() -> list[dict[int, list[int]]]:
        background = [asyncio.create_task(collect(eng, p, busy)) for p in ("while", "for name")]
        await asyncio.sleep(0.02)
        greedy = await asyncio.gather(*[collect(eng, p, GREEDY) for p in PROMPTS])
        await asyncio.gather(*background)
        return greedy

    eng.engine.stats.most_in_a_step = 0
    results = asyncio.run(scenario())
    assert eng.engine.stats.most_in_a_step >= 4  # greedy and sampled requests shared steps
    for prompt, got in zip(PROMPTS, results, strict=True):
        assert got[0] == reference(runtime, prompt, 24), prompt


def test_seed_reproducible_and_n_sequences_differ(engine: tuple[Any, AsyncEngine]) -> None:
    _, eng = engine
    params = SamplingParams(max_tokens=16, temperature=1.0, top_p=0.9, top_k=50, seed=7, n=3, ignore_eos=True)
    first = asyncio.run(collect(eng, "def", params))
    second = asyncio.run(collect(eng, "def", params))
    assert first == second and sorted(first) == [0, 1, 2]
    assert len({tuple(v) for v in first.values()}) > 1  # each of n has its own random stream
    other = asyncio.run(collect(eng, "def", SamplingParams(max_tokens=16, temperature=1.0, seed=8, ignore_eos=True)))
    assert other[0] != first[0]


def test_top_k_one_is_greedy(engine: tuple[Any, AsyncEngine]) -> None:
    runtime, eng = engine
    got = asyncio.run(collect(eng, "import", SamplingParams(max_tokens=8, temperature=1.5, top_k=1, ignore_eos=True)))
    assert got[0] == reference(runtime, "import", 8)


def test_stop_strings_and_max_tokens(engine: tuple[Any, AsyncEngine]) -> None:
    _, eng = engine

    async def run(params: SamplingParams) -> tuple[str, str | None, int]:
        text, finish, tokens = "", None, 0
        async for out in eng.submit(eng.encode("def add(a, b):"), params):
            for d in out.deltas:
                text += d.text
                finish = d.finish_reason or finish
                tokens += len(d.token_ids)
        return text, finish, tokens

    full, finish, tokens = asyncio.run(run(SamplingParams(max_tokens=20, temperature=0, ignore_eos=True)))
    assert finish == "length" and tokens == 20
    stop = full[3:5]  # a string the greedy output is known to contain
    cut, finish, _ = asyncio.run(run(SamplingParams(max_tokens=20, temperature=0, stop=(stop,), ignore_eos=True)))
    assert finish == "stop" and cut == full[:full.index(stop)] and stop not in cut


def test_logprobs(engine: tuple[Any, AsyncEngine]) -> None:
    _, eng = engine

    async def run() -> list[Any]:
        items: list[Any] = []
        async for out in eng.submit(eng.encode("class"), SamplingParams(max_tokens=5, temperature=0, logprobs=3)):
            for d in out.deltas:
                items.extend(d.logprobs or [])
        return items

    items = asyncio.run(run())
    assert len(items) == 5
    for it in items:
        assert len(it.top) == 3 and it.logprob <= 0
        assert it.top[0][0] == it.token_id and it.top[0][1] == pytest.approx(it.logprob)  # greedy = top-1


def test_cancelling_frees_the_slot_and_blocks_at_once(engine: tuple[Any, AsyncEngine]) -> None:
    _, eng = engine
    total = eng.engine.lm.pool.num_blocks
    before = eng.engine.stats.cancelled

    async def leave_early() -> None:
        stream = eng.submit(eng.encode("def"), SamplingParams(max_tokens=100, temperature=0, ignore_eos=True))
        seen = 0
        async for _ in stream:
            seen += 1
            if seen == 2:
                break  # the reader goes away: closing the stream cancels the request

    asyncio.run(leave_early())
    deadline = time.monotonic() + 5
    while eng.engine.snapshot()["running"] and time.monotonic() < deadline:
        time.sleep(0.005)
    snap = eng.engine.snapshot()
    assert snap["running"] == 0 and snap["free_blocks"] == total
    assert eng.engine.stats.cancelled == before + 1


def test_bad_requests_are_refused_before_queueing(engine: tuple[Any, AsyncEngine]) -> None:
    _, eng = engine
    ctx = eng.max_model_len
    with pytest.raises(ContextTooLong, match=f"context is {ctx} tokens"):
        eng.engine.check([1] * (ctx + 1), SamplingParams())
    with pytest.raises(ContextTooLong, match="lower max_tokens"):
        eng.engine.check([1] * 10, SamplingParams(max_tokens=ctx))
    with pytest.raises(InvalidInput, match="prompt is empty"):
        eng.engine.check([], SamplingParams())
    with pytest.raises(InvalidInput, match=r"must be in \[0,"):
        eng.engine.check([10**6], SamplingParams())
    for bad, msg in ((dict(temperature=3.0), "temperature"), (dict(top_p=0.0), "top_p"), (dict(n=0), "n is 0"),
                     (dict(max_tokens=0), "max_tokens"), (dict(logprobs=21), "logprobs"), (dict(stop=("",)), "stop")):
        with pytest.raises(InvalidInput, match=msg):
            eng.engine.check([1], SamplingParams(**bad))


def test_bounded_queue_and_cache_limits(lm_folders: dict[str, Path], tmp_path: Path) -> None:
    """One slot, one queue place: a third request is refused with a retry hint; a request larger
    than the whole cache is refused with the numbers; queued ones run once the slot frees."""
    _, eng = open_engine(lm_folders["gpt2"], tmp_path, max_num_seqs=1, max_queue_size=1, kv_cache_mb=1)
    client = AsyncEngine(eng)
    try:
        async def scenario() -> list[int]:
            long = SamplingParams(max_tokens=60, temperature=0, ignore_eos=True)
            first = client.submit(client.encode("def"), long)
            while not eng.snapshot()["running"]:  # the first holds the only slot
                await asyncio.sleep(0.001)
            second = client.submit(client.encode("class"), long)
            with pytest.raises(Unavailable, match="max_queue_size 1") as refused:
                client.submit(client.encode("import"), long)
            assert refused.value.retry_after
            counts = []
            for stream in (first, second):
                n = 0
                async for out in stream:
                    n = out.completion_tokens
                counts.append(n)
            return counts

        assert asyncio.run(scenario()) == [60, 60]
        # 1 MiB holds 1024 tokens of this model (2 layers x 64 x K,V x fp32 = 1 KiB a token).
        with pytest.raises(ContextTooLong, match="raise kv_cache_mb"):
            eng.check([1] * 10, SamplingParams(max_tokens=100, n=16))
    finally:
        eng.close()

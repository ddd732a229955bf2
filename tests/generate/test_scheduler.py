"""The scheduler's promises, step by step: decoders advance every step while a long prompt is
prefilled in chunks of what is left of the budget; admission waits for a slot and KV room."""

from __future__ import annotations

from shipyard.config import GenerationConfig
from shipyard.generate.kv_cache import BlockPool
from shipyard.generate.params import SamplingParams
from shipyard.generate.scheduler import Scheduler
from shipyard.generate.sequence import Request


def request(prompt_len: int, max_tokens: int = 8) -> Request:
    return Request("r", list(range(1, prompt_len + 1)), SamplingParams(temperature=0), max_tokens, lambda out: None)


def advance(step: list) -> None:
    """What the engine does after a step: count computed tokens, append a token where sampled."""
    for seq, seg in step:
        seq.computed += seg.length
        if seg.wants_logits:
            seq.tokens.append(7)
            seq.out_ids.append(7)


def test_a_long_prompt_never_stalls_the_decoders() -> None:
    pool = BlockPool(layers=1, kv_heads=1, head_dim=4, block_size=4, budget_bytes=1 << 20, max_blocks=1000)
    sched = Scheduler(GenerationConfig(max_batched_tokens=16, max_num_seqs=4), pool)
    short = request(3)
    sched.waiting.append(short)
    advance(sched.schedule())  # the short prompt prefilled in one step; it now decodes
    long = request(50)
    sched.waiting.append(long)
    chunks = []
    while long.seqs[0].computed < 50:
        step = sched.schedule()
        by_seq = {id(s): seg for s, seg in step}
        assert by_seq[id(short.seqs[0])].length == 1  # the decoder runs in every step
        chunks.append(by_seq[id(long.seqs[0])].length)
        advance(step)
    assert chunks == [15, 15, 15, 5]  # the budget minus the decoder's token, then the rest


def test_admission_waits_for_a_slot_and_for_cache_room() -> None:
    pool = BlockPool(layers=1, kv_heads=1, head_dim=4, block_size=4, budget_bytes=1 << 20, max_blocks=6)
    sched = Scheduler(GenerationConfig(max_batched_tokens=64, max_num_seqs=1), pool)
    first, second = request(8, 8), request(4, 4)  # 4 blocks, then 2
    sched.waiting.extend([first, second])
    sched.schedule()
    assert [s.request for s in sched.running] == [first] and list(sched.waiting) == [second]
    assert pool.free_blocks == 2
    sched.remove(first.seqs[0])  # finished or cancelled: its slot and blocks are free at once
    assert pool.free_blocks == 6
    sched.schedule()
    assert [s.request for s in sched.running] == [second]

"""The scheduler's promises, step by step: decoders advance every step while a long prompt is
prefilled in chunks of what is left of the budget; admission waits for a slot and KV room;
blocks are taken as sequences grow, and when none is left the newest request is preempted."""

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
    first, second = request(8, 100), request(4, 4)  # 2 blocks for the prompt: max_tokens is not reserved
    sched.waiting.extend([first, second])
    sched.schedule()
    assert [s.request for s in sched.running] == [first] and list(sched.waiting) == [second]
    assert pool.free_blocks == 4
    sched.remove(first.seqs[0])  # finished or cancelled: its slot and blocks are free at once
    assert pool.free_blocks == 6
    sched.schedule()
    assert [s.request for s in sched.running] == [second]


def test_a_prompt_waits_for_room_and_a_spare_block_per_running_sequence() -> None:
    pool = BlockPool(layers=1, kv_heads=1, head_dim=4, block_size=4, budget_bytes=1 << 20, max_blocks=6)
    sched = Scheduler(GenerationConfig(max_batched_tokens=64, max_num_seqs=4), pool)
    first, second = request(16, 100), request(4, 4)  # 4 blocks, then 1 (+ 2 spare: one per sequence)
    sched.waiting.extend([first, second])
    sched.schedule()
    assert list(sched.waiting) == [second] and pool.free_blocks == 2  # room for it, but not the spares
    big = request(20, 4)  # 5 blocks: the whole pool, when it is alone
    lone = Scheduler(GenerationConfig(max_batched_tokens=64, max_num_seqs=4), BlockPool(
        layers=1, kv_heads=1, head_dim=4, block_size=4, budget_bytes=1 << 20, max_blocks=5))
    lone.waiting.append(big)
    lone.schedule()
    assert [s.request for s in lone.running] == [big]


def test_blocks_grow_and_the_newest_request_is_preempted_then_recomputed() -> None:
    pool = BlockPool(layers=1, kv_heads=1, head_dim=4, block_size=4, budget_bytes=1 << 20, max_blocks=5)
    sched = Scheduler(GenerationConfig(max_batched_tokens=64, max_num_seqs=4), pool)
    old, new = request(4, 12), request(3, 12)
    sched.waiting.append(old)
    advance(sched.schedule())  # old: prompt of 4 in 1 block, first token sampled
    sched.waiting.append(new)
    advance(sched.schedule())  # new admitted (1 block + 2 spare left); old took its 2nd block
    assert [s.request for s in sched.running] == [old, new] and pool.free_blocks == 2
    preempted_at = None
    for _ in range(12):
        step = sched.schedule()
        if sched.preemptions and preempted_at is None:
            preempted_at = len(new.seqs[0].tokens)
            assert [s.request for s in sched.running] == [old] and list(sched.waiting) == [new]
            assert new.seqs[0].computed == 0 and new.seqs[0].blocks == []
            assert {id(s) for s, _ in step} == {id(old.seqs[0])}
        for seq, seg in step:  # a sequence's segment never runs past the blocks it holds
            assert seg.start + seg.length <= len(seq.blocks) * pool.block_size
        advance(step)
        if len(old.seqs[0].out_ids) == 12:
            sched.remove(old.seqs[0])
            break
    assert preempted_at is not None and sched.preemptions == 1
    assert sched.recomputed_tokens == preempted_at - 1  # all but its last sampled token were cached
    # Readmitted, it recomputes prompt and generated tokens as one prefill, then samples the next.
    step = sched.schedule()
    (seq, seg), = step
    assert seq is new.seqs[0] and seg.start == 0 and seg.tokens == new.seqs[0].tokens and seg.wants_logits

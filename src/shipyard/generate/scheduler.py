"""Which tokens of which sequences run in the next step.

Every step has a token budget. Sequences that are decoding take one token each first, so they
advance every step whatever arrives; prompts are prefilled in chunks with what is left (chunked
prefill), so a long prompt takes a few steps instead of stalling every decoder for one long one.
Waiting requests join as soon as there is a free sequence slot and KV-cache room for their prompt
plus `max_tokens` (reserved at admission, so a running sequence never runs out of cache and nothing
is ever preempted); finished or cancelled ones leave at the end of the step that ends them.
"""

from __future__ import annotations

from collections import deque

from shipyard.config import GenerationConfig
from shipyard.generate.kv_cache import BlockPool
from shipyard.generate.model import Segment
from shipyard.generate.sequence import Request, Sequence


class Scheduler:
    def __init__(self, config: GenerationConfig, pool: BlockPool) -> None:
        self.config = config
        self.pool = pool
        self.waiting: deque[Request] = deque()
        self.running: list[Sequence] = []

    def blocks_needed(self, request: Request) -> int:
        return self.pool.blocks_for(len(request.prompt) + request.max_tokens) * request.params.n

    def _admit(self) -> None:
        while self.waiting:
            req = self.waiting[0]
            if len(self.running) + req.params.n > self.config.max_num_seqs:
                return
            if self.pool.free_blocks < self.blocks_needed(req):
                return  # first come, first served: the head waits for room, nobody overtakes it
            self.waiting.popleft()
            for seq in req.seqs:
                blocks = self.pool.allocate(self.pool.blocks_for(len(req.prompt) + req.max_tokens))
                assert blocks is not None
                seq.blocks = blocks
                self.running.append(seq)

    def schedule(self) -> list[tuple[Sequence, Segment]]:
        self._admit()
        budget = self.config.max_batched_tokens
        step: list[tuple[Sequence, Segment]] = []
        for seq in self.running:
            if seq.decoding:
                step.append((seq, Segment(seq.tokens[-1:], seq.computed, seq.blocks, True)))
                budget -= 1
        for seq in self.running:
            if seq.decoding or budget <= 0:
                continue
            take = min(seq.remaining, budget)
            end = seq.computed + take
            step.append((seq, Segment(seq.tokens[seq.computed:end], seq.computed, seq.blocks,
                                      end == len(seq.tokens))))
            budget -= take
        return step

    def remove(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.pool.release(seq.blocks)

    def drop(self, request: Request) -> bool:
        """Take a request out wherever it is, freeing its blocks; False if it was not here."""
        if request in self.waiting:
            self.waiting.remove(request)
            return True
        found = False
        for seq in request.seqs:
            if seq in self.running:
                self.remove(seq)
                found = True
        return found

    @property
    def idle(self) -> bool:
        return not self.waiting and not self.running

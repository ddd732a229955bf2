"""Which tokens of which sequences run in the next step.

Every step has a token budget. Sequences that are decoding take one token each first, so they
advance every step whatever arrives; prompts are prefilled in chunks with what is left (chunked
prefill), so a long prompt takes a few steps instead of stalling every decoder for one long one.

KV-cache blocks are taken as sequences grow, not reserved for `max_tokens` at admission: a request
that asks for 2,000 tokens and stops after 20 holds blocks for 20. A waiting request joins when
there is a free sequence slot and room for its prompt, plus one spare block for each running
sequence (so the batch can grow a little without anyone being preempted at once). When a decoder
needs a block and none is free, the most recently admitted request is preempted (as vLLM does):
its blocks are freed and it goes back to the head of the queue, keeping the tokens it generated;
readmitted, it recomputes their keys and values as one prefill and carries on where it stopped.
The engine refuses any request that could not finish alone in the whole cache, so the oldest
request always can, and everything finishes. Finished or cancelled sequences leave at the end of
the step that ends them.
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
        self.preemptions = 0  # requests sent back to the queue to free blocks
        self.recomputed_tokens = 0  # tokens whose keys and values were computed again after one

    @staticmethod
    def _live(request: Request) -> list[Sequence]:
        return [s for s in request.seqs if s.finish is None]

    def blocks_needed(self, request: Request) -> int:
        """Blocks for what a request's unfinished sequences hold now (their prompt, plus what
        they generated before a preemption)."""
        return sum(self.pool.blocks_for(len(s.tokens)) for s in self._live(request))

    def _admit(self) -> None:
        while self.waiting:
            req = self.waiting[0]
            seqs = self._live(req)
            if len(self.running) + len(seqs) > self.config.max_num_seqs:
                return
            spare = len(self.running) + len(seqs) if self.running else 0  # alone, it may take all
            if self.pool.free_blocks < self.blocks_needed(req) + spare:
                return  # first come, first served: the head waits for room, nobody overtakes it
            self.waiting.popleft()
            for seq in seqs:
                blocks = self.pool.allocate(self.pool.blocks_for(len(seq.tokens)))
                assert blocks is not None
                seq.blocks = blocks
                self.running.append(seq)

    def _grow(self) -> bool:
        """Give every decoder the block its next token's key and value go to, preempting the
        most recently admitted requests while the pool is empty. True if any was preempted."""
        preempted = False
        for seq in list(self.running):
            if seq not in self.running or not seq.decoding:
                continue  # preempted by an older one just now, or not decoding
            if len(seq.blocks) >= self.pool.blocks_for(seq.computed + 1):
                continue
            while self.pool.free_blocks == 0 and seq in self.running:
                self._preempt(self.running[-1].request)
                preempted = True
            if seq in self.running:
                seq.blocks.extend(self.pool.allocate(1) or [])
        return preempted

    def _preempt(self, request: Request) -> None:
        for seq in self._live(request):
            if seq in self.running:
                self.running.remove(seq)
                self.pool.release(seq.blocks)
                self.recomputed_tokens += seq.computed
                seq.computed = 0
        self.waiting.appendleft(request)
        self.preemptions += 1

    def schedule(self) -> list[tuple[Sequence, Segment]]:
        if not self._grow():
            self._admit()  # not in a step that had to preempt: it would only preempt again
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

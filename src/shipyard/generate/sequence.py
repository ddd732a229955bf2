"""A request inside the engine, and its sequences (one per `n`): tokens, KV blocks, text so far,
stop conditions."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from shipyard.generate.params import Delta, Output, SamplingParams, TokenLogprob


@dataclass(eq=False)
class Sequence:
    request: Request
    index: int
    tokens: list[int]
    generator: torch.Generator | None
    computed: int = 0  # tokens whose keys/values are in the cache
    blocks: list[int] = field(default_factory=list)
    out_ids: list[int] = field(default_factory=list)
    text: str = ""
    sent: int = 0  # characters of `text` already handed to the reader
    finish: str | None = None
    new_ids: list[int] = field(default_factory=list)
    new_logprobs: list[TokenLogprob] = field(default_factory=list)

    @property
    def decoding(self) -> bool:
        return self.computed == len(self.tokens) - 1 and bool(self.out_ids)

    @property
    def remaining(self) -> int:
        return len(self.tokens) - self.computed

    def append(self, token: int, logprob: TokenLogprob | None, tokenizer: Any, eos: set[int]) -> None:
        """Take one sampled token; decide whether the sequence is finished."""
        params = self.request.params
        self.tokens.append(token)
        self.out_ids.append(token)
        self.new_ids.append(token)
        if logprob is not None:
            self.new_logprobs.append(logprob)
        if token in eos and not params.ignore_eos:
            self.finish = "stop"
        else:
            # Byte-level tokens can split a character: decode the whole output (cheap: Rust) so the
            # text is always what the tokens really say.
            self.text = tokenizer.decode(self.out_ids, skip_special_tokens=True)
            if params.stop:
                begin = max(0, self.sent - max(len(s) for s in params.stop))
                hits = [j for s in params.stop if (j := self.text.find(s, begin)) >= 0]
                if hits:
                    self.text = self.text[:min(hits)]
                    self.finish = "stop"
        if self.finish is None and len(self.out_ids) >= self.request.max_tokens:
            self.finish = "length"

    def delta(self) -> Delta | None:
        """What the reader has not seen yet. While running, text that could still turn into a stop
        string, or an incomplete character, is held back."""
        end = len(self.text)
        if self.finish is None:
            stops = self.request.params.stop
            if stops:
                end -= max(len(s) for s in stops) - 1
            while end > self.sent and self.text[end - 1] == "\ufffd":
                end -= 1
        end = max(end, self.sent)
        if end == self.sent and not self.new_ids and self.finish is None:
            return None
        d = Delta(self.index, self.text[self.sent:end], self.new_ids,
                  self.new_logprobs if self.request.params.logprobs is not None else None, self.finish)
        self.sent = end
        self.new_ids, self.new_logprobs = [], []
        return d


@dataclass(eq=False)
class Request:
    id: str
    prompt: list[int]
    params: SamplingParams
    max_tokens: int
    emit: Callable[[Output], None]
    arrival: float = field(default_factory=time.perf_counter)
    seqs: list[Sequence] = field(default_factory=list)

    def __post_init__(self) -> None:
        for i in range(self.params.n):
            gen = None
            if not self.params.greedy:
                gen = torch.Generator()
                # A seed makes the output reproducible; each of the n sequences gets its own stream.
                gen.manual_seed(self.params.seed + i if self.params.seed is not None else torch.seed())
            self.seqs.append(Sequence(self, i, list(self.prompt), gen))

    @property
    def finished(self) -> bool:
        return all(s.finish is not None for s in self.seqs)

    @property
    def completion_tokens(self) -> int:
        return sum(len(s.out_ids) for s in self.seqs)

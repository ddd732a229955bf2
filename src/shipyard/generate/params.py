"""What a request asks of the engine, and what the engine hands back step by step."""

from __future__ import annotations

from dataclasses import dataclass, field

from shipyard.errors import InvalidInput, shown

MAX_TOP_LOGPROBS = 20
# Most sequences one client request may start (prompts x n): one body must not hand the engine
# thousands (200 prompts x n=16 ran 3,200).
MAX_SEQUENCES = 256


class ContextTooLong(InvalidInput):
    """Prompt plus requested completion longer than the model's context."""


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens and when to stop. `temperature` 0 is greedy (argmax)."""

    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    n: int = 1
    logprobs: int | None = None  # None: none; 0: the chosen token's only; k: plus the top k
    ignore_eos: bool = False

    def check(self) -> None:
        """Bounds a client can get wrong; each message names the value, the limit and the fix."""
        if self.max_tokens is not None and self.max_tokens < 1:
            raise InvalidInput(f"max_tokens is {self.max_tokens}; it must be at least 1", param="max_tokens")
        if not 0.0 <= self.temperature <= 2.0:
            raise InvalidInput(f"temperature is {self.temperature}; it must be between 0 and 2", param="temperature")
        if not 0.0 < self.top_p <= 1.0:
            raise InvalidInput(f"top_p is {self.top_p}; it must be in (0, 1]", param="top_p")
        if self.top_k < 0:
            raise InvalidInput(f"top_k is {self.top_k}; it must be 0 (off) or positive", param="top_k")
        if not 1 <= self.n <= 16:
            raise InvalidInput(f"n is {self.n}; it must be between 1 and 16", param="n")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_TOP_LOGPROBS:
            raise InvalidInput(f"logprobs is {self.logprobs}; it must be between 0 and {MAX_TOP_LOGPROBS}", param="logprobs")
        if len(self.stop) > 4 or any(not s for s in self.stop):
            raise InvalidInput(f"stop has {shown(list(self.stop))}; give at most 4 non-empty strings", param="stop")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class Delta:
    """What one sequence of a request produced since its last delta."""

    index: int
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None  # "stop" | "length" | "abort"


@dataclass
class Output:
    """One message from the engine to a request's reader: deltas for its sequences, and the counts
    so far (the last message of a request has every sequence finished)."""

    deltas: list[Delta]
    prompt_tokens: int
    completion_tokens: int
    finished: bool = False
    error: Exception | None = None

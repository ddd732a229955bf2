"""The engine seen from the asyncio event loop: `AsyncEngine`, the `Stream` of one request's
outputs, and the small interfaces around them (`EngineClient`, what a channel may use; `Observer`).

`submit` validates and queues a request, raising at once on a bad or unservable one (so a channel
can still answer with a status code); it returns a `Stream` of `Output`s. Leaving the stream before
its end (a client that disconnects: the task reading it is cancelled) cancels the request, and the
engine frees its sequence slots and KV blocks at the next step.

An `Observer` (the server's metrics) hears of each request's first token, the gaps between its
later outputs, and its end. Outputs are stamped on the engine thread as they leave it, so event
loop delays do not blur the figures.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

from shipyard.errors import InvalidInput
from shipyard.generate.engine import Engine
from shipyard.generate.params import MAX_SEQUENCES, ContextTooLong, Output, SamplingParams
from shipyard.generate.sequence import Request
from shipyard.generate.tokenizer import chars_per_token

_ids = itertools.count()


class Observer(Protocol):
    """What a server records of each request, called on the event loop (times in seconds)."""

    def first_token(self, prompt_tokens: int, tokens: int, seconds: float) -> None:
        """The first output with tokens: `seconds` since submission (the time to first token)."""

    def next_tokens(self, tokens: int, gap: float) -> None:
        """A later output (one engine step; one token per running sequence), `gap` after the last."""

    def finished(self, outcome: str, seconds: float) -> None:
        """The end: outcome "finished", "cancelled" or "failed", `seconds` since submission."""


class EngineClient(Protocol):
    """What a channel may use: the tokenizer, the context length, encoding (a prompt sure to be
    too long is refused by its length first), the request-size checks, and submitting."""

    name: str
    max_model_len: int
    tokenizer: Any

    def encode(self, text: str) -> list[int]: ...

    def encode_many(self, texts: list[str]) -> list[list[int]]: ...

    def check_length(self, text: str) -> None: ...

    def check_count(self, prompts: int, n: int) -> None: ...

    def submit(self, prompt: list[int], params: SamplingParams) -> Stream: ...

    def submit_many(self, prompts: list[list[int]], params: SamplingParams) -> list[Stream]: ...


class Stream:
    """The outputs of one request, in order, as an async iterator."""

    def __init__(self, engine: Engine, prompt: list[int], params: SamplingParams, max_tokens: int,
                 observer: Observer | None = None) -> None:
        loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[tuple[Output, float]] = asyncio.Queue()
        self._engine = engine
        self._done = False
        self._observer = observer
        self._start = time.perf_counter()
        self._last: float | None = None  # when the last output with tokens left the engine

        def emit(out: Output) -> None:  # called on the engine thread
            try:
                loop.call_soon_threadsafe(self._queue.put_nowait, (out, time.perf_counter()))
            except RuntimeError:  # the loop is closed: nobody is reading any more
                pass

        self.request = Request(f"gen-{next(_ids)}", prompt, params, max_tokens, emit)
        self.prompt_tokens = len(prompt)
        engine.add(self.request)

    async def __aiter__(self) -> AsyncIterator[Output]:
        try:
            while True:
                out, at = await self._queue.get()
                if out.error is not None:
                    self._done = True
                    self._observe_end("failed", at)
                    raise out.error
                if self._observer is not None:
                    self._observe(out, at)
                if out.finished:
                    self._done = True
                    self._observe_end("finished", at)
                yield out
                if out.finished:
                    return
        finally:
            self.cancel()

    def cancel(self) -> None:
        if not self._done:
            self._done = True
            self._engine.abort(self.request)
            self._observe_end("cancelled", time.perf_counter())

    def _observe(self, out: Output, at: float) -> None:
        assert self._observer is not None
        tokens = sum(len(d.token_ids) for d in out.deltas)
        if not tokens:
            return
        if self._last is None:
            self._observer.first_token(self.prompt_tokens, tokens, at - self._start)
        else:
            self._observer.next_tokens(tokens, at - self._last)
        self._last = at

    def _observe_end(self, outcome: str, at: float) -> None:
        if self._observer is not None:
            self._observer.finished(outcome, at - self._start)


class AsyncEngine:
    """An `Engine` seen from the event loop."""

    def __init__(self, engine: Engine, observer: Observer | None = None) -> None:
        self.engine = engine
        self.observer = observer
        self.name = engine.name
        self.max_model_len = engine.max_model_len
        self.tokenizer = engine.tokenizer
        # Built here, where loading runs (off the event loop): it reads the whole vocabulary.
        self.chars_per_token = chars_per_token(self.tokenizer)

    def check_length(self, text: str) -> None:
        """ContextTooLong for a prompt with more characters than the context's tokens can cover
        (its tokens could only be more than the context holds), without tokenizing any of it."""
        most = (self.max_model_len - 1) * self.chars_per_token if self.chars_per_token else None
        if most is not None and len(text) > most:
            raise ContextTooLong(
                f"this model's context is {self.max_model_len} tokens; the prompt has {len(text)} characters, "
                f"more than {self.max_model_len - 1} prompt tokens can hold (at most {self.chars_per_token} "
                "characters each, by its vocabulary). Shorten the prompt")

    def encode(self, text: str) -> list[int]:
        """Token ids of one prompt (refused by its length first when that is sure to be too long).
        It can take a while for a long text: a server calls it off the event loop."""
        return self.encode_many([text])[0]

    def encode_many(self, texts: list[str]) -> list[list[int]]:
        """Token ids of several prompts in one call (the fast tokenizer runs them in Rust, without
        the GIL)."""
        for text in texts:
            self.check_length(text)
        if not texts:
            return []
        return [list(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def submit(self, prompt: list[int], params: SamplingParams) -> Stream:
        max_tokens = self.engine.check(prompt, params)
        return Stream(self.engine, prompt, params, max_tokens, self.observer)

    def check_count(self, prompts: int, n: int) -> None:
        """InvalidInput for a request of more prompts than the queue holds (it could never fit,
        so no retry would help) or of more than MAX_SEQUENCES completions (prompts x n)."""
        limit = self.engine.config.max_queue_size
        if prompts > limit:
            raise InvalidInput(f"the request has {prompts} prompts; model '{self.name}' queues at most "
                               f"{limit} requests (max_queue_size), so it can never fit: send at most {limit}",
                               param="prompt")
        if prompts * n > MAX_SEQUENCES:
            raise InvalidInput(f"the request asks for {prompts * n} completions ({prompts} prompts x n={n}); "
                               f"one request may ask for at most {MAX_SEQUENCES}: send fewer prompts or a lower n",
                               param="n")

    def submit_many(self, prompts: list[list[int]], params: SamplingParams) -> list[Stream]:
        """One client request of several prompts: every prompt is checked before any queues, a
        request that could never fit is refused (InvalidInput, not a retry), and when the queue
        fills part way the ones queued are cancelled."""
        self.check_count(len(prompts), params.n)
        checked = [(p, self.engine.check(p, params)) for p in prompts]
        streams: list[Stream] = []
        try:
            for prompt, max_tokens in checked:
                streams.append(Stream(self.engine, prompt, params, max_tokens, self.observer))
        except BaseException:
            for s in streams:
                s.cancel()
            raise
        return streams

"""The small interface the API side uses to talk to an engine (from the asyncio event loop).

`submit` validates and queues a request, raising at once on a bad or unservable one (so a channel
can still answer with a status code); it returns a `Stream` of `Output`s. Leaving the stream before
its end (a client that disconnects: the task reading it is cancelled) cancels the request, and the
engine frees its sequence slots and KV blocks at the next step.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any, Protocol

from shipyard.generate.engine import Engine
from shipyard.generate.params import Output, SamplingParams
from shipyard.generate.sequence import Request

_ids = itertools.count()


class EngineClient(Protocol):
    """What a channel may use: the tokenizer, the context length, and `submit`."""

    name: str
    max_model_len: int
    tokenizer: Any

    def encode(self, text: str) -> list[int]: ...

    def submit(self, prompt: list[int], params: SamplingParams) -> Stream: ...


class Stream:
    """The outputs of one request, in order, as an async iterator."""

    def __init__(self, engine: Engine, prompt: list[int], params: SamplingParams, max_tokens: int) -> None:
        loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[Output] = asyncio.Queue()
        self._engine = engine
        self._done = False

        def emit(out: Output) -> None:  # called on the engine thread
            try:
                loop.call_soon_threadsafe(self._queue.put_nowait, out)
            except RuntimeError:  # the loop is closed: nobody is reading any more
                pass

        self.request = Request(f"gen-{next(_ids)}", prompt, params, max_tokens, emit)
        self.prompt_tokens = len(prompt)
        engine.add(self.request)

    async def __aiter__(self) -> AsyncIterator[Output]:
        try:
            while True:
                out = await self._queue.get()
                if out.error is not None:
                    self._done = True
                    raise out.error
                if out.finished:
                    self._done = True
                yield out
                if out.finished:
                    return
        finally:
            self.cancel()

    def cancel(self) -> None:
        if not self._done:
            self._done = True
            self._engine.abort(self.request)


class AsyncEngine:
    """An `Engine` seen from the event loop."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.name = engine.name
        self.max_model_len = engine.max_model_len
        self.tokenizer = engine.tokenizer

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def submit(self, prompt: list[int], params: SamplingParams) -> Stream:
        max_tokens = self.engine.check(prompt, params)
        return Stream(self.engine, prompt, params, max_tokens)

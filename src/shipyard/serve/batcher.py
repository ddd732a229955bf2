"""The dynamic batcher: one per loaded model version.

Requests are queued; one worker thread takes what is queued (up to `max_batch_size` rows of
requests whose inputs can be stacked), waits at most `max_queue_delay_us` for more, runs the model
once, and hands each request its own rows. With the default delay of 0 nothing ever waits: a lone
request runs at once, and requests that arrive while the model is busy form the next batch. The
queue is bounded; a full one refuses at once with `Unavailable` (503 + Retry-After), never hangs.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shipyard.config import BatchingConfig
from shipyard.errors import InferenceFailed, ShipyardError, Unavailable
from shipyard.runtimes import Runtime

ADAPTIVE_MAX_WAIT_S = 0.005


@dataclass(slots=True)
class _Item:
    inputs: dict[str, np.ndarray]
    outputs: list[str]
    rows: int
    key: tuple[Any, ...]
    future: asyncio.Future[dict[str, np.ndarray]]
    loop: asyncio.AbstractEventLoop
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class BatchStats:
    """Counters the server exposes: what was really batched and where time went."""

    requests: int = 0
    failures: int = 0
    executions: int = 0
    queue_s: float = 0.0
    compute_s: float = 0.0
    batch_sizes: Counter[int] = field(default_factory=Counter)


class DynamicBatcher:
    def __init__(self, runtime: Runtime, config: BatchingConfig, name: str) -> None:
        self.runtime = runtime
        self.config = config
        self.batchable = runtime.signature.batched and config.max_batch_size > 1
        self.stats = BatchStats()
        self._queue: deque[_Item] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self.executing = 0
        self._last_requests = 0
        self._last_compute_s = 0.0
        self._queued_after_last = 0
        # Called after each model call with (rows, compute seconds, each request's queue wait):
        # how the metrics see batches without the batcher knowing of them.
        self.observer: Callable[[int, float, list[float]], None] | None = None
        self._thread = threading.Thread(target=self._run, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    @property
    def closed(self) -> bool:
        """Whether it has stopped taking requests (its version is being unloaded)."""
        return self._closed

    @property
    def depth(self) -> int:
        return len(self._queue)

    def full(self) -> Unavailable | None:
        """The refusal a request would get now for a full queue (read without the lock: a hint
        for shedding early, before decoding; `submit` decides)."""
        if len(self._queue) < self.config.max_queue_size:
            return None
        return Unavailable(f"the model's queue is full ({self.config.max_queue_size} requests waiting); "
                           "retry later or raise max_queue_size", retry_after=1)

    async def submit(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        """Queue one request (already validated) and wait for its own rows of the result."""
        loop = asyncio.get_running_loop()
        rows = next(iter(inputs.values())).shape[0] if self.batchable and inputs else 1
        key = tuple((n, a.dtype.str, a.shape[1:]) for n, a in sorted(inputs.items()))
        item = _Item(inputs, outputs, rows, key, loop.create_future(), loop)
        with self._cond:
            if self._closed:
                raise Unavailable("the model is being unloaded; retry shortly", retry_after=1)
            refusal = self.full()
            if refusal is not None:
                raise refusal
            self._queue.append(item)
            self._cond.notify()
        return await item.future

    def close(self) -> None:
        """Stop taking requests; queued ones are still answered; the thread ends after them."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=30)

    # -- worker thread -----------------------------------------------------------------------
    def _take(self) -> list[_Item] | None:
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            first = self._queue.popleft()
            batch = [first]
            if not self.batchable:
                return batch
            rows = first.rows
            deadline = first.enqueued + self.config.max_queue_delay_us / 1e6
            expected = 1
            if self.config.adaptive and self._last_requests > 1:
                # Under load, the clients of the last batch are sending their next requests right
                # now: give them a tenth of the last compute time to arrive, so batches stay full
                # instead of alternating full and nearly empty. A lone request never waits.
                expected = min(self._last_requests + self._queued_after_last, self.config.max_batch_size)
                deadline = max(deadline, time.perf_counter() + min(0.1 * self._last_compute_s, ADAPTIVE_MAX_WAIT_S))
            while rows < self.config.max_batch_size:
                taken = self._take_compatible(first.key, self.config.max_batch_size - rows)
                if taken is not None:
                    batch.append(taken)
                    rows += taken.rows
                    continue
                remaining = deadline - time.perf_counter()
                if remaining <= 0 or self._closed:
                    break
                if len(batch) >= expected and self.config.max_queue_delay_us == 0:
                    break
                self._cond.wait(remaining)
            return batch

    def _take_compatible(self, key: tuple[Any, ...], room: int) -> _Item | None:
        for i, item in enumerate(self._queue):
            if item.key == key and item.rows <= room:
                del self._queue[i]
                return item
        return None

    def _run(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            self._execute(batch)

    def _execute(self, batch: list[_Item]) -> None:
        start = time.perf_counter()
        self.executing = len(batch)
        try:
            results = self._infer(batch)
        except Exception as exc:  # noqa: BLE001 - every failure is answered, none kills the thread
            if len(batch) > 1:
                # One bad request must not fail its neighbours: rerun each alone.
                for item in batch:
                    self._execute([item])
                return
            results = [exc]
        elapsed = time.perf_counter() - start
        self.executing = 0
        # Clients seen in the last round: those just answered plus those that queued meanwhile.
        # Counting both lets two half-size groups that alternate merge into full batches.
        self._last_requests, self._last_compute_s = len(batch), elapsed
        self._queued_after_last = len(self._queue)
        st = self.stats
        st.executions += 1
        st.compute_s += elapsed
        rows = sum(i.rows for i in batch)
        st.batch_sizes[rows] += 1
        if self.observer is not None:
            self.observer(rows, elapsed, [start - i.enqueued for i in batch])
        for item, result in zip(batch, results, strict=True):
            st.requests += 1
            st.queue_s += start - item.enqueued
            if isinstance(result, Exception):
                st.failures += 1
                item.loop.call_soon_threadsafe(_fail, item.future, result)
            else:
                item.loop.call_soon_threadsafe(_succeed, item.future, result)

    def _infer(self, batch: list[_Item]) -> list[dict[str, np.ndarray] | Exception]:
        if len(batch) == 1:
            item = batch[0]
            return [self.runtime.infer(item.inputs, item.outputs)]
        names = list(batch[0].inputs)
        stacked = {n: np.concatenate([i.inputs[n] for i in batch], axis=0) for n in names}
        wanted = list(dict.fromkeys(o for i in batch for o in i.outputs))
        out = self.runtime.infer(stacked, wanted)
        total = sum(i.rows for i in batch)
        for n, a in out.items():
            if a.ndim == 0 or a.shape[0] != total:
                raise InferenceFailed(
                    f"output '{n}' has leading dimension {a.shape[0] if a.ndim else 'none'} for a batch "
                    f"of {total} rows; the model cannot be batched: set max_batch_size 1"
                )
        results: list[dict[str, np.ndarray] | Exception] = []
        offset = 0
        for item in batch:
            results.append({n: out[n][offset : offset + item.rows] for n in item.outputs})
            offset += item.rows
        return results


def _succeed(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _fail(future: asyncio.Future[Any], exc: Exception) -> None:
    if future.done():
        return
    if not isinstance(exc, ShipyardError):
        exc = InferenceFailed(f"the model failed while computing: {type(exc).__name__}: {exc}")
    future.set_exception(exc)

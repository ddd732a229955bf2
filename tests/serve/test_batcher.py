"""The dynamic batcher in-process, in front of a tiny real runtime whose calls the test can hold
and inspect: batch forming, the queue bound, cancellation and the one-by-one re-run of a failed
batch. No server: each test drives `DynamicBatcher.submit` on its own event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest

from shipyard.config import BatchingConfig
from shipyard.errors import InferenceFailed, Unavailable
from shipyard.repository import Signature, TensorSpec
from shipyard.serve.batcher import DynamicBatcher

SIGNATURE = Signature(inputs=[TensorSpec(name="x", datatype="FP32", shape=[-1, 2])],
                      outputs=[TensorSpec(name="y", datatype="FP32", shape=[-1, 2])])


class Doubler:
    """y = 2x. Records the rows of every call; `hold` keeps a call waiting until `release`;
    a negative value fails the whole call, as a model that cannot take one row would."""

    signature = SIGNATURE

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.entered = threading.Semaphore(0)
        self.gate = threading.Event()
        self.gate.set()

    def hold(self) -> None:
        self.gate.clear()

    def release(self) -> None:
        self.gate.set()

    def infer(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        self.entered.release()
        self.gate.wait(10)
        x = inputs["x"]
        self.calls.append(x.shape[0])
        if (x < 0).any():
            raise ValueError("negative input")
        return {"y": x * 2}


def rows(*values: float) -> dict[str, np.ndarray]:
    return {"x": np.array([[v, v] for v in values], dtype=np.float32)}


def run(make: Callable[[DynamicBatcher, Doubler], Awaitable[Any]], **config: Any) -> tuple[Any, Doubler]:
    runtime = Doubler()
    batcher = DynamicBatcher(runtime, BatchingConfig(**config), "test")  # type: ignore[arg-type]
    try:
        return asyncio.run(make(batcher, runtime)), runtime
    finally:
        runtime.release()
        batcher.close()


async def until_busy(runtime: Doubler) -> None:
    """Wait until the worker thread is inside a model call."""
    assert await asyncio.to_thread(runtime.entered.acquire, True, 10)


def test_requests_that_queue_while_the_model_runs_form_one_batch_up_to_its_size() -> None:
    async def go(batcher: DynamicBatcher, runtime: Doubler) -> list[dict[str, np.ndarray]]:
        runtime.hold()
        first = asyncio.ensure_future(batcher.submit(rows(0), ["y"]))
        await until_busy(runtime)
        rest = [asyncio.ensure_future(batcher.submit(rows(i, i), ["y"])) for i in range(1, 6)]  # 10 rows
        await asyncio.sleep(0.05)  # all queued behind the held call
        assert batcher.depth == 5
        runtime.release()
        return await asyncio.gather(first, *rest)

    answers, runtime = run(go, max_batch_size=4)
    # 1 alone, then 2 requests of 2 rows (4 rows: full), twice, then the last one.
    assert runtime.calls == [1, 4, 4, 2]
    for i, answer in enumerate(answers):
        np.testing.assert_array_equal(answer["y"], rows(*([i] if i == 0 else [i, i]))["x"] * 2)


def test_a_delay_collects_requests_that_arrive_within_it() -> None:
    async def go(batcher: DynamicBatcher, runtime: Doubler) -> list[dict[str, np.ndarray]]:
        first = asyncio.ensure_future(batcher.submit(rows(1), ["y"]))
        await asyncio.sleep(0.05)  # well within the delay: the first is still waiting for company
        second = asyncio.ensure_future(batcher.submit(rows(2), ["y"]))
        return await asyncio.gather(first, second)

    answers, runtime = run(go, max_batch_size=8, max_queue_delay_us=2_000_000)
    assert runtime.calls == [2]
    assert [a["y"][0, 0] for a in answers] == [2, 4]


def test_a_full_queue_refuses_at_once_and_serves_the_queued() -> None:
    async def go(batcher: DynamicBatcher, runtime: Doubler) -> list[dict[str, np.ndarray]]:
        runtime.hold()
        running = asyncio.ensure_future(batcher.submit(rows(0), ["y"]))
        await until_busy(runtime)
        queued = [asyncio.ensure_future(batcher.submit(rows(i), ["y"])) for i in (1, 2)]
        await asyncio.sleep(0.01)
        with pytest.raises(Unavailable, match=r"queue is full \(2 requests waiting\)") as refused:
            await batcher.submit(rows(3), ["y"])
        assert refused.value.retry_after == 1
        runtime.release()
        return await asyncio.gather(running, *queued)

    answers, runtime = run(go, max_batch_size=1, max_queue_size=2)
    assert [a["y"][0, 0] for a in answers] == [0, 2, 4]
    assert runtime.calls == [1, 1, 1]  # the refused request never ran


def test_a_cancelled_waiter_leaves_its_batch_and_the_others_intact() -> None:
    async def go(batcher: DynamicBatcher, runtime: Doubler) -> list[Any]:
        runtime.hold()
        running = asyncio.ensure_future(batcher.submit(rows(0), ["y"]))
        await until_busy(runtime)
        queued = [asyncio.ensure_future(batcher.submit(rows(i), ["y"])) for i in (1, 2, 3)]
        await asyncio.sleep(0.01)
        queued[1].cancel()  # the client of request 2 went away
        runtime.release()
        answers = await asyncio.gather(running, *queued, return_exceptions=True)
        after = await batcher.submit(rows(5), ["y"])  # the batcher still serves
        return [*answers, after]

    answers, runtime = run(go, max_batch_size=8)
    assert isinstance(answers[2], asyncio.CancelledError)
    assert [a["y"][0, 0] for i, a in enumerate(answers) if i != 2] == [0, 2, 6, 10]
    assert runtime.calls == [1, 3, 1]  # the cancelled one still rode in its batch; only its answer was dropped


def test_a_failed_batch_is_rerun_one_by_one_so_only_the_bad_request_fails() -> None:
    async def go(batcher: DynamicBatcher, runtime: Doubler) -> list[Any]:
        runtime.hold()
        running = asyncio.ensure_future(batcher.submit(rows(0), ["y"]))
        await until_busy(runtime)
        queued = [asyncio.ensure_future(batcher.submit(rows(v), ["y"])) for v in (1, -1, 3)]
        await asyncio.sleep(0.01)
        runtime.release()
        return await asyncio.gather(running, *queued, return_exceptions=True)

    answers, runtime = run(go, max_batch_size=8)
    assert isinstance(answers[2], InferenceFailed) and "ValueError: negative input" in answers[2].message
    assert [answers[i]["y"][0, 0] for i in (0, 1, 3)] == [0, 2, 6]
    assert runtime.calls == [1, 3, 1, 1, 1]  # the batch of 3 failed, then each alone

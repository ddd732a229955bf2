"""Prometheus metrics of the serving core: one registry per server, shared by every channel.

Names (documented in the README):
  shipyard_requests_total{model,version,channel,outcome}        inference requests answered
  shipyard_request_duration_seconds{model,version,channel}      total time in the server
  shipyard_queue_duration_seconds{model,version}                 time waiting in the batcher
  shipyard_inference_duration_seconds{model,version}             time of one model call (a batch)
  shipyard_batch_size{model,version}                             rows in each model call
  shipyard_queue_depth{model,version}                            requests waiting now
  shipyard_model_state{model,version,state}                      1 for the version's current state
  shipyard_shadow_comparisons_total{model,version,shadow,outcome} shadow answers: agree/disagree/error
  process_resident_memory_bytes, process_cpu_seconds_total, ... (prometheus-client's process collector)

Label values come from loaded models only: a request naming a model that is not loaded is
counted under model "_other", so clients cannot grow the label space without bound.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from shipyard.errors import (
    InferenceFailed,
    IntegrityError,
    InvalidInput,
    NotFound,
    PermissionDenied,
    RateLimited,
    ShipyardError,
    Unauthenticated,
    Unavailable,
)

if TYPE_CHECKING:
    from shipyard.serve.manager import ModelManager

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OTHER = "_other"

# Outcome label of each error class; most specific first, as in the channels' status tables.
OUTCOMES: list[tuple[type[BaseException], str]] = [
    (asyncio.CancelledError, "cancelled"),  # the client went away before the answer
    (Unauthenticated, "unauthenticated"),
    (PermissionDenied, "forbidden"),
    (RateLimited, "rate_limited"),
    (InvalidInput, "invalid"),
    (NotFound, "not_found"),
    (Unavailable, "unavailable"),
    (InferenceFailed, "error"),
    (IntegrityError, "error"),
    (ShipyardError, "invalid"),
    (Exception, "error"),
]

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


def outcome_of(exc: BaseException) -> str:
    return next((name for cls, name in OUTCOMES if isinstance(exc, cls)), "error")


class _LiveState:
    """Queue depth and load state, read from the model manager at scrape time (no hot-path cost)."""

    def __init__(self, manager: ModelManager) -> None:
        self.manager = manager

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily("shipyard_queue_depth", "Requests waiting in a model's batcher.",
                                  labels=["model", "version"])
        state = GaugeMetricFamily("shipyard_model_state", "1 for each model version's current state "
                                  "(READY, LOADING, UNAVAILABLE).", labels=["model", "version", "state"])
        for entry in list(self.manager.models.values()):
            for v, lv in sorted(entry.versions.items()):
                state.add_metric([lv.name, str(v), lv.state], 1)
                if lv.batcher is not None:
                    depth.add_metric([lv.name, str(v)], lv.batcher.depth)
        yield depth
        yield state


class Metrics:
    """Counters and histograms of one server. Labelled children are cached, so recording a
    request costs a dict lookup and two increments rather than prometheus-client's label parsing."""

    def __init__(self, manager: ModelManager) -> None:
        self.manager = manager
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("shipyard_requests", "Inference requests answered, by outcome.",
                                ["model", "version", "channel", "outcome"], registry=r)
        self.request_seconds = Histogram("shipyard_request_duration_seconds",
                                         "Total time of an inference request in the server.",
                                         ["model", "version", "channel"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_seconds = Histogram("shipyard_queue_duration_seconds", "Time a request waited in the batcher.",
                                       ["model", "version"], buckets=LATENCY_BUCKETS, registry=r)
        self.inference_seconds = Histogram("shipyard_inference_duration_seconds",
                                           "Time of one model call (one batch).",
                                           ["model", "version"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("shipyard_batch_size", "Rows in each model call.",
                                    ["model", "version"], buckets=BATCH_BUCKETS, registry=r)
        self.shadow = Counter("shipyard_shadow_comparisons", "Shadow answers compared with the primary's.",
                              ["model", "version", "shadow", "outcome"], registry=r)
        ProcessCollector(registry=r)
        r.register(_LiveState(manager))  # type: ignore[arg-type]
        self._children: dict[tuple[str, ...], tuple[Any, Any]] = {}

    def _model(self, model: str) -> str:
        return model if model in self.manager.models else OTHER

    def record(self, model: str, version: int | None, channel: str, outcome: str, start: float) -> None:
        """One answered request: its outcome and total time since `start` (perf_counter)."""
        key = (model, str(version) if version is not None else "", channel, outcome)
        pair = self._children.get(key)
        if pair is None:
            m = self._model(model)
            labels = (m, key[1], channel)
            pair = (self.requests.labels(*labels, outcome), self.request_seconds.labels(*labels))
            if m != OTHER:  # unknown names are not cached either: the cache must stay bounded
                self._children[key] = pair
        pair[0].inc()
        pair[1].observe(time.perf_counter() - start)

    def record_error(self, model: str, version: int | None, channel: str, exc: BaseException, start: float) -> None:
        self.record(model, version, channel, outcome_of(exc), start)

    def batch_observer(self, model: str, version: int) -> Callable[[int, float, list[float]], None]:
        """What a batcher calls after each model call: rows, compute seconds, each request's wait."""
        labels = (model, str(version))
        batch, infer, queue = (self.batch_size.labels(*labels), self.inference_seconds.labels(*labels),
                               self.queue_seconds.labels(*labels))

        def observe(rows: int, compute_s: float, waits: list[float]) -> None:
            batch.observe(rows)
            infer.observe(compute_s)
            for w in waits:
                queue.observe(w)

        return observe

    def forget(self, model: str) -> None:
        """Drop cached children of an unloaded model (their series stay, with their last values)."""
        self._children = {k: v for k, v in self._children.items() if k[0] != model}

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

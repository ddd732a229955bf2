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
  shipyard_non_finite_total{model,version,direction}             NaN/Inf float values in inputs/outputs
Generative models (the engine behind the OpenAI channel), per model and version:
  shipyard_time_to_first_token_seconds        submission to the first generated token
  shipyard_inter_token_latency_seconds        gap between a request's successive engine steps
  shipyard_generation_duration_seconds        submission to the last token (finished requests)
  shipyard_generation_requests_total{outcome} finished, cancelled (the client left) or failed
  shipyard_prompt_tokens_total, shipyard_generated_tokens_total   tokens/s is their rate()
  shipyard_running_sequences, shipyard_waiting_requests           the engine's batch and queue now
  shipyard_kv_cache_blocks{state}             KV-cache blocks free and used now
  shipyard_preemptions_total                  requests sent back to the queue when the cache ran out
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
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from pydantic import ValidationError

from shipyard.errors import (
    Disconnected,
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

# Outcome label of each error class, looked up along the class's MRO (a new error class is
# counted as its nearest listed ancestor); anything else is an "error". Every client fault (a 4xx
# in `shipyard.protocol.status`) has an outcome of its own or "invalid", never "error", which is
# kept for the server's faults.
OUTCOMES: dict[type[BaseException], str] = {
    asyncio.CancelledError: "cancelled",  # the client went away before the answer
    Disconnected: "cancelled",  # ... or before its request was all sent
    ValidationError: "invalid",  # a body that fails its schema (the OpenAI channel's models)
    ShipyardError: "invalid",
    Unauthenticated: "unauthenticated",
    PermissionDenied: "forbidden",
    RateLimited: "rate_limited",
    InvalidInput: "invalid",
    NotFound: "not_found",
    Unavailable: "unavailable",
    InferenceFailed: "error",
    IntegrityError: "error",
}

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
# LLM serving spans milliseconds (a decode step of a small model) to minutes (a long completion
# behind a queue); the finest buckets sit where decode gaps and first tokens usually fall.
TTFT_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0,
                5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2,
               0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 120.0,
               300.0, 600.0)


def outcome_of(exc: BaseException) -> str:
    for cls in type(exc).__mro__:
        outcome = OUTCOMES.get(cls)
        if outcome is not None:
            return outcome
    return "error"


class _LiveState:
    """Queue depth and load state, read from the model manager at scrape time (no hot-path cost)."""

    def __init__(self, manager: ModelManager) -> None:
        self.manager = manager

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily("shipyard_queue_depth", "Requests waiting in a model's batcher.",
                                  labels=["model", "version"])
        state = GaugeMetricFamily("shipyard_model_state", "1 for each model version's current state "
                                  "(READY, LOADING, UNAVAILABLE).", labels=["model", "version", "state"])
        labels = ["model", "version"]
        running = GaugeMetricFamily("shipyard_running_sequences", "Sequences in a generation engine's batch.",
                                    labels=labels)
        waiting = GaugeMetricFamily("shipyard_waiting_requests", "Requests queued for a generation engine.",
                                    labels=labels)
        blocks = GaugeMetricFamily("shipyard_kv_cache_blocks", "KV-cache blocks of a generation engine, "
                                   "free and used.", labels=[*labels, "state"])
        preempted = CounterMetricFamily("shipyard_preemptions", "Generation requests preempted (their KV "
                                        "blocks freed, recomputed later) when the cache ran out.", labels=labels)
        for entry in list(self.manager.models.values()):
            for v, lv in sorted(entry.versions.items()):
                state.add_metric([lv.name, str(v), lv.state], 1)
                if lv.batcher is not None:
                    depth.add_metric([lv.name, str(v)], lv.batcher.depth)
                if lv.engine is not None and lv.state == "READY":
                    now = lv.engine.engine.snapshot()  # plain reads of the engine's lists
                    running.add_metric([lv.name, str(v)], now["running"])
                    waiting.add_metric([lv.name, str(v)], now["waiting"])
                    blocks.add_metric([lv.name, str(v), "free"], now["free_blocks"])
                    blocks.add_metric([lv.name, str(v), "used"], now["total_blocks"] - now["free_blocks"])
                    preempted.add_metric([lv.name, str(v)], now["preemptions"])
        yield from (depth, state, running, waiting, blocks, preempted)


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
        self.ttft = Histogram("shipyard_time_to_first_token_seconds",
                              "Time from a generation request's submission to its first token.",
                              ["model", "version"], buckets=TTFT_BUCKETS, registry=r)
        self.itl = Histogram("shipyard_inter_token_latency_seconds",
                             "Gap between a generation request's successive engine steps (one token each).",
                             ["model", "version"], buckets=ITL_BUCKETS, registry=r)
        self.e2e = Histogram("shipyard_generation_duration_seconds",
                             "Time from a generation request's submission to its last token.",
                             ["model", "version"], buckets=E2E_BUCKETS, registry=r)
        self.generations = Counter("shipyard_generation_requests", "Generation requests ended, by outcome "
                                   "(finished, cancelled, failed).", ["model", "version", "outcome"], registry=r)
        self.prompt_tokens = Counter("shipyard_prompt_tokens", "Prompt tokens of generation requests.",
                                     ["model", "version"], registry=r)
        self.generated_tokens = Counter("shipyard_generated_tokens", "Tokens generated (all sequences).",
                                        ["model", "version"], registry=r)
        self.non_finite = Counter("shipyard_non_finite", "NaN and infinite values in inference inputs "
                                  "and outputs (float tensors), by direction.",
                                  ["model", "version", "direction"], registry=r)
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

    def generation_observer(self, model: str, version: int) -> GenerationObserver:
        """What a generation engine's streams report to (a `shipyard.generate.Observer`)."""
        return GenerationObserver(self, model, str(version))

    def forget(self, model: str) -> None:
        """Drop cached children of an unloaded model (their series stay, with their last values)."""
        self._children = {k: v for k, v in self._children.items() if k[0] != model}

    def exposition(self, allows: Callable[[str], bool] | None = None) -> bytes:
        """The text format; with `allows`, only the samples whose model label it allows (and
        those without one: the process, and every family's HELP and TYPE)."""
        if allows is None:
            return generate_latest(self.registry)
        return generate_latest(_Only(self.registry, allows))


class _Only(Collector):
    """A registry's view that keeps the samples of the models `allows` allows (scrape time only)."""

    def __init__(self, registry: CollectorRegistry, allows: Callable[[str], bool]) -> None:
        self.registry, self.allows = registry, allows

    def collect(self) -> Iterator[Metric]:
        for family in self.registry.collect():
            kept = Metric(family.name, family.documentation, family.type, family.unit)
            kept.samples = [s for s in family.samples if "model" not in s.labels or self.allows(s.labels["model"])]
            yield kept


class Tally:
    """One request that the data plane counts outside `infer` (a generation). The channel names
    its model and version as it learns them; the count is settled once, by the first `settle`:
    when the work returns or raises, or, for an answer that streams (`defer`), when the stream
    ends, so a client that hangs up mid-stream counts as cancelled, not as a success."""

    __slots__ = ("_metrics", "channel", "start", "model", "version", "deferred", "settled")

    def __init__(self, metrics: Metrics, channel: str) -> None:
        self._metrics, self.channel, self.start = metrics, channel, time.perf_counter()
        self.model: str = ""
        self.version: int | None = None
        self.deferred = self.settled = False

    def defer(self) -> None:
        """The answer streams: its outcome is settled when the stream ends."""
        self.deferred = True

    def settle(self, outcome: str | BaseException) -> None:
        """Count the request once: an outcome label, or the error that ended it."""
        if self.settled:
            return
        self.settled = True
        if isinstance(outcome, BaseException):
            self._metrics.record_error(self.model, self.version, self.channel, outcome, self.start)
        else:
            self._metrics.record(self.model, self.version, self.channel, outcome, self.start)


class GenerationObserver:
    """One model version's generation metrics, its labelled children looked up once."""

    def __init__(self, metrics: Metrics, model: str, version: str) -> None:
        labels = (model, version)
        self._ttft = metrics.ttft.labels(*labels)
        self._itl = metrics.itl.labels(*labels)
        self._e2e = metrics.e2e.labels(*labels)
        self._prompt = metrics.prompt_tokens.labels(*labels)
        self._generated = metrics.generated_tokens.labels(*labels)
        self._outcomes = {o: metrics.generations.labels(*labels, o) for o in ("finished", "cancelled", "failed")}

    def first_token(self, prompt_tokens: int, tokens: int, seconds: float) -> None:
        self._prompt.inc(prompt_tokens)  # counted once prefilled, so its rate() is prefill throughput
        self._generated.inc(tokens)
        self._ttft.observe(seconds)

    def next_tokens(self, tokens: int, gap: float) -> None:
        self._generated.inc(tokens)
        self._itl.observe(gap)

    def finished(self, outcome: str, seconds: float) -> None:
        self._outcomes[outcome].inc()
        if outcome == "finished":
            self._e2e.observe(seconds)

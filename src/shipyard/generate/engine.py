"""The engine: one thread that loops schedule -> execute -> update over a continuous batch.

Requests and cancellations arrive through a locked inbox (from any thread); outputs leave through
each request's `emit` callback. The loop sleeps when there is nothing to do.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from shipyard.config import GenerationConfig
from shipyard.errors import InferenceFailed, InvalidInput, Unavailable
from shipyard.generate.model import PagedLM
from shipyard.generate.params import ContextTooLong, Output, SamplingParams
from shipyard.generate.sampler import sample
from shipyard.generate.scheduler import Scheduler
from shipyard.generate.sequence import Request

log = logging.getLogger("shipyard.generate")
IDLE_EXIT_S = 0.5


@dataclass
class EngineStats:
    requests: int = 0
    finished: int = 0
    cancelled: int = 0
    failed: int = 0
    steps: int = 0
    most_in_a_step: int = 0  # sequences in the fullest step so far: proof the batch really was shared
    prompt_tokens: int = 0
    generated_tokens: int = 0
    compute_s: float = 0.0


class Engine:
    """Generation for one loaded causal LM. `runtime` is a loaded `HFCausalLMRuntime`."""

    def __init__(self, runtime: Any, config: GenerationConfig, name: str) -> None:
        import torch

        self.name = name
        self.config = config
        self.tokenizer = runtime.tokenizer
        self.torch = torch
        model = runtime.model
        positions = runtime.family.max_positions(model.config)
        self.max_model_len = min(config.max_model_len or positions, positions)
        max_blocks = config.max_num_seqs * -(-self.max_model_len // config.block_size)
        self.lm = PagedLM(model, runtime.family, config.kv_cache_mb * 2**20, config.block_size, max_blocks,
                          pack_linears=config.packed_linears, attention=config.attention_kernel)
        eos = self.tokenizer.eos_token_id
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        self.eos = {t for t in [eos, *(gen_eos if isinstance(gen_eos, list) else [gen_eos])] if t is not None}
        self.scheduler = Scheduler(config, self.lm.pool)
        self.stats = EngineStats()
        self._inbox: deque[tuple[str, Request]] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None  # started by work, ended by idleness (see _run)
        log.info("%s: KV cache %d blocks x %d tokens (%.0f MiB), context %d, up to %d sequences, "
                 "%d fp32 Linear layers packed for oneDNN, decode attention: %s", name, self.lm.pool.num_blocks,
                 config.block_size, self.lm.pool.bytes / 2**20, self.max_model_len, config.max_num_seqs,
                 self.lm.packed, self.lm.attention_note)

    # -- the API side (any thread) ------------------------------------------------------------
    def check(self, prompt: list[int], params: SamplingParams) -> int:
        """Validate a request before it queues; return its max_tokens (default: the rest of the
        context)."""
        params.check()
        if not prompt:
            raise InvalidInput("the prompt is empty; give at least one token")
        # The length first: a prompt of millions of ids is refused before it is read id by id.
        room = self.max_model_len - len(prompt)
        if room < 1 or (params.max_tokens is not None and params.max_tokens > room):
            asked = f" + {params.max_tokens} max_tokens" if params.max_tokens is not None else ""
            raise ContextTooLong(
                f"this model's context is {self.max_model_len} tokens; the request has "
                f"{len(prompt)} prompt tokens{asked}. Shorten the prompt or lower max_tokens"
            )
        if any(not 0 <= t < self.lm.vocab_size for t in prompt):
            raise InvalidInput(f"prompt token ids must be in [0, {self.lm.vocab_size})", param="prompt")
        max_tokens = params.max_tokens or room
        need = self.lm.pool.blocks_for(len(prompt) + max_tokens) * params.n
        if need > self.lm.pool.num_blocks:
            raise ContextTooLong(
                f"the request needs {need * self.lm.pool.block_size} tokens of KV cache "
                f"({len(prompt)} prompt + {max_tokens} max_tokens, n={params.n}); the cache holds "
                f"{self.lm.pool.capacity_tokens}. Lower max_tokens or n, or raise kv_cache_mb"
            )
        return max_tokens

    def add(self, request: Request) -> None:
        with self._cond:
            if self._closed:
                raise Unavailable(f"model '{self.name}' is being unloaded; retry shortly", retry_after=1)
            queued = len(self.scheduler.waiting) + sum(1 for kind, _ in self._inbox if kind == "add")
            if queued >= self.config.max_queue_size:
                raise Unavailable(
                    f"model '{self.name}' has {queued} requests waiting (max_queue_size "
                    f"{self.config.max_queue_size}); retry shortly", retry_after=1)
            self._inbox.append(("add", request))
            self._cond.notify()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"engine-{self.name}", daemon=True)
                self._thread.start()

    def abort(self, request: Request) -> None:
        with self._cond:
            self._inbox.append(("abort", request))
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=30)
        else:
            self._fail_all(Unavailable(f"model '{self.name}' was unloaded", retry_after=1))

    def snapshot(self) -> dict[str, Any]:
        s = self.stats
        return {"running": len(self.scheduler.running), "waiting": len(self.scheduler.waiting),
                "free_blocks": self.lm.pool.free_blocks, "total_blocks": self.lm.pool.num_blocks,
                "preemptions": self.scheduler.preemptions, "recomputed_tokens": self.scheduler.recomputed_tokens,
                **s.__dict__}

    # -- the engine thread --------------------------------------------------------------------
    def _run(self) -> None:
        """The loop, on a thread that ends after IDLE_EXIT_S without work (the next request starts
        a new one). A thread's first parallel torch op gives it an OpenMP team that lives as long
        as the thread, and an idle team in one live thread was measured to slow another thread's
        team ~1.6x per decode step here: with several LMs loaded, an idle one must not keep one."""
        while True:
            with self._cond:
                deadline = time.monotonic() + IDLE_EXIT_S
                while not self._inbox and self.scheduler.idle and not self._closed:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        self._thread = None
                        return
                    self._cond.wait(left)
                if self._closed:
                    break
                inbox, self._inbox = self._inbox, deque()
            for kind, req in inbox:
                if kind == "add":
                    self.scheduler.waiting.append(req)
                    self.stats.requests += 1
                    self.stats.prompt_tokens += len(req.prompt) * req.params.n
                elif self.scheduler.drop(req):
                    self.stats.cancelled += 1
                    log.info("%s: request %s cancelled after %d tokens; its KV blocks are free "
                             "(%d of %d free)", self.name, req.id, req.completion_tokens,
                             self.lm.pool.free_blocks, self.lm.pool.num_blocks)
            try:
                self.step()
            except Exception as e:  # noqa: BLE001 - a failing step must not kill the engine
                log.exception("%s: step failed", self.name)
                self._fail_all(InferenceFailed(f"generation failed: {type(e).__name__}: {e}"))
        self._fail_all(Unavailable(f"model '{self.name}' was unloaded", retry_after=1))

    def step(self) -> None:
        """schedule -> execute -> update."""
        scheduled = self.scheduler.schedule()
        if not scheduled:
            return
        start = time.perf_counter()
        batch = self.lm.prepare([seg for _, seg in scheduled])
        logits = self.lm.forward(batch)
        self.stats.compute_s += time.perf_counter() - start
        self.stats.steps += 1
        self.stats.most_in_a_step = max(self.stats.most_in_a_step, len(scheduled))
        # prepare() puts decoders first: logits rows follow that order.
        order = [p for p in scheduled if p[1].is_decode] + [p for p in scheduled if not p[1].is_decode]
        sampling = [s for s, seg in order if seg.wants_logits]
        for seq, seg in scheduled:
            seq.computed += seg.length
        tokens, logprobs = sample(logits, sampling)
        touched = {}
        for seq, tok, lp in zip(sampling, tokens, logprobs, strict=True):
            seq.append(tok, lp, self.tokenizer, self.eos)
            self.stats.generated_tokens += 1
            touched[id(seq.request)] = seq.request
            if seq.finish is not None:
                self.scheduler.remove(seq)
        for req in touched.values():
            done = req.finished
            deltas = [d for s in req.seqs if (d := s.delta()) is not None]
            if done:
                self.stats.finished += 1
            req.emit(Output(deltas, len(req.prompt), req.completion_tokens, done))

    def _fail_all(self, error: Exception) -> None:
        requests = {id(s.request): s.request for s in self.scheduler.running}
        requests.update({id(r): r for r in self.scheduler.waiting})
        with self._cond:
            requests.update({id(r): r for kind, r in self._inbox if kind == "add"})
            self._inbox.clear()
        for req in requests.values():
            self.scheduler.drop(req)
            self.stats.failed += 1
            req.emit(Output([], len(req.prompt), req.completion_tokens, True, error))

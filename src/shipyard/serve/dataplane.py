"""The one data plane every channel calls: checks a request against the model's signature, queues
it on the model's batcher, and builds the response. It speaks only core types."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

from shipyard import __version__, tasks
from shipyard.config import ShadowConfig
from shipyard.errors import InvalidInput, NotFound, ShipyardError, Unavailable, shown
from shipyard.repository import Signature, TensorSpec
from shipyard.serve.auth import Guard, KeyRecord
from shipyard.serve.manager import READY, LoadedVersion, ModelManager
from shipyard.serve.metrics import OTHER, Metrics, Tally
from shipyard.serve.routing import Router
from shipyard.serve.types import InferRequest, InferResponse, Route, VersionStatus
from shipyard.tensors import Tensor, numpy_dtype

log = logging.getLogger("shipyard.serve")
EXTENSIONS = ["binary_tensor_data", "model_repository", "statistics"]
T = TypeVar("T")
# What a channel hands `DataPlane.infer`: the decoding of its request (reading the body included).
Decode = Callable[[], InferRequest | Awaitable[InferRequest]]


def _shape_matches(shape: list[int], expected: list[int]) -> bool:
    return len(shape) == len(expected) and all(e == -1 or e == s for s, e in zip(shape, expected, strict=True))


def check_inputs(request: InferRequest, signature: Signature) -> dict[str, np.ndarray]:
    """Every input present once, with the right datatype and shape; the batch dims agree."""
    arrays: dict[str, np.ndarray] = {}
    for t in request.inputs:
        spec = signature.input(t.name)
        if spec is None:
            raise InvalidInput(
                f"unexpected input {shown(t.name)}; model '{request.model}' takes "
                f"{', '.join(s.describe() for s in signature.inputs)}"
            )
        if t.name in arrays:
            raise InvalidInput(f"input '{t.name}' is given more than once")
        if t.datatype != spec.datatype:
            raise InvalidInput(
                f"input '{t.name}' has datatype {t.datatype}; the model expects {spec.datatype}"
            )
        if not _shape_matches(t.shape, spec.shape):
            raise InvalidInput(
                f"input '{t.name}' has shape {t.shape}; the model expects {spec.shape}"
            )
        arrays[t.name] = t.data
    missing = [s.name for s in signature.inputs if s.name not in arrays]
    if missing:
        raise InvalidInput(
            f"missing input{'s' if len(missing) > 1 else ''} {', '.join(repr(m) for m in missing)}; "
            f"model '{request.model}' takes {', '.join(s.describe() for s in signature.inputs)}"
        )
    if signature.batched and len(arrays) > 1:
        sizes = {n: a.shape[0] for n, a in arrays.items()}
        if len(set(sizes.values())) > 1:
            raise InvalidInput(f"inputs disagree on the batch size (first dimension): {sizes}")
    return arrays


def check_outputs(request: InferRequest, signature: Signature) -> list[str]:
    names = [o.name for o in signature.outputs]
    if not request.outputs:
        return names
    wanted = []
    for o in request.outputs:
        if o.name not in names:
            raise InvalidInput(
                f"unknown output {shown(o.name)} requested; model '{request.model}' has {', '.join(names)}"
            )
        wanted.append(o.name)
    return list(dict.fromkeys(wanted))


def non_finite(array: np.ndarray) -> int:
    """How many NaN or infinite values a float array holds: one vectorized pass, about 3 us for a
    digits batch and 20 us for 128K values here (a sum is slower, and warns on overflow); other
    dtypes cost nothing. Counted only when some value is bad."""
    if array.dtype.kind != "f":
        return 0
    finite = np.isfinite(array)
    return 0 if finite.all() else int(array.size - np.count_nonzero(finite))


def _refuse_non_finite(model: str, name: str, array: np.ndarray, count: int) -> InvalidInput:
    first = int(np.flatnonzero(~np.isfinite(array))[0])
    index = [int(i) for i in np.unravel_index(first, array.shape)]
    return InvalidInput(
        f"input '{name}' holds {count} non-finite value{'s' if count > 1 else ''}, the first "
        f"{array.flat[first]} at index {index}; model '{model}' refuses NaN and infinity "
        "(reject_non_finite in its config.json). A JSON number past the datatype's range "
        "(1e300 in FP32) arrives as infinity: send finite values within range"
    )


def _output_tensor(spec: TensorSpec, array: np.ndarray) -> Tensor:
    dtype = numpy_dtype(spec.datatype)
    if array.dtype != dtype and spec.datatype != "BYTES":
        array = array.astype(dtype)
    return Tensor(spec.name, spec.datatype, list(array.shape), array)


class DataPlane:
    """Everything a channel needs: health, metadata, inference, access checks and metrics.
    `channel` names the caller in metrics and in the keys' channel lists."""

    def __init__(self, manager: ModelManager, guard: Guard | None = None) -> None:
        self.manager = manager
        self.guard = guard
        self.metrics = Metrics(manager)
        self.router = Router(manager.repository)
        self._shadows: set[asyncio.Task[None]] = set()
        # Loading and unloading block for seconds: they run here, off the event loop.
        self._admin = ThreadPoolExecutor(max_workers=2, thread_name_prefix="shipyard-admin")
        # A request's own CPU work that would hold the event loop (tokenizing a long prompt):
        # threads of its own, so it never waits behind a model loading in the admin ones.
        self._work = ThreadPoolExecutor(max_workers=2, thread_name_prefix="shipyard-work")
        manager.batch_observer = self.metrics.batch_observer
        manager.generation_observer = self.metrics.generation_observer

    async def run_blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking call (loading a model) in the plane's admin threads."""
        return await asyncio.get_running_loop().run_in_executor(self._admin, fn, *args)

    async def offload(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a request's CPU-heavy step (tokenizing, rendering a long prompt) in the plane's
        work threads, so every other request and channel keeps the event loop meanwhile."""
        return await asyncio.get_running_loop().run_in_executor(self._work, fn, *args)

    def close(self) -> None:
        """Stop the admin and work threads (after `manager.close`)."""
        self._admin.shutdown(wait=False)
        self._work.shutdown(wait=False)

    # -- access ----------------------------------------------------------------------------
    def authorize(self, token: str | None, channel: str, model: str | None = None,
                  spend: bool = True) -> KeyRecord | None:
        """The caller's key record (None when auth is off); refusals are counted and raised."""
        if self.guard is None:
            return None
        try:
            return self.guard.authorize(token, channel, model, spend)
        except ShipyardError as e:
            self.metrics.record_error(model or OTHER, None, channel, e, time.perf_counter())
            raise

    def visible(self, key: KeyRecord | None, model: str) -> bool:
        """Whether a listing shown to this key may name the model."""
        return key is None or key.allows(key.models, model)

    def metrics_text(self, key: KeyRecord | None) -> bytes:
        """The Prometheus exposition this key may read: every line for a key of all models (or
        the admin scope, or with auth off); otherwise the lines labelled with another model
        (`_other` included) are left out, and the process-wide ones stay."""
        if key is None or key.admin or "*" in key.models:
            return self.metrics.exposition()
        return self.metrics.exposition(lambda model: key.allows(key.models, model))

    # -- health and metadata ---------------------------------------------------------------
    def server_metadata(self) -> dict[str, Any]:
        return {"name": "shipyard", "version": __version__, "extensions": EXTENSIONS}

    def model_ready(self, name: str, version: int | None) -> bool:
        return self.manager.describe(name, version).state == READY

    def model_metadata(self, name: str, version: int | None) -> dict[str, Any]:
        lv = self.manager.describe(name, version)
        entry = self.manager.entry(name)
        sig = lv.manifest.signature if lv.manifest else Signature(inputs=[], outputs=[])
        meta: dict[str, Any] = {
            "name": name,
            "versions": [str(v) for v in sorted(entry.versions)],
            "platform": lv.platform,
            "inputs": [s.model_dump() for s in sig.inputs],
            "outputs": [s.model_dump() for s in sig.outputs],
            "state": lv.state,
        }
        if lv.reason:
            meta["reason"] = lv.reason
        return meta

    def version_status(self, name: str, version: int | None) -> list[VersionStatus]:
        """Each loaded version of the model (or the one asked for), newest first."""
        entry = self.manager.entry(name)
        if version is not None and version not in entry.versions:
            self.manager.get(name, version)  # NotFound naming the loaded versions
        versions = {version: entry.versions[version]} if version is not None else entry.versions
        return [VersionStatus(v, lv.state, lv.reason,
                              int(lv.manifest.created.timestamp()) if lv.manifest else None)
                for v, lv in sorted(versions.items(), reverse=True)]

    def model_config(self, name: str, version: int | None) -> dict[str, Any]:
        """The serving config as Triton's model configuration describes it (dims without the
        batch dimension when the model batches)."""
        lv = self.manager.describe(name, version)
        config = self.manager.repository.model_config(name)
        batching = self.manager.settings.batching_for(config)
        sig = lv.manifest.signature if lv.manifest else Signature(inputs=[], outputs=[])
        batched = sig.batched and batching.max_batch_size > 1

        def dims(specs: list[TensorSpec]) -> list[dict[str, Any]]:
            return [{"name": s.name, "datatype": s.datatype, "dims": s.shape[1:] if batched else s.shape}
                    for s in specs]

        return {
            "name": name, "platform": lv.platform, "backend": lv.platform,
            "max_batch_size": batching.max_batch_size if batched else 0,
            "max_queue_delay_us": batching.max_queue_delay_us,
            "version_policy": config.version_policy, "versions": config.versions,
            "inputs": dims(sig.inputs), "outputs": dims(sig.outputs),
        }

    def model_stats(self, name: str | None, version: int | None) -> list[dict[str, Any]]:
        rows = []
        names = [name] if name else sorted(self.manager.models)
        for n in names:
            entry = self.manager.entry(n)
            for v, lv in sorted(entry.versions.items()):
                if version is not None and v != version:
                    continue
                rows.append(_stats(lv))
        return rows

    # -- repository extension ----------------------------------------------------------------
    def repository_index(self, key: KeyRecord | None, ready_only: bool = False) -> list[dict[str, str]]:
        """Every model in the repository this key may see, with each version's state."""
        rows = [r for r in self.manager.index() if self.visible(key, r["name"])]
        return [r for r in rows if r["state"] == READY] if ready_only else rows

    def check_admin(self, key: KeyRecord | None, channel: str, model: str, action: str) -> None:
        """Repository control needs a key with the admin scope when auth is on (the gate has
        already checked the key's right to the channel and the model); a refusal is counted."""
        if self.guard is None:
            return
        try:
            Guard.check_admin(key, action)
        except ShipyardError as e:
            self.metrics.record_error(model, None, channel, e, time.perf_counter())
            raise

    async def load(self, name: str, key: KeyRecord | None = None, channel: str = "") -> None:
        """(Re)load a model beside the versions it serves, swapping when all are ready;
        InvalidInput naming each version that failed and why (the old versions then serve on).
        With auth on, `key` (the caller's, on `channel`) must hold the admin scope."""
        self.check_admin(key, channel, name, "load")
        await self.run_blocking(self.manager.load, name)

    async def unload(self, name: str, key: KeyRecord | None = None, channel: str = "") -> None:
        """Unload a model (as `load`, the key must hold the admin scope when auth is on)."""
        self.check_admin(key, channel, name, "unload")
        await self.run_blocking(self.manager.unload, name)

    # -- inference ---------------------------------------------------------------------------
    def resolve(self, model: str, version: int | None) -> Route:
        """The version that answers (the traffic split chooses when none is named) and its
        signature. A channel that needs the signature to decode resolves first and pins the route
        on its request, so the version it decoded for is the one that answers."""
        shadow = None
        if version is None:
            # The name is checked (and must be loaded) before the router caches anything of it:
            # names no model has would otherwise fill the cache without bound.
            entry = self.manager.entry(model)
            if self.router.routing(model) is not None:
                version, shadow = self.router.choose(model, entry.ready_versions())
        lv = self.manager.get(model, version)
        assert lv.manifest is not None and lv.batcher is not None
        return Route(lv.version, lv.manifest.signature, lv, shadow)

    def shed_early(self, model: str, version: int | None) -> None:
        """Refuse a request with 503 before its body is decoded when every version that could
        answer it has a full queue: under overload, shedding then costs a dict lookup instead of
        a JSON parse, and the event loop stays free for everyone else. Anything else (an unknown
        model, a version not loaded) is left to the full path and its own error."""
        entry = self.manager.models.get(model)
        if entry is None:
            return
        if version is not None:
            candidates = [entry.versions[version]] if version in entry.versions else []
        else:
            ready = entry.ready_versions()
            split = ready and self.router.routing(model) is not None
            candidates = [entry.versions[v] for v in (ready if split else ready[-1:])]
        refusals = [lv.batcher.full() for lv in candidates if lv.batcher is not None]
        if candidates and len(refusals) == len(candidates) and all(refusals):
            raise refusals[0]  # type: ignore[misc]

    async def infer(self, channel: str, model: str, decode: Decode) -> tuple[InferRequest, InferResponse]:
        """Decode and answer one request of `channel`: the decoded request and its answer. The
        clock starts before `decode` (reading the body counts), and a request that `decode`
        refuses is counted too, under `model` (the name its path or message gave), so a channel
        keeps no books of its own."""
        start = time.perf_counter()
        try:
            decoded = decode()
            request = decoded if isinstance(decoded, InferRequest) else await decoded
        except ShipyardError as e:
            self.metrics.record_error(model, None, channel, e, start)
            raise
        try:
            response = await self._infer(request)
        except BaseException as e:
            self.metrics.record_error(request.model, request.version, channel, e, start)
            raise
        self.metrics.record(request.model, response.version, channel, "success", start)
        return request, response

    async def count(self, channel: str, work: Callable[[Tally], Awaitable[T]]) -> T:
        """Run one call of a channel that does not go through `infer` (a generation), counted
        the same way: `work` names the model and version on its tally as it learns them, and the
        count is its outcome and time when it returns or raises, or, when it deferred the tally
        (a stream), when the stream settles it."""
        tally = Tally(self.metrics, channel)
        try:
            result = await work(tally)
        except BaseException as e:
            tally.settle(e)
            raise
        if not tally.deferred:
            tally.settle("success")
        return result

    async def _infer(self, request: InferRequest) -> InferResponse:
        route = request.route or self.resolve(request.model, request.version)
        lv, shadow, signature = route.loaded, route.shadow, route.signature
        assert lv.batcher is not None
        arrays = check_inputs(request, signature)
        wanted = check_outputs(request, signature)
        self._check_finite(lv, request.model, arrays)
        try:
            results = await lv.batcher.submit(arrays, wanted)
        except Unavailable:
            if not lv.batcher.closed:
                raise
            # A reload swapped this version out between choosing it and queueing on it: the set
            # that replaced it answers (its signature is checked again).
            lv = self.manager.get(request.model, request.version)
            assert lv.manifest is not None and lv.batcher is not None
            signature = lv.manifest.signature
            arrays = check_inputs(request, signature)
            wanted = check_outputs(request, signature)
            self._check_finite(lv, request.model, arrays)
            results = await lv.batcher.submit(arrays, wanted)
        for name in wanted:
            bad = non_finite(results[name])
            if bad:
                self.metrics.non_finite.labels(lv.name, str(lv.version), "output").inc(bad)
        if shadow is not None and shadow.version != lv.version:
            task = asyncio.get_running_loop().create_task(
                self._shadow(request, shadow, lv.version, wanted, results))
            self._shadows.add(task)  # held until done: the loop keeps only weak references
            task.add_done_callback(self._shadows.discard)
        specs = {o.name: o for o in signature.outputs}
        return InferResponse(
            model=request.model,
            version=lv.version,
            outputs=[_output_tensor(specs[n], results[n]) for n in wanted],
            id=request.id,
        )

    # -- generation (the OpenAI channel) -----------------------------------------------------
    def generator(self, model: str) -> tuple[str, int, Any]:
        """The name, the version that answers and the generation engine (an EngineClient) of a
        causal LM ('name' or 'name:version')."""
        from shipyard.repository import parse_ref

        name, version = parse_ref(model)
        lv = self.manager.get(name, version)
        if lv.engine is None:
            served = ", ".join(n for n, _, _ in self.generative_models()) or "none loaded"
            raise NotFound(f"model '{model}' is a {lv.platform} model, not a generative one; "
                           f"models that generate text here: {served}")
        return name, lv.version, lv.engine

    def generative_models(self) -> list[tuple[str, int, int]]:
        """(name, created unix time, context length) of each ready causal LM."""
        rows = []
        for name, entry in sorted(self.manager.models.items()):
            ready = entry.ready_versions()
            lv = entry.versions[ready[-1]] if ready else None
            if lv is not None and lv.engine is not None and lv.manifest is not None:
                rows.append((name, int(lv.manifest.created.timestamp()), lv.engine.max_model_len))
        return rows

    def _check_finite(self, lv: LoadedVersion, model: str, arrays: dict[str, np.ndarray]) -> None:
        """Count NaN and infinity in the float inputs; refuse them where the model's config asks."""
        for name, array in arrays.items():
            bad = non_finite(array)
            if bad:
                self.metrics.non_finite.labels(lv.name, str(lv.version), "input").inc(bad)
                if lv.reject_non_finite:
                    raise _refuse_non_finite(model, name, array, bad)

    async def _shadow(self, request: InferRequest, shadow: ShadowConfig, primary: int, wanted: list[str],
                      results: dict[str, np.ndarray]) -> None:
        """Run the request on the shadow version after the primary answered; count whether the
        answers agree. Nothing of it reaches the client."""
        try:
            slv = self.manager.get(request.model, shadow.version)
            assert slv.manifest is not None and slv.batcher is not None
            out = await slv.batcher.submit(check_inputs(request, slv.manifest.signature), wanted)
            plv = self.manager.entry(request.model).versions.get(primary)
            task = _task_of(getattr(plv, "manifest", None), slv.manifest, results)
            first = slv.manifest.signature.outputs[0].name if slv.manifest.signature.outputs else None
            agree = all(_agree(out[n], results[n], shadow.rtol, shadow.atol, task if n == first else None)
                        for n in wanted)
            outcome = "agree" if agree else "disagree"
        except Exception as e:  # noqa: BLE001 - a failing shadow is counted, never raised
            log.debug("shadow %s:%s failed: %s", request.model, shadow.version, e)
            outcome = "error"
        self.metrics.shadow.labels(request.model, str(primary), str(shadow.version), outcome).inc()


def _task_of(primary: Any, shadow: Any, results: dict[str, np.ndarray]) -> tasks.Task | None:
    """The task the comparison is made in: the primary's manifest's, else the shadow's, else
    inferred from the primary's first output (several units: classes; one: a threshold)."""
    name = getattr(primary, "task", None) or getattr(shadow, "task", None)
    if name is None and primary is not None and primary.signature.outputs:
        out = results.get(primary.signature.outputs[0].name)
        if out is None or out.dtype.kind != "f" or out.ndim < 1:
            return None
        name = tasks.infer(primary.signature, None, out)[0]
    return tasks.get(name) if name else None


def _agree(a: np.ndarray, b: np.ndarray, rtol: float, atol: float, task: tasks.Task | None = None) -> bool:
    """Do the shadow's answers say what the primary's say? With a task (shipyard.tasks): the same
    top-1 class, the same side of the threshold, relative error or cosine within its tolerance,
    for every sample; an int8 shadow of an fp32 primary agrees when its classes agree. Without
    one (strings, other outputs): equal within rtol/atol."""
    if a.shape != b.shape:
        return False
    if a.dtype == object or b.dtype == object:
        return bool(np.array_equal(a, b))
    if task is not None and a.ndim >= 1 and len(a) and a.dtype.kind == "f":
        return bool(task.agree(a, b).all())
    return bool(np.allclose(a, b, rtol=rtol, atol=atol))


def _stats(lv: LoadedVersion) -> dict[str, Any]:
    st = lv.batcher.stats if lv.batcher else None
    if st is None:
        return {"name": lv.name, "version": str(lv.version), "state": lv.state}
    ns = 1_000_000_000
    return {
        "name": lv.name,
        "version": str(lv.version),
        "state": lv.state,
        "queue_depth": lv.batcher.depth,
        "executing": lv.batcher.executing,
        "inference_count": st.requests,
        "execution_count": st.executions,
        "inference_stats": {
            "success": {"count": st.requests - st.failures},
            "fail": {"count": st.failures},
            "queue": {"count": st.requests, "ns": int(st.queue_s * ns)},
            "compute_infer": {"count": st.executions, "ns": int(st.compute_s * ns)},
        },
        "batch_stats": [
            {"batch_size": size, "compute_infer": {"count": count}}
            for size, count in sorted(st.batch_sizes.items())
        ],
        "batch_sizes": {str(k): v for k, v in sorted(st.batch_sizes.items())},
    }

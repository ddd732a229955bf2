"""The model manager: which versions are loaded, their state, and the batcher in front of each."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from shipyard.config import ModelConfig, Settings, generation_for
from shipyard.errors import InvalidInput, NotFound, ShipyardError, Unavailable
from shipyard.repository import Manifest, Repository
from shipyard.runtimes import Runtime, RuntimeOptions, runtime_for
from shipyard.serve.batcher import DynamicBatcher

log = logging.getLogger("shipyard.serve")

READY, LOADING, UNAVAILABLE = "READY", "LOADING", "UNAVAILABLE"


@dataclass
class LoadedVersion:
    name: str
    version: int
    state: str = LOADING
    reason: str = ""
    manifest: Manifest | None = None
    runtime: Runtime | None = None
    batcher: DynamicBatcher | None = None
    platform: str = ""
    engine: Any = None  # a shipyard.generate.AsyncEngine, for causal LMs
    closed: bool = False
    reject_non_finite: bool = False  # the model config's, read at load


@dataclass
class ModelEntry:
    """One model's served set of versions. A reload builds a new entry beside it and swaps the
    reference, so readers never see a set half loaded."""

    name: str
    versions: dict[int, LoadedVersion] = field(default_factory=dict)
    config: ModelConfig | None = None  # what it was loaded with: a poll reloads when it changes

    def ready_versions(self) -> list[int]:
        return sorted(v for v, lv in self.versions.items() if lv.state == READY)


def _in_fresh_thread(fn: Callable[[], None]) -> None:
    """Run `fn` in a thread that ends with it.

    Loading runs torch ops, and the first parallel one gives the calling thread an OpenMP team
    that lives as long as the thread. While such a team idles in another live thread, the team of
    a generation engine's thread was measured ~1.6x slower per decode step here (int8 GPT-2: 13 ->
    21 ms), so loading must not leave one behind in the long-lived admin threads.
    """
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(e)

    thread = threading.Thread(target=run, name="shipyard-load")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


def _same_serving(before: ModelConfig | None, now: ModelConfig) -> bool:
    """Whether versions loaded under `before` serve as `now` says (routing is read live)."""
    return before is not None and before.model_dump(exclude={"routing"}) == now.model_dump(exclude={"routing"})


class ModelManager:
    """Loads and unloads model versions from the repository. Thread-safe; loading blocks, so the
    server calls it off the event loop."""

    def __init__(self, repository: Repository, settings: Settings) -> None:
        self.repository = repository
        self.settings = settings
        self.models: dict[str, ModelEntry] = {}
        self._lock = threading.RLock()
        self._load_locks: dict[str, threading.Lock] = {}
        self._closed = False
        # Set by the server: gives each new batcher its metrics observer.
        self.batch_observer: Callable[[str, int], Callable[[int, float, list[float]], None]] | None = None
        # Set by the server: gives each new generation engine its metrics observer.
        self.generation_observer: Callable[[str, int], Any] | None = None

    def _versions_to_load(self, name: str, config: ModelConfig) -> list[int]:
        available = self.repository.versions(name)
        if config.version_policy == "all":
            return available
        if config.version_policy == "specific":
            missing = sorted(set(config.versions) - set(available))
            if missing:
                raise NotFound(f"config of '{name}' names versions {missing}, which do not exist")
            return sorted(config.versions)
        return available[-1:]

    def load(self, name: str, reuse: bool = False) -> ModelEntry:
        """(Re)load a model's versions by its version policy, beside the versions it serves now,
        and swap them in only when every one is ready; InvalidInput names each version that
        failed and its reason. When some fail, the versions served before keep serving (a
        version that is new to the set is kept as UNAVAILABLE with its reason, for the index);
        a model that served nothing takes the new set as it is, so its ready versions serve.

        `reuse` (the repository poll) keeps the versions already ready under an unchanged config
        instead of loading them again: only what is new to the set is loaded."""
        with self._loading(name):
            return self._load(name, reuse)

    def _load(self, name: str, reuse: bool) -> ModelEntry:
        if not self.repository.versions(name):
            # Not the repository's own message: a client is not told the server's folder or the
            # names of the other models.
            raise NotFound(f"model '{name}' is not in the repository")
        config = self.repository.model_config(name)
        wanted = self._versions_to_load(name, config)
        batching = self.settings.batching_for(config)
        threads = config.threads or self.settings.threads
        old = self.models.get(name)
        kept: dict[int, LoadedVersion] = {}
        if reuse and old is not None and _same_serving(old.config, config):
            kept = {v: lv for v, lv in old.versions.items() if v in wanted and lv.state == READY}
        entry = ModelEntry(name, dict(kept), config)
        todo = [v for v in wanted if v not in kept]
        if todo:
            _in_fresh_thread(lambda: self._load_versions(entry, name, todo, config, batching, threads))
        entry.versions = dict(sorted(entry.versions.items()))
        failed = {v: lv for v, lv in entry.versions.items() if lv.state != READY}
        swap = not failed or old is None or not old.ready_versions()
        with self._lock:
            if self._closed:
                swap = False
            elif swap:
                self.models[name] = entry
            elif old is not None:
                # The old set serves on; versions new to it show their failure in the index.
                marks = {v: lv for v, lv in failed.items() if v not in old.versions}
                if marks:
                    self.models[name] = ModelEntry(name, dict(sorted({**old.versions, **marks}.items())),
                                                   old.config)
        error: ShipyardError | None = None
        if not entry.versions:
            error = InvalidInput(f"failed to load '{name}': no versions to load (version_policy "
                               f"{config.version_policy!r}, versions {config.versions})")
        elif failed:
            reasons = "; ".join(f"version {v}: {lv.reason}" for v, lv in failed.items())
            if not swap and old is not None:
                after = f"; the versions loaded before ({', '.join(map(str, old.ready_versions()))}) still serve"
            elif entry.ready_versions():
                after = f"; the others ({', '.join(map(str, entry.ready_versions()))}) serve"
            else:
                after = ""
            error = InvalidInput(f"failed to load '{name}': {reasons}{after}")
        keep = {id(lv) for lv in kept.values()}
        if swap and old is not None:
            # In-flight requests on the old set finish first: closing a batcher answers its queue.
            self._close_versions(lv for lv in old.versions.values() if id(lv) not in keep)
        elif not swap:
            self._close_versions(lv for lv in entry.versions.values() if id(lv) not in keep)
            if self._closed:
                error = Unavailable(f"the server is stopping; model '{name}' was not loaded")
        if error is not None:
            raise error
        return entry

    @contextmanager
    def _loading(self, name: str) -> Iterator[None]:
        """One load of a model at a time (an explicit load and a poll could otherwise both swap)."""
        with self._lock:
            lock = self._load_locks.setdefault(name, threading.Lock())
        with lock:
            yield

    def _load_versions(self, entry: ModelEntry, name: str, wanted: list[int], config: Any, batching: Any,
                       threads: int) -> None:
        for version in wanted:
            lv = LoadedVersion(name, version, reject_non_finite=config.reject_non_finite)
            entry.versions[version] = lv
            try:
                manifest = self.repository.manifest(name, version)
                lv.manifest = manifest
                lv.platform = manifest.format
                self.repository.verify(manifest)
                options = RuntimeOptions(threads=threads, device=self.settings.device,
                                         trust_pickle=self.settings.trust_pickle,
                                         spin=self.settings.spin)
                runtime = runtime_for(manifest, self.repository.path(name, version), options)
                runtime.load()
                lv.runtime = runtime
                lv.batcher = DynamicBatcher(runtime, batching, f"{name}:{version}")
                if getattr(runtime, "generative", False):
                    from shipyard.generate import AsyncEngine, Engine

                    engine = Engine(runtime, generation_for(self.settings, config), f"{name}:{version}")
                    observer = self.generation_observer(name, version) if self.generation_observer else None
                    lv.engine = AsyncEngine(engine, observer)
                if self.batch_observer is not None:
                    lv.batcher.observer = self.batch_observer(name, version)
                lv.state = READY
            except ShipyardError as e:
                lv.state, lv.reason = UNAVAILABLE, self._clean(e.message)
            except Exception as e:  # noqa: BLE001 - a broken model must not stop the server
                lv.state, lv.reason = UNAVAILABLE, self._clean(f"failed to load: {type(e).__name__}: {e}")
            if lv.state != READY:
                log.warning("model %s:%s is unavailable: %s", name, version, lv.reason)

    def _clean(self, reason: str) -> str:
        """A reason without the server's folder: clients read it (index, load answers)."""
        return reason.replace(f"{self.repository.root.resolve()}/", "").replace(f"{self.repository.root}/", "")

    def unload(self, name: str) -> None:
        with self._lock:
            entry = self.models.pop(name, None)
        if entry is None:
            raise NotFound(f"model '{name}' is not loaded")
        self._close(entry)

    def close(self) -> None:
        with self._lock:
            self._closed = True  # a load still running when the server stops installs nothing
            entries, self.models = list(self.models.values()), {}
        for entry in entries:
            self._close(entry)

    @classmethod
    def _close(cls, entry: ModelEntry) -> None:
        cls._close_versions(entry.versions.values())

    @staticmethod
    def _close_versions(versions: Iterable[LoadedVersion]) -> None:
        for lv in versions:
            if lv.closed:  # a failed version can be in two sets (the one it failed in, the one kept)
                continue
            lv.closed = True
            if lv.batcher is not None:
                lv.batcher.close()
            if lv.engine is not None:
                lv.engine.engine.close()
            if lv.runtime is not None:
                lv.runtime.unload()
            if lv.state != UNAVAILABLE:  # a version that failed keeps its reason (the index shows it)
                lv.state, lv.reason = UNAVAILABLE, "unloaded"

    def entry(self, name: str) -> ModelEntry:
        entry = self.models.get(name)
        if entry is None:
            if self.repository.versions(name):
                raise Unavailable(f"model '{name}' is in the repository but not loaded; load it first")
            raise NotFound(f"unknown model '{name}'")
        return entry

    def get(self, name: str, version: int | None = None) -> LoadedVersion:
        """The given version, or the highest ready one, ready to infer (Unavailable otherwise)."""
        entry = self.entry(name)
        if version is None:
            ready = entry.ready_versions()
            if not ready:
                reasons = "; ".join(f"version {v}: {lv.reason}" for v, lv in sorted(entry.versions.items()))
                raise Unavailable(f"model '{name}' has no ready version ({reasons})")
            return entry.versions[ready[-1]]
        lv = entry.versions.get(version)
        if lv is None:
            loaded = ", ".join(map(str, sorted(entry.versions))) or "none"
            raise NotFound(f"model '{name}' has no loaded version {version} (loaded: {loaded})")
        if lv.state != READY:
            raise Unavailable(f"model '{name}' version {version} is {lv.state.lower()}: {lv.reason}")
        return lv

    def describe(self, name: str, version: int | None = None) -> LoadedVersion:
        """Like `get`, but also returns versions that are not ready (for metadata and status)."""
        entry = self.entry(name)
        if version is None:
            ready = entry.ready_versions()
            return entry.versions[ready[-1] if ready else max(entry.versions)]
        if version not in entry.versions:
            return self.get(name, version)
        return entry.versions[version]

    def index(self) -> list[dict[str, str]]:
        """Every model in the repository with each version's state (the repository extension)."""
        rows = []
        names = sorted(set(self.repository.models()) | set(self.models))
        for name in names:
            entry = self.models.get(name)
            for version in self.repository.versions(name) or sorted(entry.versions if entry else []):
                lv = entry.versions.get(version) if entry else None
                rows.append({
                    "name": name,
                    "version": str(version),
                    "state": lv.state if lv else UNAVAILABLE,
                    "reason": lv.reason if lv else "not loaded",
                })
        return rows

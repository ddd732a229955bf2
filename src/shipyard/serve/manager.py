"""The model manager: which versions are loaded, their state, and the batcher in front of each."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shipyard.config import Settings, generation_for
from shipyard.errors import NotFound, ShipyardError, Unavailable
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


@dataclass
class ModelEntry:
    name: str
    versions: dict[int, LoadedVersion] = field(default_factory=dict)

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


class ModelManager:
    """Loads and unloads model versions from the repository. Thread-safe; loading blocks, so the
    server calls it off the event loop."""

    def __init__(self, repository: Repository, settings: Settings) -> None:
        self.repository = repository
        self.settings = settings
        self.models: dict[str, ModelEntry] = {}
        self._lock = threading.RLock()
        # Set by the server: gives each new batcher its metrics observer.
        self.batch_observer: Callable[[str, int], Callable[[int, float, list[float]], None]] | None = None
        # Set by the server: gives each new generation engine its metrics observer.
        self.generation_observer: Callable[[str, int], Any] | None = None

    def _versions_to_load(self, name: str) -> list[int]:
        config = self.repository.model_config(name)
        available = self.repository.versions(name)
        if config.version_policy == "all":
            return available
        if config.version_policy == "specific":
            missing = sorted(set(config.versions) - set(available))
            if missing:
                raise NotFound(f"config of '{name}' names versions {missing}, which do not exist")
            return sorted(config.versions)
        return available[-1:]

    def load(self, name: str) -> ModelEntry:
        """(Re)load a model's versions by its version policy. A version that fails to load is kept
        with state UNAVAILABLE and the reason; the others still serve."""
        if not self.repository.versions(name):
            # Not the repository's own message: a client is not told the server's folder or the
            # names of the other models.
            raise NotFound(f"model '{name}' is not in the repository")
        wanted = self._versions_to_load(name)
        config = self.repository.model_config(name)
        batching = self.settings.batching_for(config)
        threads = config.threads or self.settings.threads
        entry = ModelEntry(name)
        _in_fresh_thread(lambda: self._load_versions(entry, name, wanted, config, batching, threads))
        with self._lock:
            old = self.models.get(name)
            self.models[name] = entry
        if old is not None:
            self._close(old)
        return entry

    def _load_versions(self, entry: ModelEntry, name: str, wanted: list[int], config: Any, batching: Any,
                       threads: int) -> None:
        for version in wanted:
            lv = LoadedVersion(name, version)
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
                lv.state, lv.reason = UNAVAILABLE, e.message
            except Exception as e:  # noqa: BLE001 - a broken model must not stop the server
                lv.state, lv.reason = UNAVAILABLE, f"failed to load: {type(e).__name__}: {e}"
            if lv.state != READY:
                log.warning("model %s:%s is unavailable: %s", name, version, lv.reason)

    def unload(self, name: str) -> None:
        with self._lock:
            entry = self.models.pop(name, None)
        if entry is None:
            raise NotFound(f"model '{name}' is not loaded")
        self._close(entry)

    def close(self) -> None:
        with self._lock:
            entries, self.models = list(self.models.values()), {}
        for entry in entries:
            self._close(entry)

    @staticmethod
    def _close(entry: ModelEntry) -> None:
        for lv in entry.versions.values():
            if lv.batcher is not None:
                lv.batcher.close()
            if lv.engine is not None:
                lv.engine.engine.close()
            if lv.runtime is not None:
                lv.runtime.unload()
            lv.state = UNAVAILABLE
            lv.reason = "unloaded"

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

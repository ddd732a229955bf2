"""Model control 'poll': the server follows the repository while it runs (Triton's name).

Each look is cheap: the names in the model folders and a stat of each `config.json`, nothing
hashed or parsed. A model whose look changed is loaded again with the manager's `reuse`, so only
what is new to its set loads, beside the versions that serve, and is swapped in when every one is
ready; a version that fails leaves the served ones serving. Published versions never change in
place, so a new, removed or renamed folder is the whole of what there is to notice."""

from __future__ import annotations

import asyncio
import logging
import os

from shipyard.errors import ShipyardError
from shipyard.repository.store import CONFIG
from shipyard.serve.dataplane import DataPlane
from shipyard.serve.manager import ModelManager

log = logging.getLogger("shipyard.serve")

# What a look at one model sees: its version numbers and its config file's stat.
Look = tuple[tuple[int, ...], tuple[int, int] | None]


class RepositoryPoller:
    """Loads what appears in the repository and unloads what goes, every `interval_s`.
    `models`: only these names (the server's --models), else every model there is."""

    def __init__(self, manager: ModelManager, interval_s: float, models: list[str] | None = None) -> None:
        self.manager = manager
        self.interval_s = interval_s
        self.only = set(models) if models else None
        self.seen: dict[str, Look] = {}

    def look(self) -> dict[str, Look]:
        repo = self.manager.repository
        looks: dict[str, Look] = {}
        for name in repo.models():
            if self.only is not None and name not in self.only:
                continue
            try:
                st = os.stat(repo.root / name / CONFIG)
                config: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
            except FileNotFoundError:
                config = None
            looks[name] = (tuple(repo.versions(name)), config)
        return looks

    def start(self) -> None:
        """Remember what the server loaded at start-up: only changes after it count."""
        self.seen = self.look()

    def tick(self) -> list[str]:
        """One look, and a load or unload of each model that changed (blocking: run it off the
        event loop). Returns the names acted on."""
        now = self.look()
        changed = sorted(n for n in set(now) | set(self.seen) if now.get(n) != self.seen.get(n))
        for name in changed:
            try:
                if name not in now:
                    if name in self.manager.models:
                        self.manager.unload(name)
                        log.info("model %s left the repository: unloaded", name)
                    continue
                entry = self.manager.load(name, reuse=True)
                log.info("model %s changed in the repository: serving versions %s", name,
                         ", ".join(map(str, entry.ready_versions())) or "none")
            except ShipyardError as e:
                log.warning("model %s changed in the repository but did not load: %s", name, e.message)
            except Exception:  # noqa: BLE001 - one model's trouble must not stop the poll
                log.exception("model %s changed in the repository; loading it failed", name)
        # A model that failed is not tried again until it changes again: no retry every tick.
        self.seen = now
        return changed

    async def run(self, plane: DataPlane) -> None:
        """Poll until cancelled; each look runs in the plane's admin threads."""
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await plane.run_blocking(self.tick)
            except Exception:  # noqa: BLE001 - the repository may be briefly unreadable
                log.exception("looking at the repository failed; trying again in %ss", self.interval_s)

"""Traffic split and shadow traffic: which version answers a request that names none, and which
version, if any, gets a copy of it. Read from each model's config.json and re-read within about a
second of a change, so a canary's weights move without a restart."""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass

from shipyard.config import RoutingConfig, ShadowConfig
from shipyard.errors import ShipyardError
from shipyard.repository import Repository

log = logging.getLogger("shipyard.serve")

CHECK_EVERY_S = 1.0


@dataclass(slots=True)
class _Cached:
    checked: float
    stamp: tuple[int, int]
    routing: RoutingConfig | None


class Router:
    def __init__(self, repository: Repository) -> None:
        self.repository = repository
        self._cache: dict[str, _Cached] = {}
        self._random = random.Random()

    def routing(self, model: str) -> RoutingConfig | None:
        now = time.monotonic()
        cached = self._cache.get(model)
        if cached is not None and now - cached.checked < CHECK_EVERY_S:
            return cached.routing
        path = self.repository.root / model / "config.json"
        try:
            st = path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = (0, 0)
        if cached is not None and cached.stamp == stamp:
            cached.checked = now
            return cached.routing
        try:
            routing = self.repository.model_config(model).routing if stamp != (0, 0) else None
        except ShipyardError as e:
            # A config being edited must not stop traffic: keep the last good routing.
            log.warning("%s; keeping the previous routing of '%s'", e.message, model)
            routing = cached.routing if cached else None
        self._cache[model] = _Cached(now, stamp, routing)
        return routing

    def choose(self, model: str, ready: list[int]) -> tuple[int | None, ShadowConfig | None]:
        """(version to answer, shadow to mirror to). None: the latest ready version answers."""
        routing = self.routing(model)
        if routing is None:
            return None, None
        version = None
        choices = [(v, w) for v, w in routing.weights.items() if w > 0 and v in ready]
        if choices:
            pick = self._random.random() * sum(w for _, w in choices)
            for v, w in choices:
                version = v
                pick -= w
                if pick < 0:
                    break
        shadow = routing.shadow
        if shadow is None or shadow.version not in ready or self._random.random() >= shadow.fraction:
            shadow = None
        return version, shadow

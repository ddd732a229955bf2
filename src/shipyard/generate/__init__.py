"""The generation engine for causal LMs: continuous batching over a paged KV cache, chunked
prefill, sampling, stop conditions and token streaming (see engine.py for the loop).

The names below load on first use: the engine's modules import torch (seconds), and
`shipyard.runtimes` reads the family table in `shipyard.generate.families` whenever it is imported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shipyard.generate.async_engine import AsyncEngine, EngineClient, Observer, Stream
    from shipyard.generate.engine import Engine
    from shipyard.generate.params import ContextTooLong, Delta, Output, SamplingParams

_HOMES = {"AsyncEngine": "async_engine", "EngineClient": "async_engine", "Observer": "async_engine",
          "Stream": "async_engine", "Engine": "engine", "ContextTooLong": "params", "Delta": "params",
          "Output": "params", "SamplingParams": "params"}

__all__ = ["AsyncEngine", "ContextTooLong", "Delta", "Engine", "EngineClient", "Observer", "Output",
           "SamplingParams", "Stream"]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)

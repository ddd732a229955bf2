"""The generation engine for causal LMs: continuous batching over a paged KV cache, chunked
prefill, sampling, stop conditions and token streaming (see engine.py for the loop)."""

from shipyard.generate.async_engine import AsyncEngine, EngineClient, Observer, Stream
from shipyard.generate.engine import Engine
from shipyard.generate.params import ContextTooLong, Delta, Output, SamplingParams

__all__ = ["AsyncEngine", "ContextTooLong", "Delta", "Engine", "EngineClient", "Observer", "Output",
           "SamplingParams", "Stream"]

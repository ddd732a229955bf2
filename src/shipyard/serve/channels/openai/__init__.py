"""OpenAI-compatible completions and chat completions with SSE streaming, for causal LMs."""

from shipyard.serve.channels.openai.routes import router

__all__ = ["router"]

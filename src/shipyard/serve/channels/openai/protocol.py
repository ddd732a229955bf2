"""The OpenAI wire format: request bodies of /v1/completions and /v1/chat/completions.

Fields OpenAI defines that shipyard does not implement are accepted only at their neutral value
(an error names them otherwise, rather than silently ignoring what the client asked for). Fields
no OpenAI client sends by default pass through ignored, as other OpenAI-compatible servers do.
`top_k` and `ignore_eos` are extensions (as vLLM's), sent with the client's `extra_body`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# The probe of vLLM, TGI and SGLang, which OpenAI-style tools (GuideLLM) wait for.
HEALTH = "/health"


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=16)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    top_k: int | None = Field(None, ge=-1)
    ignore_eos: bool = False

    def unsupported(self) -> list[tuple[str, Any]]:
        """(field, value) pairs a client set that shipyard cannot honour."""
        found: list[tuple[str, Any]] = []
        if self.presence_penalty:
            found.append(("presence_penalty", self.presence_penalty))
        if self.frequency_penalty:
            found.append(("frequency_penalty", self.frequency_penalty))
        if self.logit_bias:
            found.append(("logit_bias", self.logit_bias))
        return found


class CompletionRequest(_Common):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=1)
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False
    best_of: int | None = Field(None, ge=1)
    suffix: str | None = None

    def unsupported(self) -> list[tuple[str, Any]]:
        found = super().unsupported()
        if self.echo:
            found.append(("echo", True))
        if self.suffix:
            found.append(("suffix", self.suffix))
        if self.best_of is not None and self.best_of != self.n:
            found.append(("best_of", self.best_of))
        return found


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class ChatCompletionRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = None
    response_format: dict[str, Any] | None = None

    def unsupported(self) -> list[tuple[str, Any]]:
        found = super().unsupported()
        if self.tools:
            found.append(("tools", "(tool calling)"))
        if self.response_format and self.response_format.get("type") not in (None, "text"):
            found.append(("response_format", self.response_format))
        return found

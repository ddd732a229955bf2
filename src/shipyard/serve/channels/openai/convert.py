"""OpenAI wire <-> shipyard core: sampling parameters, chat prompts, response bodies and errors."""

from __future__ import annotations

import time
import uuid
from typing import Any

from pydantic import ValidationError

from shipyard.errors import (
    InvalidInput,
    NotFound,
    RateLimited,
    ShipyardError,
    Unauthenticated,
    Unavailable,
    clipped,
    shown,
)
from shipyard.generate.params import ContextTooLong, SamplingParams, TokenLogprob
from shipyard.serve.channels.http_errors import status_of
from shipyard.serve.channels.openai.protocol import ChatCompletionRequest, ChatMessage, CompletionRequest


def sampling_params(req: CompletionRequest | ChatCompletionRequest) -> SamplingParams:
    bad = req.unsupported()
    if bad:
        name, value = bad[0]
        raise InvalidInput(f"{name}={shown(value)} is not supported by this server; leave it out", param=name)
    stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    if isinstance(req, ChatCompletionRequest):
        max_tokens = req.max_completion_tokens or req.max_tokens
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
        if req.top_logprobs and not req.logprobs:
            raise InvalidInput("top_logprobs needs logprobs=true", param="top_logprobs")
    else:
        max_tokens, logprobs = req.max_tokens, req.logprobs
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        top_k=max(0, req.top_k or 0),
        seed=req.seed,
        stop=stop,
        n=req.n,
        logprobs=logprobs,
        ignore_eos=req.ignore_eos,
    )


def chat_prompt(tokenizer: Any, messages: list[ChatMessage]) -> str:
    """The model's own chat template when it has one; otherwise a plain 'role: text' transcript
    that ends by handing the turn to the assistant."""
    turns = [{"role": m.role, "content": m.text()} for m in messages]
    if getattr(tokenizer, "chat_template", None):
        return str(tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True))
    return "".join(f"{t['role']}: {t['content']}\n" for t in turns) + "assistant:"


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def completion_logprobs(tokenizer: Any, items: list[TokenLogprob], offset: int) -> dict[str, Any]:
    """The legacy completions shape: parallel lists, top alternatives as {token: logprob}."""
    tokens, values, tops, offsets = [], [], [], []
    for it in items:
        text = tokenizer.decode([it.token_id])
        tokens.append(text)
        values.append(it.logprob)
        tops.append({tokenizer.decode([t]): lp for t, lp in it.top} if it.top else None)
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}


def chat_logprobs(tokenizer: Any, items: list[TokenLogprob]) -> dict[str, Any]:
    def entry(token_id: int, lp: float) -> dict[str, Any]:
        text = tokenizer.decode([token_id])
        return {"token": text, "logprob": lp, "bytes": list(text.encode())}

    return {"content": [{**entry(it.token_id, it.logprob),
                         "top_logprobs": [entry(t, lp) for t, lp in it.top]} for it in items]}


# -- errors -----------------------------------------------------------------------------------
def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": clipped(message), "type": type_, "param": param, "code": code}}


def from_shipyard(exc: ShipyardError, prompt_field: str = "prompt") -> tuple[int, dict[str, Any]]:
    status = status_of(exc)
    if isinstance(exc, ContextTooLong):
        return status, error_body(exc.message, "invalid_request_error", prompt_field, "context_length_exceeded")
    if isinstance(exc, NotFound):
        return status, error_body(exc.message, "invalid_request_error", "model", "model_not_found")
    if isinstance(exc, Unavailable):
        return status, error_body(exc.message, "service_unavailable_error", None, "overloaded")
    if isinstance(exc, Unauthenticated):
        return status, error_body(exc.message, "invalid_request_error", None, "invalid_api_key")
    if isinstance(exc, RateLimited):
        return status, error_body(exc.message, "rate_limit_error", None, "rate_limit_exceeded")
    if status >= 500:
        return status, error_body(exc.message, "server_error", None, None)
    param = prompt_field if exc.param == "prompt" else exc.param  # chat's prompt is its messages
    return status, error_body(exc.message, "invalid_request_error", param, None)


def error_json(message: str, status: int, exc: ShipyardError | None) -> dict[str, Any]:
    """The body of an error met outside the channel's own routes (the access gate, an unknown path)."""
    if exc is not None:
        return from_shipyard(exc)[1]
    code = {404: "unknown_url", 405: "method_not_allowed"}.get(status)
    return error_body(message, "server_error" if status >= 500 else "invalid_request_error", None, code)


def from_validation(exc: ValidationError) -> dict[str, Any]:
    """A malformed body: name the first bad field, what was wrong, and what was given."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"] if not isinstance(p, int) or len(err["loc"]) > 1)
    given = f" (got {shown(err['input'])})" if "input" in err and err["type"] != "missing" else ""
    message = f"{loc or 'body'}: {err['msg']}{given}"
    if len(exc.errors()) > 1:
        message += f" (and {len(exc.errors()) - 1} more problems)"
    return error_body(message, "invalid_request_error", loc or None, err["type"])

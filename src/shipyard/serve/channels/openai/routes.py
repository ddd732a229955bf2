"""OpenAI-compatible endpoints: GET /v1/models, POST /v1/completions, POST /v1/chat/completions.

Each endpoint decodes the body, finds the model's engine through the data plane, submits, and
answers as one JSON body or as server-sent events ending in `data: [DONE]`. Every failure is
answered in OpenAI's error shape here (not by the app's V2-shaped handlers), with its status.
A client that leaves, streaming or not, cancels its request at once, and the request counts as
cancelled; each is counted (`DataPlane.count`) under the model and the version that answered.

The body is read within `--max-request-bytes`, as on every channel. Work that grows with the
prompt (rendering a chat template, tokenizing, detokenizing a whole answer's logprobs) runs in the
data plane's work threads once it is past a small size, so one long prompt never holds the event
loop that every channel shares; a prompt sure to be longer than the context is refused by its
length before any of it is tokenized.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from fastapi import APIRouter
from pydantic import ValidationError
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from shipyard.errors import Disconnected, InvalidInput, PermissionDenied, ShipyardError, Unavailable
from shipyard.generate import EngineClient, Output, Stream
from shipyard.serve.auth import DENIED
from shipyard.serve.channels.http_util import read_body
from shipyard.serve.channels.openai import convert
from shipyard.serve.channels.openai.protocol import HEALTH, ChatCompletionRequest, CompletionRequest
from shipyard.serve.dataplane import DataPlane
from shipyard.serve.metrics import Tally

log = logging.getLogger("shipyard.serve")
router = APIRouter()
DISCONNECT_POLL_S = 0.25
# Up to this many characters of prompt are tokenized on the event loop (well under a millisecond,
# less than the hop to a thread would cost); longer prompts in the data plane's work threads.
INLINE_CHARS = 4096


def _json(body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def _error(exc: Exception, prompt_field: str = "prompt") -> Response:
    if isinstance(exc, ValidationError):
        return _json(convert.from_validation(exc), 400)
    if isinstance(exc, ShipyardError):
        status, body = convert.from_shipyard(exc, prompt_field)
        headers = {"retry-after": str(max(1, round(exc.retry_after or 1)))} if isinstance(exc, Unavailable) else None
        return _json(body, status, headers)
    log.exception("unhandled error in the OpenAI channel")
    return _json(convert.error_body(f"internal error: {type(exc).__name__}: {exc}", "server_error"), 500)


def _plane(request: Request) -> DataPlane:
    plane: DataPlane = request.app.state.dataplane
    return plane


async def _body(request: Request, tally: Tally) -> Any:
    raw = await read_body(request)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise InvalidInput(f"the request body is not valid JSON: {e}") from None
    if isinstance(body, dict) and isinstance(body.get("model"), str):
        tally.model = body["model"].partition(":")[0]  # a request refused for its values counts under its model
    return body


async def _encode(request: Request, engine: EngineClient, texts: list[str]) -> list[list[int]]:
    """Token ids of the prompts: short ones here, long ones in the work threads (a prompt sure to
    be too long for the context is refused first, here, without a thread)."""
    if sum(len(t) for t in texts) <= INLINE_CHARS:
        return engine.encode_many(texts)
    for text in texts:
        engine.check_length(text)
    return await _plane(request).offload(engine.encode_many, texts)


async def _prompts(request: Request, engine: EngineClient, prompt: Any, n: int) -> list[list[int]]:
    """The completion prompts as token ids: a string, a list of strings, token ids, or a list of
    them. Their count is checked before any is tokenized."""
    if isinstance(prompt, str):
        items: list[str | list[int]] = [prompt]
    elif prompt and all(isinstance(p, int) for p in prompt):
        items = [list(prompt)]
    else:
        items = [p if isinstance(p, str) else list(p) for p in prompt]
    if not items:
        raise InvalidInput("prompt is an empty list; give a string, a list of strings or token ids", param="prompt")
    engine.check_count(len(items), n)
    texts = [p for p in items if isinstance(p, str)]
    encoded = iter(await _encode(request, engine, texts) if texts else [])
    return [next(encoded) if isinstance(p, str) else p for p in items]


async def _merged(streams: list[Stream]) -> AsyncIterator[tuple[int, Output]]:
    """Outputs of several requests (a list of prompts) as they come, tagged by prompt index."""
    if len(streams) == 1:
        async for out in streams[0]:
            yield 0, out
        return
    queue: asyncio.Queue[tuple[int, Output | None, BaseException | None]] = asyncio.Queue()

    async def pump(i: int, s: Stream) -> None:
        try:
            async for out in s:
                await queue.put((i, out, None))
            await queue.put((i, None, None))
        except Exception as e:  # noqa: BLE001 - handed to the reader
            await queue.put((i, None, e))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        left = len(streams)
        while left:
            i, out, err = await queue.get()
            if err is not None:
                raise err
            if out is None:
                left -= 1
            else:
                yield i, out
    finally:
        for t in tasks:
            t.cancel()
        for s in streams:
            s.cancel()


async def _unless_gone(request: Request, work: Awaitable[Response], streams: list[Stream]) -> Response:
    """Run a non-streaming answer, cancelling it as soon as the client disconnects (Disconnected:
    the count says cancelled, and the 499 goes to no one)."""
    task = asyncio.ensure_future(work)
    while True:
        done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
        if done:
            return task.result()
        if await request.is_disconnected():
            task.cancel()
            for s in streams:
                s.cancel()
            raise Disconnected("the client closed the connection before the answer")


def _sse(events: AsyncIterator[dict[str, Any]], streams: list[Stream], tally: Tally) -> StreamingResponse:
    """The events as server-sent events. The request is counted when the stream ends: a success
    once every event is sent, cancelled when the client left first (the stream is cancelled at an
    await, closed at a yield, or never started: then the background task settles it)."""
    tally.defer()

    async def body() -> AsyncIterator[bytes]:
        outcome: str | BaseException = "cancelled"
        try:
            async for event in events:
                yield b"data: " + orjson.dumps(event) + b"\n\n"
            outcome = "success"
        except Exception as e:  # noqa: BLE001 - the status line is sent: report in the stream
            outcome = e
            yield b"data: " + _error(e).body + b"\n\n"
        finally:
            for s in streams:  # a client that left: free its slots now, not when it would end
                s.cancel()
            tally.settle(outcome)
        yield b"data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
                             background=BackgroundTask(tally.settle, "cancelled"))


def _engine(request: Request, tally: Tally, model: str) -> EngineClient:
    """The model's engine, once the caller's key (set by the access gate when --auth is on) may
    use it. The gate cannot check the model itself: it is named in the body, not the path. The
    tally learns the name and the version that answers."""
    tally.model = model.partition(":")[0]  # for the metrics, whatever happens next
    key = getattr(request.state, "key", None)
    if key is not None and not _plane(request).visible(key, tally.model):
        raise PermissionDenied(DENIED.format(model=model))
    tally.model, tally.version, found = _plane(request).generator(model)
    engine: EngineClient = found
    return engine


def _guarded(fn: Callable[[Request, Tally], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            # A stream counts when it ends; its tokens are the engine's statistics.
            response: Response = await _plane(request).count("openai", lambda tally: fn(request, tally))
        except Exception as e:  # noqa: BLE001 - every failure leaves in OpenAI's shape
            return _error(e, "messages" if fn is _chat else "prompt")
        return response

    endpoint.__name__ = fn.__name__
    endpoint.__doc__ = fn.__doc__
    return endpoint


@router.get(HEALTH)
async def health(request: Request) -> Response:
    """200 once the server is ready (its models loaded), 503 before, with no body, as vLLM's."""
    return Response(status_code=200 if request.app.state.ready else 503)


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    """One answer for the two protocols that share this path: OpenAI's list (`data`: the
    generative models this server can complete with) and KServe V1's (`models`: the name of every
    model ready to serve). Each client reads its own field and ignores the other."""
    plane = _plane(request)
    key = getattr(request.state, "key", None)
    rows = [{"id": name, "object": "model", "created": created, "owned_by": "shipyard",
             "max_model_len": max_len}
            for name, created, max_len in plane.generative_models() if plane.visible(key, name)]
    ready = sorted({r["name"] for r in plane.repository_index(key, ready_only=True)})
    return _json({"object": "list", "data": rows, "models": ready})


async def _completions(request: Request, tally: Tally) -> Response:
    req = CompletionRequest.model_validate(await _body(request, tally))
    engine = _engine(request, tally, req.model)
    params = convert.sampling_params(req)
    prompts = await _prompts(request, engine, req.prompt, params.n)
    streams = engine.submit_many(prompts, params)
    rid, created, n = convert.new_id("cmpl"), convert.now(), params.n
    prompt_tokens = sum(len(p) for p in prompts)
    tok = engine.tokenizer

    def choice(i: int, text: str, lps: Any, offset: int, finish: str | None) -> dict[str, Any]:
        return {"index": i, "text": text, "finish_reason": finish,
                "logprobs": convert.completion_logprobs(tok, lps, offset) if lps is not None else None}

    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        async def events() -> AsyncIterator[dict[str, Any]]:
            completion, offsets = 0, [0] * (len(prompts) * n)
            async for p, out in _merged(streams):
                completion += sum(len(d.token_ids) for d in out.deltas)
                for d in out.deltas:
                    if not (d.text or d.finish_reason or d.logprobs):
                        continue  # only held-back bytes so far: nothing to show yet
                    i = p * n + d.index
                    yield {"id": rid, "object": "text_completion", "created": created, "model": req.model,
                           "choices": [choice(i, d.text, d.logprobs, offsets[i], d.finish_reason)]}
                    offsets[i] += len(d.text)
            if include_usage:
                yield {"id": rid, "object": "text_completion", "created": created, "model": req.model,
                       "choices": [], "usage": convert.usage(prompt_tokens, completion)}

        return _sse(events(), streams, tally)

    async def whole() -> Response:
        texts = [""] * (len(prompts) * n)
        lps: list[list[Any] | None] = [[] if params.logprobs is not None else None for _ in texts]
        finish: list[str | None] = [None] * len(texts)
        completion = 0
        async for p, out in _merged(streams):
            for d in out.deltas:
                i = p * n + d.index
                texts[i] += d.text
                completion += len(d.token_ids)
                if d.logprobs is not None and lps[i] is not None:
                    lps[i].extend(d.logprobs)  # type: ignore[union-attr]
                finish[i] = d.finish_reason or finish[i]

        def choices() -> list[dict[str, Any]]:
            return [choice(i, texts[i], lps[i], 0, finish[i]) for i in range(len(texts))]

        # Logprobs detokenize every token of the answer: in the work threads.
        built = await _plane(request).offload(choices) if params.logprobs is not None else choices()
        return _json({"id": rid, "object": "text_completion", "created": created, "model": req.model,
                      "choices": built, "usage": convert.usage(prompt_tokens, completion)})

    return await _unless_gone(request, whole(), streams)


async def _chat(request: Request, tally: Tally) -> Response:
    req = ChatCompletionRequest.model_validate(await _body(request, tally))
    engine = _engine(request, tally, req.model)
    params = convert.sampling_params(req)
    if sum(len(m.text()) for m in req.messages) <= INLINE_CHARS:
        text = convert.chat_prompt(engine.tokenizer, req.messages)
    else:  # a template renders in Python, at a pace that grows with the messages
        text = await _plane(request).offload(convert.chat_prompt, engine.tokenizer, req.messages)
    prompt = (await _encode(request, engine, [text]))[0]
    streams = engine.submit_many([prompt], params)
    rid, created, tok = convert.new_id("chatcmpl"), convert.now(), engine.tokenizer

    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        def chunk(choices: list[dict[str, Any]]) -> dict[str, Any]:
            return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": req.model,
                    "choices": choices}

        async def events() -> AsyncIterator[dict[str, Any]]:
            yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                          "finish_reason": None} for i in range(params.n)])
            completion = 0
            async for _, out in _merged(streams):
                completion += sum(len(d.token_ids) for d in out.deltas)
                for d in out.deltas:
                    if not (d.text or d.finish_reason or d.logprobs):
                        continue
                    yield chunk([{"index": d.index, "delta": {"content": d.text} if d.text else {},
                                  "logprobs": convert.chat_logprobs(tok, d.logprobs) if d.logprobs is not None else None,
                                  "finish_reason": d.finish_reason}])
            if include_usage:
                yield {**chunk([]), "usage": convert.usage(len(prompt), completion)}

        return _sse(events(), streams, tally)

    async def whole() -> Response:
        texts = [""] * params.n
        lps: list[list[Any]] = [[] for _ in texts]
        finish: list[str | None] = [None] * params.n
        completion = 0
        async for _, out in _merged(streams):
            for d in out.deltas:
                texts[d.index] += d.text
                completion += len(d.token_ids)
                lps[d.index].extend(d.logprobs or [])
                finish[d.index] = d.finish_reason or finish[d.index]

        def choices() -> list[dict[str, Any]]:
            return [{"index": i, "message": {"role": "assistant", "content": texts[i]},
                     "logprobs": convert.chat_logprobs(tok, lps[i]) if params.logprobs is not None else None,
                     "finish_reason": finish[i]} for i in range(params.n)]

        built = await _plane(request).offload(choices) if params.logprobs is not None else choices()
        return _json({"id": rid, "object": "chat.completion", "created": created, "model": req.model,
                      "choices": built, "usage": convert.usage(len(prompt), completion)})

    return await _unless_gone(request, whole(), streams)


router.add_api_route("/v1/completions", _guarded(_completions), methods=["POST"], name="completions")
router.add_api_route("/v1/chat/completions", _guarded(_chat), methods=["POST"], name="chat_completions")

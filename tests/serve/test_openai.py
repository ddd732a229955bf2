"""The OpenAI channel against a real server, through the official `openai` client (sync, async,
streaming) and raw HTTP where the wire itself is the point (`data: [DONE]`, error bodies)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import torch

from shipyard.config import GenerationConfig, ModelConfig
from shipyard.repository import Repository
from shipyard.runtimes.importer import import_model
from tests import fixtures
from tests.fixtures import ServerProcess, identity_onnx

PROMPT = "def add(a, b):"


@pytest.fixture(scope="module")
def lm_server(lm_folders: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """`lm` (GPT-2), `lm-llama`, `lm-one` (one sequence slot, one queue place) and a non-LM."""
    import onnx

    base = tmp_path_factory.mktemp("openai")

    def prepare(repo: Repository) -> None:
        repo.write_model_config("lm-one", ModelConfig(generation=GenerationConfig(max_num_seqs=1, max_queue_size=1)))
        import_model(repo, identity_onnx(base / "id.onnx", onnx.TensorProto.FLOAT, ["batch", 3]), "notlm")

    models = {"lm": lm_folders["gpt2"], "lm-llama": lm_folders["llama"], "lm-one": lm_folders["gpt2-long"]}
    with fixtures.lm_server(base, models, prepare) as server:
        yield server


@pytest.fixture(scope="module")
def client(lm_server: ServerProcess) -> openai.OpenAI:
    return fixtures.openai_client(lm_server)


def reference_text(folder: Path, prompt: str, tokens: int) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                             pad_token_id=tok.eos_token_id)
    return str(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))


GREEDY: dict[str, Any] = {"temperature": 0, "max_tokens": 12, "extra_body": {"ignore_eos": True}}


def test_models_lists_only_generative_models(client: openai.OpenAI) -> None:
    ids = sorted(m.id for m in client.models.list())
    assert ids == ["lm", "lm-llama", "lm-one"]


@pytest.mark.parametrize(("model", "family"), [("lm", "gpt2"), ("lm-llama", "llama")])
def test_completion_greedy_equals_transformers(client: openai.OpenAI, lm_folders: dict[str, Path],
                                               model: str, family: str) -> None:
    r = client.completions.create(model=model, prompt=PROMPT, **GREEDY)
    assert r.object == "text_completion" and r.model == model
    assert r.choices[0].text == reference_text(lm_folders[family], PROMPT, 12)
    assert r.choices[0].finish_reason == "length"
    assert r.usage is not None and r.usage.completion_tokens == 12 and r.usage.total_tokens == r.usage.prompt_tokens + 12


def test_streaming_matches_whole_and_reports_usage(client: openai.OpenAI) -> None:
    whole = client.completions.create(model="lm", prompt=PROMPT, **GREEDY).choices[0].text
    chunks = list(client.completions.create(model="lm", prompt=PROMPT, stream=True,
                                            stream_options={"include_usage": True}, **GREEDY))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12


def test_sse_wire_ends_with_done(lm_server: ServerProcess) -> None:
    body = {"model": "lm", "prompt": PROMPT, "max_tokens": 4, "stream": True}
    with httpx.stream("POST", f"{lm_server.url}/v1/completions", json=body, timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)
    assert json.loads(lines[0][6:])["object"] == "text_completion"


def test_chat_whole_streamed_n_and_logprobs(client: openai.OpenAI) -> None:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "write a function"}]
    r = client.chat.completions.create(model="lm", messages=messages, n=2, temperature=0.9, seed=5,
                                       max_tokens=6, logprobs=True, top_logprobs=2)
    assert r.object == "chat.completion" and [c.index for c in r.choices] == [0, 1]
    assert all(c.message.role == "assistant" for c in r.choices)
    lp = r.choices[0].logprobs
    assert lp is not None and lp.content is not None and len(lp.content[0].top_logprobs) == 2
    again = client.chat.completions.create(model="lm", messages=messages, n=2, temperature=0.9, seed=5, max_tokens=6)
    assert [c.message.content for c in again.choices] == [c.message.content for c in r.choices]
    greedy = client.chat.completions.create(model="lm", messages=messages, **GREEDY)
    chunks = list(client.chat.completions.create(model="lm", messages=messages, stream=True, **GREEDY))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == greedy.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "length"


def test_a_list_of_prompts_times_n(client: openai.OpenAI) -> None:
    one = client.completions.create(model="lm", prompt=PROMPT, **GREEDY).choices[0].text
    other = client.completions.create(model="lm", prompt="import", **GREEDY).choices[0].text
    r = client.completions.create(model="lm", prompt=[PROMPT, "import"], n=2, **GREEDY)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert [c.text for c in r.choices] == [one, one, other, other]
    assert r.usage is not None and r.usage.completion_tokens == 4 * 12


def test_stop_string(client: openai.OpenAI) -> None:
    full = client.completions.create(model="lm", prompt=PROMPT, **GREEDY).choices[0].text
    stop = full[4:6]
    r = client.completions.create(model="lm", prompt=PROMPT, stop=[stop], **GREEDY)
    assert r.choices[0].finish_reason == "stop" and r.choices[0].text == full[:full.index(stop)]


def test_async_client_concurrent_requests_share_the_batch(lm_server: ServerProcess, client: openai.OpenAI) -> None:
    alone = client.completions.create(model="lm", prompt=PROMPT, **GREEDY).choices[0].text

    async def many() -> list[str]:
        aclient = openai.AsyncOpenAI(base_url=f"{lm_server.url}/v1", api_key="unused", max_retries=0)

        async def chat_stream() -> str:
            stream = await aclient.chat.completions.create(
                model="lm", messages=[{"role": "user", "content": "hi"}], stream=True,
                temperature=1.0, max_tokens=30)
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

        others = [asyncio.create_task(chat_stream()) for _ in range(3)]
        greedy = await asyncio.gather(*[aclient.completions.create(model="lm", prompt=PROMPT, **GREEDY)
                                        for _ in range(4)])
        await asyncio.gather(*others)
        await aclient.close()
        return [g.choices[0].text for g in greedy]

    assert asyncio.run(many()) == [alone] * 4


def test_client_that_leaves_frees_its_slot(lm_server: ServerProcess, client: openai.OpenAI) -> None:
    """`lm-one` has a single sequence slot. A streaming client that leaves after two events must
    give it back at once: the next request runs, and the server logs the cancellation."""
    body = {"model": "lm-one", "prompt": PROMPT, "max_tokens": 4000, "stream": True, "ignore_eos": True}
    fixtures.stream_then_leave(f"{lm_server.url}/v1/completions", body, 2)
    r2 = client.completions.create(model="lm-one", prompt="import", **GREEDY)
    assert r2.choices[0].finish_reason == "length"
    deadline = time.monotonic() + 10
    while "cancelled after" not in lm_server.output() and time.monotonic() < deadline:
        time.sleep(0.05)
    line = next(x for x in lm_server.output().splitlines() if "cancelled after" in x)
    assert int(line.split("cancelled after ")[1].split()[0]) < 4000


def test_non_streaming_client_that_leaves_is_cancelled_too(lm_server: ServerProcess, client: openai.OpenAI) -> None:
    before = lm_server.output().count("cancelled after")
    body = {"model": "lm-one", "prompt": "class", "max_tokens": 4000, "ignore_eos": True}
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{lm_server.url}/v1/completions", json=body, timeout=0.5)  # gives up, disconnects
    deadline = time.monotonic() + 10
    while lm_server.output().count("cancelled after") == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lm_server.output().count("cancelled after") == before + 1
    assert client.completions.create(model="lm-one", prompt="import", **GREEDY).choices[0].finish_reason == "length"


def test_full_queue_is_503_with_retry_after(lm_server: ServerProcess) -> None:
    long = {"model": "lm-one", "prompt": PROMPT, "max_tokens": 4000, "stream": True, "ignore_eos": True}
    with httpx.Client(base_url=lm_server.url, timeout=30) as http:
        # Response headers come back once a request is queued: the first holds the only slot,
        # the second the only queue place. On a busy machine the third request can arrive after
        # the first has already run its 4,000 tokens; then the scene is set again (at most 3 times).
        for _ in range(3):
            with http.stream("POST", "/v1/completions", json=long) as first, \
                    http.stream("POST", "/v1/completions", json=long) as second:
                assert first.status_code == second.status_code == 200
                r = http.post("/v1/completions", json={**long, "stream": False, "max_tokens": 8})
            if r.status_code != 200:
                break
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] == "1"
    err = r.json()["error"]
    assert "max_queue_size 1" in err["message"] and err["type"] == "service_unavailable_error"


BAD: list[tuple[str, dict[str, Any] | bytes, int, str, str | None, str | None]] = [
    ("/v1/completions", {"model": "nope", "prompt": "x"}, 404, "unknown model 'nope'", "model_not_found", "model"),
    ("/v1/completions", {"model": "notlm", "prompt": "x"}, 404, "not a generative one", "model_not_found", "model"),
    ("/v1/completions", {"model": "lm", "prompt": "x", "max_tokens": 500}, 400, "context is 128 tokens",
     "context_length_exceeded", "prompt"),
    ("/v1/completions", {"model": "lm", "prompt": "def " * 200}, 400, "Shorten the prompt", "context_length_exceeded", "prompt"),
    ("/v1/chat/completions", {"model": "lm", "messages": [{"role": "user", "content": "x " * 300}]}, 400,
     "context is 128 tokens", "context_length_exceeded", "messages"),
    ("/v1/completions", {"model": "lm", "prompt": "x", "temperature": 5}, 400, "temperature", None, "temperature"),
    ("/v1/completions", {"model": "lm", "prompt": "x", "top_p": 0}, 400, "top_p", None, "top_p"),
    ("/v1/completions", {"model": "lm", "prompt": "x", "n": 0}, 400, "n:", None, "n"),
    ("/v1/completions", {"model": "lm", "prompt": "x", "max_tokens": 0}, 400, "max_tokens", None, "max_tokens"),
    ("/v1/completions", {"model": "lm", "prompt": "x", "logprobs": 30}, 400, "logprobs", None, "logprobs"),
    ("/v1/completions", {"model": "lm", "prompt": "x", "stop": ["a", ""]}, 400, "stop", None, "stop"),
    ("/v1/completions", {"model": "lm", "prompt": "x", "presence_penalty": 1}, 400, "presence_penalty", None, "presence_penalty"),
    ("/v1/completions", {"model": "lm", "prompt": "x", "echo": True}, 400, "echo", None, "echo"),
    ("/v1/completions", {"model": "lm", "prompt": [100000]}, 400, "token ids must be in", None, "prompt"),
    ("/v1/completions", {"model": "lm", "prompt": []}, 400, "prompt", None, "prompt"),
    # Issue 13 D9: more prompts than the queue holds can never fit (they were 503 "retry shortly").
    ("/v1/completions", {"model": "lm", "prompt": ["x"] * 300}, 400, "queues at most 256 requests (max_queue_size)", None, "prompt"),
    ("/v1/completions", {"model": "lm", "prompt": ["x"] * 20, "n": 16}, 400, "320 completions (20 prompts x n=16)", None, "n"),
    ("/v1/completions", {"model": "lm"}, 400, "prompt: Field required", "missing", "prompt"),
    ("/v1/completions", {"prompt": "x"}, 400, "model: Field required", "missing", "model"),
    ("/v1/completions", b"{not json", 400, "not valid JSON", None, None),
    ("/v1/chat/completions", {"model": "lm", "messages": []}, 400, "messages", None, "messages"),
    ("/v1/chat/completions", {"model": "lm", "messages": [{"role": "robot", "content": "x"}]}, 400, "role", None, "messages"),
    ("/v1/chat/completions", {"model": "lm", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2},
     400, "top_logprobs needs logprobs", None, "top_logprobs"),
    ("/v1/chat/completions", {"model": "lm", "messages": [{"role": "user", "content": "x"}],
                              "tools": [{"type": "function"}]}, 400, "tools", None, "tools"),
]


@pytest.mark.parametrize(("path", "body", "status", "message", "code", "param"), BAD,
                         ids=[f"{i}-{b[2]}" for i, b in enumerate(BAD)])
def test_bad_requests_get_openai_errors(lm_server: ServerProcess, path: str, body: dict[str, Any] | bytes,
                                        status: int, message: str, code: str | None, param: str | None) -> None:
    """Each names the field at fault in `param` (issue 13: unsupported parameters name themselves)."""
    kwargs: dict[str, Any] = {"content": body, "headers": {"content-type": "application/json"}} \
        if isinstance(body, bytes) else {"json": body}
    r = httpx.post(f"{lm_server.url}{path}", timeout=30, **kwargs)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert message in err["message"]
    assert err["type"] == "invalid_request_error"
    if code is not None:
        assert err["code"] == code
    assert (err["param"] or "").split(".")[0] == (param or ""), err


def test_openai_client_raises_typed_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as nf:
        client.completions.create(model="nope", prompt="x")
    assert nf.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as br:
        client.chat.completions.create(model="lm", messages=[{"role": "user", "content": "x"}], max_tokens=1000)
    assert br.value.code == "context_length_exceeded" and br.value.param == "messages"
    assert client.completions.create(model="lm", prompt="x", max_tokens=2).choices  # still serving


def test_a_long_stop_list_is_not_echoed_whole(lm_server: ServerProcess) -> None:
    """A 100,000-entry stop list came back in a 989 KB body (issue 13 D11)."""
    r = httpx.post(f"{lm_server.url}/v1/completions", timeout=30,
                   json={"model": "lm", "prompt": "x", "stop": ["a"] * 100_000})
    assert r.status_code == 400, r.text
    assert "(100000 items)" in r.json()["error"]["message"] and len(r.content) < 1000, len(r.content)


def test_v1_models_answers_openai_and_kserve_v1_clients(lm_server: ServerProcess, client: openai.OpenAI) -> None:
    """OpenAI's list and KServe V1's share GET /v1/models: one body holds both (issue 13); the
    openai client reads `data` (the LMs), a KServe V1 client `models` (every ready model)."""
    body = httpx.get(f"{lm_server.url}/v1/models", timeout=30).json()
    assert body["object"] == "list"
    assert sorted(m["id"] for m in body["data"]) == ["lm", "lm-llama", "lm-one"]
    assert body["models"] == ["lm", "lm-llama", "lm-one", "notlm"]
    assert sorted(m.id for m in client.models.list()) == ["lm", "lm-llama", "lm-one"]


def test_unknown_v1_paths_answer_in_openai_shape(lm_server: ServerProcess, client: openai.OpenAI) -> None:
    """An OpenAI route shipyard lacks and a mistyped one reach the openai client as a typed error
    with the message (they were `{"error": "..."}`, which it shows as raw JSON)."""
    with pytest.raises(openai.NotFoundError) as e:
        client.embeddings.create(model="lm", input="x")
    assert e.value.body["message"] == "no such endpoint: POST /v1/embeddings"  # type: ignore[index]
    assert e.value.code == "unknown_url" and e.value.type == "invalid_request_error"
    with pytest.raises(openai.NotFoundError) as e:
        client.get("/completionz", cast_to=httpx.Response)
    assert e.value.body["message"] == "no such endpoint: GET /v1/completionz"  # type: ignore[index]
    r = httpx.delete(f"{lm_server.url}/v1/completions", timeout=30)
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed", r.text
    # TF Serving's paths under /v1/models/{m} keep their own shape, as V2's do.
    r = httpx.get(f"{lm_server.url}/v1/models/nope/versions/1", timeout=30)
    assert r.status_code == 404 and isinstance(r.json()["error"], str), r.text
    r = httpx.get(f"{lm_server.url}/v2/nope", timeout=30)
    assert r.status_code == 404 and isinstance(r.json()["error"], str), r.text


def test_unsupported_parameters_name_themselves_to_the_client(client: openai.OpenAI) -> None:
    for kwargs in ({"presence_penalty": 0.5}, {"frequency_penalty": 1.0}, {"logit_bias": {"1": 5}}, {"echo": True}):
        with pytest.raises(openai.BadRequestError) as e:
            client.completions.create(model="lm", prompt="x", max_tokens=1, **kwargs)  # type: ignore[call-overload]
        (name,) = kwargs
        assert e.value.param == name and "not supported by this server" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="lm", messages=[{"role": "user", "content": "x"}], max_tokens=1,
                                       response_format={"type": "json_object"})
    assert e.value.param == "response_format"

"""One large OpenAI request must not stall the server (issue 13 D1): the body limit holds on this
channel as on every other, a prompt sure to be too long for the context is refused by its length
before it is tokenized, and tokenizing a long one leaves the event loop to everyone else."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import fixtures
from tests.fixtures import ServerProcess

LIMIT = 8 << 20


@pytest.fixture(scope="module")
def lm_server(lm_folders: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """`lm` (GPT-2, context 128) and `lm-unbounded`: the same with a normalizer that may drop text
    (Strip), so no length bound is sure for it and its prompts are tokenized whole."""
    base = tmp_path_factory.mktemp("openai-limits")
    unbounded = base / "unbounded"
    shutil.copytree(lm_folders["gpt2"], unbounded)
    spec = json.loads((unbounded / "tokenizer.json").read_text())
    spec["normalizer"] = {"type": "Strip", "strip_left": False, "strip_right": True}
    (unbounded / "tokenizer.json").write_text(json.dumps(spec))
    models = {"lm": lm_folders["gpt2"], "lm-unbounded": unbounded}
    with fixtures.lm_server(base / "server", models, None, "--max-request-bytes", str(LIMIT)) as server:
        yield server


def post(server: ServerProcess, path: str, **kwargs: object) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", timeout=120, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_the_body_limit_holds_on_the_openai_channel(server: ServerProcess, path: str) -> None:
    """The V2 server of conftest (--max-request-bytes 1 MiB): the limit is checked before the
    model is looked up. A 100 MB body was read whole, parsed and tokenized."""
    body = json.dumps({"model": "lm", "prompt": "a" * (1 << 21), "messages": []}).encode()
    r = post(server, path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 413, r.text[:200]
    err = r.json()["error"]
    assert f"limit of {1 << 20} bytes" in err["message"] and "--max-request-bytes" in err["message"], err
    assert err["type"] == "invalid_request_error"

    def chunks() -> Iterator[bytes]:  # no content-length: the limit is counted as it arrives
        for i in range(0, len(body), 1 << 18):
            yield body[i : i + (1 << 18)]

    r = post(server, path, content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "--max-request-bytes" in r.json()["error"]["message"]


def test_a_prompt_longer_than_the_context_can_hold_is_refused_by_its_length(lm_server: ServerProcess) -> None:
    """4 MiB of prompt took 10 s of the event loop to tokenize before it was refused."""
    for path, body in [("/v1/completions", {"model": "lm", "max_tokens": 1, "prompt": "a" * (4 << 20)}),
                       ("/v1/completions", {"model": "lm", "max_tokens": 1, "prompt": ["x", "a" * (4 << 20)]}),
                       ("/v1/chat/completions", {"model": "lm", "max_tokens": 1,
                                                 "messages": [{"role": "user", "content": "a" * (4 << 20)}]})]:
        start = time.monotonic()
        r = post(lm_server, path, json=body)
        assert r.status_code == 400, r.text[:300]
        err = r.json()["error"]
        assert err["code"] == "context_length_exceeded" and "characters" in err["message"], err
        assert "context is 128 tokens" in err["message"] and "Shorten the prompt" in err["message"]
        assert time.monotonic() - start < 5, "refused by its length, without tokenizing it"
    ok = post(lm_server, "/v1/completions", json={"model": "lm", "prompt": "def add", "max_tokens": 2})
    assert ok.status_code == 200, ok.text


def test_tokenizing_a_long_prompt_leaves_the_event_loop_free(lm_server: ServerProcess) -> None:
    """No length bound is sure for lm-unbounded, so its 4 MiB prompt is tokenized whole (seconds):
    meanwhile the health probe, on the same event loop, must answer as quickly as ever."""
    text = "def add(a, b):\n    return a + b\n"
    body = {"model": "lm-unbounded", "max_tokens": 1, "prompt": text * ((4 << 20) // len(text))}
    done = threading.Event()
    answer: list[httpx.Response] = []

    def big() -> None:
        try:
            answer.append(post(lm_server, "/v1/completions", json=body))
        finally:
            done.set()

    with httpx.Client(base_url=lm_server.url, timeout=30) as probe:
        probe.get("/v2/health/live")
        start = time.monotonic()
        thread = threading.Thread(target=big)
        thread.start()
        slowest = 0.0
        while not done.is_set():
            t = time.monotonic()
            assert probe.get("/v2/health/live").status_code == 200
            slowest = max(slowest, time.monotonic() - t)
            time.sleep(0.02)
        took = time.monotonic() - start
        thread.join()
    r = answer[0]
    assert r.status_code == 400 and "prompt tokens" in r.json()["error"]["message"], r.text[:300]
    # Tokenizing on the loop held the probe for the whole request; off it, a probe waits at
    # most for the parsing of the body (milliseconds).
    assert slowest < max(0.25, took / 3), (slowest, took)

"""Generation metrics on /metrics: the official `openai` client talks to a real server (whole and
streamed, completions and chat), then the scrape must count exactly what the client received."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests import fixtures
from tests.fixtures import ServerProcess

GREEDY: dict[str, Any] = {"temperature": 0, "extra_body": {"ignore_eos": True}}
CHAT = [{"role": "user", "content": "write a function"}]


@pytest.fixture(scope="module")
def server(lm_folders: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server of its own, so no other test's requests are in the counts."""
    with fixtures.lm_server(tmp_path_factory.mktemp("openai-metrics"), {"lm": lm_folders["gpt2-long"]}) as server:
        yield server


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return fixtures.openai_client(server)


def scrape(server: ServerProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of model `lm`: (sample name, other labels) -> value."""
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return {(s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k not in ("model", "version")))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples if s.labels.get("model") == "lm"}


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_histograms_and_token_counters_match_what_the_client_got(server: ServerProcess,
                                                                 client: openai.OpenAI) -> None:
    usages: list[tuple[int, int, int]] = []  # (engine requests, prompt tokens, completion tokens)
    r = client.completions.create(model="lm", prompt="def add(a, b):", max_tokens=5, **GREEDY)
    two = client.completions.create(model="lm", prompt=["import", "class Foo:"], max_tokens=3, **GREEDY)
    chat = client.chat.completions.create(model="lm", messages=CHAT, max_tokens=4, **GREEDY)  # type: ignore[arg-type]
    for answer, engine_requests in ((r, 1), (two, 2), (chat, 1)):
        assert answer.usage is not None
        usages.append((engine_requests, answer.usage.prompt_tokens, answer.usage.completion_tokens))
    usage_too: dict[str, Any] = {"stream": True, "stream_options": {"include_usage": True}, **GREEDY}
    streamed = [list(client.completions.create(model="lm", prompt="for i in", max_tokens=7, **usage_too)),
                list(client.chat.completions.create(model="lm", messages=CHAT, max_tokens=6,  # type: ignore[arg-type]
                                                    **usage_too))]
    for chunks in streamed:
        u = chunks[-1].usage
        assert u is not None
        usages.append((1, u.prompt_tokens, u.completion_tokens))
    requests, prompt, completion = (sum(col) for col in zip(*usages, strict=True))
    assert (requests, completion) == (6, 5 + 6 + 4 + 7 + 6)

    m = scrape(server)
    assert value(m, "shipyard_time_to_first_token_seconds_count") == requests
    # One gap per token after the first (n=1: one token per engine step).
    assert value(m, "shipyard_inter_token_latency_seconds_count") == completion - requests
    assert value(m, "shipyard_generation_duration_seconds_count") == requests
    assert value(m, "shipyard_generation_requests_total", outcome="finished") == requests
    assert value(m, "shipyard_generation_requests_total", outcome="cancelled") == 0
    assert value(m, "shipyard_generated_tokens_total") == completion
    assert value(m, "shipyard_prompt_tokens_total") == prompt
    ttft = value(m, "shipyard_time_to_first_token_seconds_sum")
    assert 0 < ttft < value(m, "shipyard_generation_duration_seconds_sum")
    # Buckets are cumulative and the +Inf one is the count.
    assert value(m, "shipyard_time_to_first_token_seconds_bucket", le="+Inf") == requests
    assert value(m, "shipyard_inter_token_latency_seconds_bucket", le="0.001") <= \
        value(m, "shipyard_inter_token_latency_seconds_bucket", le="10.0") == completion - requests
    # Nothing runs now: the batch and queue are empty and every KV block is back.
    assert value(m, "shipyard_running_sequences") == 0 and value(m, "shipyard_waiting_requests") == 0
    assert value(m, "shipyard_kv_cache_blocks", state="used") == 0
    assert value(m, "shipyard_kv_cache_blocks", state="free") > 0
    assert value(m, "shipyard_preemptions_total") == 0  # 8 MiB is room enough for these


def test_a_client_that_leaves_is_counted_as_cancelled(server: ServerProcess) -> None:
    before = scrape(server)
    body = {"model": "lm", "prompt": "def", "max_tokens": 4000, "stream": True, "ignore_eos": True}
    fixtures.stream_then_leave(f"{server.url}/v1/completions", body, 3)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        after = scrape(server)
        if value(after, "shipyard_generation_requests_total", outcome="cancelled") > 0:
            break
        time.sleep(0.05)
    assert value(after, "shipyard_generation_requests_total", outcome="cancelled") == 1
    assert value(after, "shipyard_time_to_first_token_seconds_count") == \
        value(before, "shipyard_time_to_first_token_seconds_count") + 1
    generated = value(after, "shipyard_generated_tokens_total") - value(before, "shipyard_generated_tokens_total")
    assert 2 <= generated < 4000  # what was streamed before it left, not the 4,000 it asked for
    # Only finished requests have an end-to-end time.
    assert value(after, "shipyard_generation_duration_seconds_count") == \
        value(before, "shipyard_generation_duration_seconds_count")


def openai_requests(server: ServerProcess) -> dict[tuple[str, str], float]:
    """shipyard_requests_total of the openai channel for model `lm`: (version, outcome) -> count."""
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return {(s.labels["version"], s.labels["outcome"]): s.value for f in text_string_to_metric_families(text)
            for s in f.samples if s.name == "shipyard_requests_total" and s.labels["channel"] == "openai"
            and s.labels["model"] == "lm"}


def grown(before: dict[tuple[str, str], float], after: dict[tuple[str, str], float]) -> dict[tuple[str, str], float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}


def wait_for(condition: Any, what: str) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, f"{what} not seen within 30 s"
        time.sleep(0.02)


def test_requests_total_counts_what_each_openai_request_became(server: ServerProcess, client: openai.OpenAI) -> None:
    """A streaming client that hung up was counted `success` (the generation counter said
    `cancelled`), a 400 for `temperature: -1` was an `error`, and every row said version=""
    where the generation metrics say "1" (issue 13 metrics conventions)."""
    before = openai_requests(server)
    client.completions.create(model="lm", prompt="def add(a, b):", max_tokens=3, **GREEDY)
    assert len(list(client.chat.completions.create(model="lm", messages=CHAT, max_tokens=3,  # type: ignore[arg-type]
                                                   stream=True, **GREEDY))) > 1
    assert grown(before, openai_requests(server)) == {("1", "success"): 2}
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="lm", prompt="def", max_tokens=2, temperature=-1)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="lm", messages=CHAT, max_tokens=2, n=0)  # type: ignore[arg-type]
    assert grown(before, openai_requests(server)) == {("1", "success"): 2, ("", "invalid"): 2}
    # A streaming client that hangs up after three chunks of 4,000 tokens.
    stream = client.completions.create(model="lm", prompt="for i in", max_tokens=4000, stream=True, **GREEDY)
    for i, _ in enumerate(stream):
        if i == 2:
            break
    stream.close()
    wait_for(lambda: openai_requests(server).get(("1", "cancelled"), 0) > before.get(("1", "cancelled"), 0),
             "the stream's cancellation")
    assert grown(before, openai_requests(server)) == {("1", "success"): 2, ("", "invalid"): 2, ("1", "cancelled"): 1}


def test_a_client_that_leaves_before_a_whole_answer_is_counted_as_cancelled(server: ServerProcess) -> None:
    import socket

    before = openai_requests(server)
    body = b'{"model": "lm", "prompt": "import", "max_tokens": 4000, "ignore_eos": true}'
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        wait_for(lambda: value(scrape(server), "shipyard_running_sequences") == 1, "the generation")
    wait_for(lambda: grown(before, openai_requests(server)), "the count")
    assert grown(before, openai_requests(server)) == {("1", "cancelled"): 1}
    wait_for(lambda: value(scrape(server), "shipyard_running_sequences") == 0, "its slot freed")
    assert "Traceback" not in server.output()

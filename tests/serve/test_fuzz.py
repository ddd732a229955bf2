"""A bounded fuzz of every route (issue 13): generated bad paths, methods, headers and bodies
against one real server holding a classifier and a causal LM. Whatever a client sends, the
answer is a 4xx (or a 2xx), never a 5xx, never a hang, and the server keeps serving.

The routes come from the server's own OpenAPI document, so a route added later is fuzzed too.
The example budget is fixed and the examples are derandomized: the test takes the same path
every run and stays within a few seconds of server time."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import grpc
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shipyard.protocol.v2 import GRPC_SERVICE
from shipyard.repository import Repository
from tests.fixtures import ServerProcess, lm_server

MODELS = ("digits", "lm")
# Keep-alive, no retries: every example is one request, answered or timed out.
TIMEOUT = httpx.Timeout(20.0)
FUZZ = settings(max_examples=250, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def fuzzed(lm_folders: dict[str, Path], digits_repo: Repository,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, list[tuple[str, str]]]]:
    def add_digits(repo: Repository) -> None:
        shutil.copytree(digits_repo.root / "digits", repo.root / "digits")

    base = tmp_path_factory.mktemp("fuzz")
    with lm_server(base, {"lm": lm_folders["gpt2"]}, add_digits, "--max-request-bytes", str(1 << 20)) as server:
        document = httpx.get(f"{server.url}/openapi.json", timeout=10).json()
        routes = sorted((method.upper(), path) for path, ops in document["paths"].items() for method in ops)
        yield server, routes
        # After the fuzz: alive, and both models still answer a good request.
        assert httpx.get(f"{server.url}/v2/health/ready", timeout=5).status_code == 200
        good = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": [0.0] * 64}]}
        assert httpx.post(f"{server.url}/v2/models/digits/infer", json=good, timeout=10).status_code == 200
        done = httpx.post(f"{server.url}/v1/completions", timeout=30,
                          json={"model": "lm", "prompt": "def", "max_tokens": 2})
        assert done.status_code == 200, done.text


# -- what a path segment, a header and a body can be -------------------------------------------
segment = st.one_of(
    st.sampled_from([*MODELS, "", "0", "1", "2", "-1", "99999999999999999999", "%00", "%D9%A1", "..", "%2F",
                     "a" * 5000, "stats", "digits:classify", "lm%20"]),
    st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40).map(
        lambda s: quote(s, safe=":@!$&'()*+,;=-._~") or "x"),
)
json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=30,
)
V2_FIELDS = ("inputs", "outputs", "parameters", "id", "name", "datatype", "shape", "data")
OPENAI_FIELDS = ("model", "prompt", "messages", "max_tokens", "n", "stop", "temperature", "top_p", "stream",
                 "logprobs", "seed", "echo", "best_of", "stream_options", "max_completion_tokens")
GOOD_V2 = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": [0.5] * 64}]}
GOOD_OPENAI = {"model": "lm", "prompt": "def f", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@st.composite
def mutated(draw: st.DrawFn, good: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    """A good body with some fields replaced, removed or added (one level down too)."""
    body = json.loads(json.dumps(good))
    for _ in range(draw(st.integers(1, 3))):
        field = draw(st.sampled_from(fields))
        target = body["inputs"][0] if "inputs" in body and field in ("name", "datatype", "shape", "data") \
            and isinstance(body.get("inputs"), list) and body["inputs"] and isinstance(body["inputs"][0], dict) \
            else body
        if draw(st.booleans()):
            target.pop(field, None)
        else:
            target[field] = draw(json_value)
    return body


@st.composite
def request(draw: st.DrawFn, routes: list[tuple[str, str]]) -> tuple[str, str, dict[str, str], bytes]:
    method, template = draw(st.sampled_from(routes))
    if draw(st.integers(0, 9)) == 0:
        method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]))
    path = re.sub(r"\{[^}]+\}", lambda _: draw(segment), template)
    if draw(st.integers(0, 14)) == 0:
        path += "/" + draw(segment)
    headers: dict[str, str] = {}
    kind = draw(st.sampled_from(["v2", "openai", "json", "bytes", "empty", "binary-v2"]))
    if kind == "v2":
        body = json.dumps(draw(mutated(GOOD_V2, V2_FIELDS))).encode()
    elif kind == "openai":
        body = json.dumps(draw(mutated(GOOD_OPENAI, OPENAI_FIELDS))).encode()
    elif kind == "json":
        body = json.dumps(draw(json_value)).encode()
    elif kind == "bytes":
        body = draw(st.binary(max_size=300))
    elif kind == "binary-v2":
        header = json.dumps(draw(mutated({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 1, 8, 8],
                                                     "parameters": {"binary_data_size": 256}}]}, V2_FIELDS))).encode()
        body = header + draw(st.binary(max_size=300))
        headers["Inference-Header-Content-Length"] = draw(st.sampled_from(
            [str(len(header)), "0", "-1", "abc", str(len(body) + 1), "99999999999999999999999"]))
        headers["Content-Type"] = "application/octet-stream"
    else:
        body = b""
    if draw(st.integers(0, 5)) == 0:
        headers["Content-Type"] = draw(st.sampled_from(["text/plain", "application/json; charset=latin-1",
                                                        "multipart/form-data", "\x7f", ""]))
    if draw(st.integers(0, 7)) == 0:
        headers["Content-Encoding"] = draw(st.sampled_from(["gzip", "deflate", "br", "identity", "x"]))
    return method, path, headers, body


def test_no_route_answers_5xx_or_hangs(fuzzed: tuple[ServerProcess, list[tuple[str, str]]]) -> None:
    server, routes = fuzzed
    assert len(routes) >= 15, routes  # the document lists the routes (else this fuzzes nothing)
    seen: dict[int, int] = {}

    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        @FUZZ
        @given(request(routes))
        def one(req: tuple[str, str, dict[str, str], bytes]) -> None:
            method, path, headers, body = req
            try:
                answer = client.request(method, path, headers=headers, content=body or None)
            except httpx.TimeoutException:  # pragma: no cover - a hang is the failure
                raise AssertionError(f"{method} {path} {headers} hung") from None
            except httpx.RemoteProtocolError:  # a path httpx could send but the server refused to parse
                return
            seen[answer.status_code] = seen.get(answer.status_code, 0) + 1
            assert answer.status_code < 500, f"{method} {path} {headers} {body[:200]!r} -> " \
                                             f"{answer.status_code} {answer.text[:300]}"

        one()
    assert any(400 <= code < 500 for code in seen), seen  # the fuzz reached the checks
    assert httpx.get(f"{server.url}/v2/health/live", timeout=5).status_code == 200


METHODS = ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer",
           "ModelConfig", "ModelStatistics", "RepositoryIndex")
# Codes that say the client was wrong; UNKNOWN and INTERNAL say the server was.
CLIENT_CODES = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.UNIMPLEMENTED,
                grpc.StatusCode.RESOURCE_EXHAUSTED}


def test_grpc_garbage_is_invalid_argument(fuzzed: tuple[ServerProcess, list[tuple[str, str]]]) -> None:
    server, _ = fuzzed
    with grpc.insecure_channel(server.grpc_url) as channel:
        calls = {m: channel.unary_unary(f"/{GRPC_SERVICE}/{m}") for m in METHODS}
        codes: dict[str, int] = {}

        @FUZZ
        @given(st.sampled_from(METHODS), st.binary(max_size=400))
        def one(method: str, payload: bytes) -> None:
            try:
                calls[method](payload, timeout=20)
                code = grpc.StatusCode.OK
            except grpc.RpcError as e:
                code = e.code()
                assert code != grpc.StatusCode.DEADLINE_EXCEEDED, f"{method} {payload!r} hung"
            codes[code.name] = codes.get(code.name, 0) + 1
            assert code in CLIENT_CODES, f"{method} {payload[:100]!r} -> {code}"

        one()
    assert "INVALID_ARGUMENT" in codes, codes

"""API keys and rate limits across HTTP and gRPC, and /metrics behind a key: one real server
started with `--auth`, keys made and revoked with the real `shipyard keys` command while it runs."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from shipyard.repository import Repository
from tests.fixtures import SHIPYARD, ServerProcess, digits_test

PIXELS = digits_test()[0][:2]
V2_BODY = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [2, 1, 8, 8], "data": PIXELS.ravel().tolist()}]}


def make_key(file: Path, *args: str) -> str:
    out = subprocess.run([*SHIPYARD, "keys", "create", "--file", str(file), *args],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    file = tmp_path_factory.mktemp("keys") / "keys.yaml"
    return {
        "file": str(file),
        "all": make_key(file, "--name", "admin"),
        "digits": make_key(file, "--models", "digits", "--name", "digits-only"),
        "grpc": make_key(file, "--channels", "grpc_v2", "--name", "grpc-only"),
        "slow": make_key(file, "--models", "digits", "--rate", "0.5", "--burst", "2", "--name", "limited"),
        "ops": make_key(file, "--admin", "--name", "ops"),
        "ops-digits": make_key(file, "--admin", "--models", "digits", "--name", "ops-digits"),
    }


@pytest.fixture(scope="module")
def server(serve_repo: Repository, keys: dict[str, str]) -> Iterator[ServerProcess]:
    proc = ServerProcess(serve_repo.root, "--auth", keys["file"])
    yield proc
    assert proc.stop() == 0, proc.output()


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def infer_v2(server: ServerProcess, key: str | None, model: str = "digits") -> httpx.Response:
    return httpx.post(f"{server.url}/v2/models/{model}/infer", json=V2_BODY,
                      headers=auth(key) if key else {}, timeout=30)


def grpc_infer(server: ServerProcess, key: str | None, model: str = "digits") -> np.ndarray:
    c = tgrpc.InferenceServerClient(server.grpc_url)
    x = tgrpc.InferInput("pixels", [2, 1, 8, 8], "FP32")
    x.set_data_from_numpy(PIXELS)
    headers = {"authorization": f"Bearer {key}"} if key else None
    out: np.ndarray = c.infer(model, [x], headers=headers).as_numpy("logits")
    return out


def grpc_code(fn: object, *args: object) -> str:
    with pytest.raises(InferenceServerException) as e:
        fn(*args)  # type: ignore[operator]
    return str(e.value.status())


def test_http_needs_a_key_but_health_is_open(server: ServerProcess, keys: dict[str, str]) -> None:
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
    assert httpx.get(f"{server.url}/health").status_code == 200  # vLLM's probe
    assert httpx.get(f"{server.url}/").json() == {"status": "alive"}  # KServe V1's
    assert httpx.get(f"{server.url}/v2/models/digits/config", timeout=10).status_code == 401
    r = infer_v2(server, None)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer" and "API key" in r.json()["error"]
    assert infer_v2(server, "sy_notarealkeyatall").status_code == 401
    assert infer_v2(server, keys["all"][:-1] + "x").status_code == 401  # one character off
    assert infer_v2(server, keys["digits"]).status_code == 200
    assert httpx.get(f"{server.url}/v2/models/digits", timeout=10).status_code == 401
    assert httpx.get(f"{server.url}/v2/models/digits", headers=auth(keys["all"]), timeout=10).status_code == 200
    assert httpx.get(f"{server.url}/openapi.json", timeout=10).status_code == 401


def test_forbidden_never_reveals_whether_a_model_exists(server: ServerProcess, keys: dict[str, str]) -> None:
    there, absent = infer_v2(server, keys["digits"], "two"), infer_v2(server, keys["digits"], "no_such_model")
    assert there.status_code == absent.status_code == 403
    assert there.json()["error"].replace("two", "X") == absent.json()["error"].replace("no_such_model", "X")
    r = httpx.post(f"{server.url}/v1/models/two:predict", json={"instances": [[1.0] * 4]},
                   headers=auth(keys["digits"]), timeout=10)
    assert r.status_code == 403
    index = httpx.post(f"{server.url}/v2/repository/index", headers=auth(keys["digits"]), timeout=10).json()
    assert {row["name"] for row in index} == {"digits"}  # a listing shows only the key's models
    assert infer_v2(server, keys["all"], "no_such_model").status_code == 404


def test_grpc_keys(server: ServerProcess, keys: dict[str, str]) -> None:
    c = tgrpc.InferenceServerClient(server.grpc_url)
    assert c.is_server_live() and c.is_server_ready()  # health needs no key
    with grpc.insecure_channel(server.grpc_url) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert grpc_code(grpc_infer, server, None) == "StatusCode.UNAUTHENTICATED"
    assert grpc_code(grpc_infer, server, keys["digits"], "two") == "StatusCode.PERMISSION_DENIED"
    assert grpc_code(grpc_infer, server, keys["digits"], "nope") == "StatusCode.PERMISSION_DENIED"
    assert grpc_infer(server, keys["digits"]).shape == (2, 10)
    assert grpc_infer(server, keys["grpc"]).shape == (2, 10)
    # The grpc-only key is refused on HTTP, for inference and for metrics.
    assert infer_v2(server, keys["grpc"]).status_code == 403
    meta = c.get_model_metadata("digits", headers=auth(keys["all"]))
    assert meta.name == "digits"
    assert grpc_code(c.get_model_metadata, "digits") == "StatusCode.UNAUTHENTICATED"


def test_grpc_stream_checks_each_request(server: ServerProcess, keys: dict[str, str]) -> None:
    import queue

    c = tgrpc.InferenceServerClient(server.grpc_url)
    answers: queue.Queue[tuple[object, object]] = queue.Queue()
    c.start_stream(callback=lambda result, error: answers.put((result, error)), headers=auth(keys["digits"]))
    try:
        for model in ("digits", "two", "digits"):
            x = tgrpc.InferInput("pixels", [2, 1, 8, 8], "FP32")
            x.set_data_from_numpy(PIXELS)
            c.async_stream_infer(model, [x])
        got = [answers.get(timeout=30) for _ in range(3)]
    finally:
        c.stop_stream()
    assert [e is None for _, e in got] == [True, False, True]
    assert "may not use model 'two'" in str(got[1][1])


def test_rate_limit_holds_across_channels(server: ServerProcess, keys: dict[str, str]) -> None:
    key = keys["slow"]  # 0.5 request/s, burst 2
    assert infer_v2(server, key).status_code == 200
    assert grpc_infer(server, key).shape == (2, 10)
    r = infer_v2(server, key)
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1 and "rate limit" in r.json()["error"]
    assert grpc_code(grpc_infer, server, key) == "StatusCode.RESOURCE_EXHAUSTED"
    assert infer_v2(server, keys["digits"]).status_code == 200  # other keys are not affected
    time.sleep(2.2)  # one token back
    assert infer_v2(server, key).status_code == 200


def test_keys_are_created_and_revoked_without_restart(server: ServerProcess, keys: dict[str, str]) -> None:
    file = Path(keys["file"])
    new = make_key(file, "--models", "digits", "--name", "rotated")
    assert "sy_" in new and new not in file.read_text()  # only the hash is stored
    deadline = time.monotonic() + 10
    while infer_v2(server, new).status_code != 200:
        assert time.monotonic() < deadline, "new key not accepted within 10 s"
        time.sleep(0.3)
    listed = subprocess.run([*SHIPYARD, "keys", "list", "--file", str(file), "--json"],
                            capture_output=True, text=True, check=True).stdout
    assert "rotated" in listed and "hash" not in listed
    subprocess.run([*SHIPYARD, "keys", "revoke", "rotated", "--file", str(file)], check=True, capture_output=True)
    deadline = time.monotonic() + 10
    while infer_v2(server, new).status_code != 401:
        assert time.monotonic() < deadline, "revoked key still accepted after 10 s"
        time.sleep(0.3)
    assert infer_v2(server, keys["digits"]).status_code == 200  # the others are untouched


def test_metrics_need_a_key_and_count_every_channel(server: ServerProcess, keys: dict[str, str]) -> None:
    assert httpx.get(f"{server.url}/metrics", timeout=10).status_code == 401
    assert httpx.get(f"{server.url}/metrics", headers=auth(keys["grpc"]), timeout=10).status_code == 403
    infer_v2(server, keys["all"])
    grpc_infer(server, keys["all"])
    httpx.post(f"{server.url}/v1/models/digits:predict", json={"instances": PIXELS.tolist()},
               headers=auth(keys["all"]), timeout=10)
    bad = dict(V2_BODY, inputs=[dict(V2_BODY["inputs"][0], shape=[1, 65])])  # type: ignore[arg-type]
    httpx.post(f"{server.url}/v2/models/digits/infer", json=bad, headers=auth(keys["all"]), timeout=10)
    r = httpx.get(f"{server.url}/metrics", headers=auth(keys["all"]), timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    requests = {(s.labels["model"], s.labels["channel"], s.labels["outcome"]): s.value
                for s in families["shipyard_requests"].samples if s.name == "shipyard_requests_total"}
    for channel in ("rest_v2", "grpc_v2", "rest_v1"):
        assert requests[("digits", channel, "success")] >= 1
    assert requests[("digits", "rest_v2", "invalid")] >= 1
    assert requests[("digits", "rest_v2", "unauthenticated")] >= 1
    assert requests[("_other", "rest_v2", "forbidden")] >= 1  # unknown names do not become labels
    assert requests[("digits", "rest_v2", "rate_limited")] >= 1
    assert requests[("_other", "metrics", "unauthenticated")] >= 1
    for name in ("shipyard_request_duration_seconds", "shipyard_queue_duration_seconds",
                 "shipyard_inference_duration_seconds", "shipyard_batch_size"):
        counts = [s.value for s in families[name].samples if s.name.endswith("_count") and s.labels["model"] == "digits"]
        assert counts and sum(counts) > 0, name
    state = {(s.labels["model"], s.labels["version"], s.labels["state"]) for s in families["shipyard_model_state"].samples}
    assert ("digits", "2", "READY") in state and ("broken", "1", "UNAVAILABLE") in state
    assert any(s.labels["model"] == "digits" for s in families["shipyard_queue_depth"].samples)
    assert families["process_resident_memory_bytes"].samples[0].value > 10e6


def test_concurrent_grpc_calls_never_share_a_key(server: ServerProcess, keys: dict[str, str]) -> None:
    """Keys travel per call: with calls with and without a key interleaved at once, every keyed
    call succeeds and every unkeyed one is refused (no key leaks from one call to another)."""
    import queue
    from functools import partial

    c = tgrpc.InferenceServerClient(server.grpc_url)
    results: queue.Queue[tuple[int, object, object]] = queue.Queue()
    for i in range(60):
        x = tgrpc.InferInput("pixels", [2, 1, 8, 8], "FP32")
        x.set_data_from_numpy(PIXELS)
        c.async_infer("digits", [x], headers=auth(keys["all"]) if i % 2 == 0 else None,
                      callback=partial(lambda i, result, error: results.put((i, result, error)), i))
    got = sorted((results.get(timeout=60) for _ in range(60)), key=lambda t: t[0])
    for i, result, error in got:
        if i % 2 == 0:
            assert error is None and result is not None, (i, error)
        else:
            assert error is not None and "UNAUTHENTICATED" in str(error.status()), (i, error)  # type: ignore[union-attr]


def refusal(fn: object, *args: object, **kwargs: object) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as e:
        fn(*args, **kwargs)  # type: ignore[operator]
    return e.value


def test_repository_control_needs_the_admin_scope(server: ServerProcess, keys: dict[str, str]) -> None:
    """A key made with `--models digits` could unload digits, and every client then got 503
    (issue 13 D4): loading and unloading now need a key made with --admin, over REST and gRPC."""
    rest, rpc = thttp.InferenceServerClient(server.url[len("http://"):]), tgrpc.InferenceServerClient(server.grpc_url)
    for key in (keys["digits"], keys["all"]):
        for client, forbidden in ((rest, "403"), (rpc, "StatusCode.PERMISSION_DENIED")):
            for action in (client.unload_model, client.load_model):
                e = refusal(action, "digits", headers=auth(key))
                assert str(e.status()) == forbidden, e
                assert "admin scope" in e.message() and "shipyard keys create --admin" in e.message(), e
    assert infer_v2(server, keys["digits"]).status_code == 200  # still loaded: nothing was unloaded
    # The index stays open to every key (its models only).
    assert {m["name"] for m in rest.get_model_repository_index(headers=auth(keys["digits"]))} == {"digits"}
    # An admin key may, over either transport; an admin key of some models, for those models only.
    e = refusal(rest.unload_model, "two", headers=auth(keys["ops-digits"]))
    assert str(e.status()) == "403" and "may not use model 'two'" in e.message()
    for unload, load in ((rest.unload_model, rpc.load_model), (rpc.unload_model, rest.load_model)):
        unload("two", headers=auth(keys["ops"]))
        assert not rest.is_model_ready("two", headers=auth(keys["ops"]))
        load("two", headers=auth(keys["ops"]))
        assert rest.is_model_ready("two", headers=auth(keys["ops"]))
    rpc.load_model("digits", headers=auth(keys["ops-digits"]))
    assert infer_v2(server, keys["digits"]).status_code == 200


def test_metrics_show_a_key_only_its_models(server: ServerProcess, keys: dict[str, str]) -> None:
    """A digits-only key read every model's lines, 205 of them for code-lm (issue 13 D7)."""
    two = {"inputs": [{"name": n, "datatype": "FP32", "shape": [1, 4], "data": [1.0] * 4} for n in ("a", "b")]}
    assert httpx.post(f"{server.url}/v2/models/two/infer", json=two, headers=auth(keys["all"]),
                      timeout=30).status_code == 200
    assert infer_v2(server, keys["digits"]).status_code == 200

    def models(key: str) -> tuple[set[str], set[str]]:
        """The model labels a key reads, and the names of the samples without one."""
        r = httpx.get(f"{server.url}/metrics", headers=auth(key), timeout=10)
        assert r.status_code == 200, r.text
        samples = [s for f in text_string_to_metric_families(r.text) for s in f.samples]
        return {s.labels["model"] for s in samples if "model" in s.labels}, \
            {s.name for s in samples if "model" not in s.labels}

    everything, process = models(keys["all"])
    assert {"digits", "two", "slow", "broken"} <= everything and "process_resident_memory_bytes" in process
    assert models(keys["digits"]) == ({"digits"}, process)  # process-wide lines stay
    assert models(keys["slow"])[0] == {"digits"}
    assert models(keys["ops-digits"])[0] == everything  # the admin scope reads it all

"""Every bad input a client can send gets a clear error with the right status, and the server
keeps serving everyone else."""

from __future__ import annotations

import threading
import time

import httpx
import numpy as np
import pytest
import tritonclient.http as http
from tritonclient.utils import InferenceServerException

from shipyard.repository import Repository
from tests.fixtures import ServerProcess

PIXELS = {"name": "pixels", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": [0.5] * 64}


def still_serving(server: ServerProcess) -> None:
    r = httpx.post(f"{server.url}/v2/models/digits/infer", json={"inputs": [PIXELS]})
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["shape"] == [1, 10]


def post(server: ServerProcess, path: str, **kwargs: object) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", timeout=30, **kwargs)  # type: ignore[arg-type]


def inputs(**changes: object) -> dict[str, object]:
    return {"inputs": [{**PIXELS, **changes}]}


CASES = [
    # (id, path, request kwargs, status, words the message must contain)
    ("unknown model", "/v2/models/nope/infer", {"json": inputs()}, 404, ["unknown model 'nope'"]),
    ("unknown version", "/v2/models/digits/versions/9/infer", {"json": inputs()}, 404, ["no loaded version 9", "1, 2"]),
    ("bad version", "/v2/models/digits/versions/x/infer", {"json": inputs()}, 400, ["'x'", "positive integer"]),
    # Issue 13 D10: digits other than ASCII ones are not versions ('١' and '²' pass str.isdigit()).
    ("arabic-indic version", "/v2/models/digits/versions/%D9%A1/infer", {"json": inputs()}, 400, ["positive integer"]),
    ("superscript version", "/v2/models/digits/versions/%C2%B2/infer", {"json": inputs()}, 400, ["positive integer"]),
    ("5,000-digit version", "/v2/models/digits/versions/" + "9" * 5000 + "/infer", {"json": inputs()}, 400, ["positive integer"]),
    ("wrong datatype", "/v2/models/digits/infer", {"json": inputs(datatype="FP64")}, 400, ["FP64", "expects FP32"]),
    # Issue 13 D6: the client's mistakes, which were 500s.
    ("null byte in the name", "/v2/models/digits%00/infer", {"json": inputs()}, 400, ["model name 'digits\\x00' is not allowed"]),
    ("newline in the name", "/v2/models/digits%0A/infer", {"json": inputs()}, 400, ["is not allowed"]),
    ("shape past numpy", "/v2/models/digits/infer", {"json": inputs(shape=[0, 4611686018427387904], data=[])}, 400,
     ["shape [0, 4611686018427387904]", "2**60"]),
    ("unknown datatype", "/v2/models/digits/infer", {"json": inputs(datatype="FLOAT")}, 400, ["unknown datatype 'FLOAT'"]),
    ("wrong shape", "/v2/models/digits/infer", {"json": inputs(shape=[1, 64])}, 400, ["shape [1, 64]", "[-1, 1, 8, 8]"]),
    ("data length", "/v2/models/digits/infer", {"json": inputs(data=[0.5] * 63)}, 400, ["63 elements", "needs 64"]),
    ("strings for floats", "/v2/models/digits/infer", {"json": inputs(data=["a"] * 64)}, 400, ["string", "FP32"]),
    ("ragged data", "/v2/models/digits/infer", {"json": inputs(data=[[0.5] * 63, [0.5]])}, 400, ["not a regular array"]),
    ("missing input", "/v2/models/two/infer", {"json": {"inputs": [{"name": "a", "datatype": "FP32", "shape": [1, 4], "data": [1] * 4}]}}, 400, ["missing input 'b'"]),
    ("unexpected input", "/v2/models/digits/infer", {"json": {"inputs": [PIXELS, {**PIXELS, "name": "extra"}]}}, 400, ["unexpected input 'extra'", "pixels"]),
    ("duplicate input", "/v2/models/digits/infer", {"json": {"inputs": [PIXELS, PIXELS]}}, 400, ["more than once"]),
    ("batch mismatch", "/v2/models/two/infer", {"json": {"inputs": [{"name": "a", "datatype": "FP32", "shape": [1, 4], "data": [1] * 4}, {"name": "b", "datatype": "FP32", "shape": [2, 4], "data": [1] * 8}]}}, 400, ["batch size"]),
    ("unknown output", "/v2/models/digits/infer", {"json": {**inputs(), "outputs": [{"name": "probs"}]}}, 400, ["unknown output 'probs'", "logits"]),
    ("no inputs", "/v2/models/digits/infer", {"json": {"inputs": []}}, 400, ["no 'inputs'"]),
    ("malformed json", "/v2/models/digits/infer", {"content": b'{"inputs": [', "headers": {"content-type": "application/json"}}, 400, ["not valid JSON"]),
    ("json not an object", "/v2/models/digits/infer", {"json": [1, 2]}, 400, ["must be a JSON object"]),
    ("negative shape", "/v2/models/digits/infer", {"json": inputs(shape=[-1, 1, 8, 8])}, 400, ["non-negative integers"]),
    ("header length not a number", "/v2/models/digits/infer", {"content": b"{}", "headers": {"Inference-Header-Content-Length": "abc"}}, 400, ["Inference-Header-Content-Length", "'abc'"]),
    ("header longer than body", "/v2/models/digits/infer", {"content": b"{}", "headers": {"Inference-Header-Content-Length": "99"}}, 400, ["99", "only 2 bytes"]),
    ("binary size beyond body", "/v2/models/digits/infer", {"content": b'{"inputs":[{"name":"pixels","datatype":"FP32","shape":[1,1,8,8],"parameters":{"binary_data_size":256}}]}' + b"\0" * 100, "headers": {"Inference-Header-Content-Length": "104"}}, 400, ["256 binary bytes", "100 remain"]),
    ("binary size wrong for shape", "/v2/models/digits/infer", {"content": b'{"inputs":[{"name":"pixels","datatype":"FP32","shape":[1,1,8,8],"parameters":{"binary_data_size":100}}]}' + b"\0" * 100, "headers": {"Inference-Header-Content-Length": "104"}}, 400, ["100 bytes", "needs 256"]),
    ("leftover binary bytes", "/v2/models/digits/infer", {"content": b'{"inputs":[{"name":"pixels","datatype":"FP32","shape":[1,1,8,8],"parameters":{"binary_data_size":256}}]}' + b"\0" * 260, "headers": {"Inference-Header-Content-Length": "104"}}, 400, ["4 binary bytes", "belong to none"]),
    ("raw body not whole rows", "/v2/models/digits/infer", {"content": b"\0" * 100, "headers": {"Inference-Header-Content-Length": "0"}}, 400, ["100 bytes", "256 bytes"]),
    ("raw body on two-input model", "/v2/models/two/infer", {"content": b"\0" * 32, "headers": {"Inference-Header-Content-Length": "0"}}, 400, ["exactly one input"]),
    ("body too large", "/v2/models/digits/infer", {"content": b"x" * (1 << 20 + 1)}, 413, ["over the limit", "--max-request-bytes"]),
    ("failed model", "/v2/models/broken/infer", {"json": inputs()}, 503, ["no ready version", "checksum"]),
    ("unknown route", "/v2/nothing", {}, 404, ["no such endpoint"]),
    ("load unknown model", "/v2/repository/models/nope/load", {}, 404, ["'nope'"]),
    ("unload unknown model", "/v2/repository/models/nope/unload", {}, 404, ["'nope'"]),
    ("load failing model", "/v2/repository/models/broken/load", {}, 400, ["failed to load 'broken'", "checksum"]),
]


@pytest.mark.parametrize(("path", "kwargs", "status", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_request(server: ServerProcess, path: str, kwargs: dict[str, object], status: int, words: list[str]) -> None:
    r = post(server, path, **kwargs)
    assert r.status_code == status, r.text
    message = r.json()["error"]
    for w in words:
        assert w in message, message
    still_serving(server)


def test_wrong_method_is_405(server: ServerProcess) -> None:
    r = httpx.get(f"{server.url}/v2/models/digits/infer")
    assert r.status_code == 405 and "not allowed" in r.json()["error"]


def test_failed_model_status_says_why(server: ServerProcess) -> None:
    r = httpx.get(f"{server.url}/v2/models/broken")
    assert r.status_code == 200
    assert r.json()["state"] == "UNAVAILABLE" and "checksum" in r.json()["reason"]
    assert httpx.get(f"{server.url}/v2/models/broken/ready").status_code == 503
    assert httpx.get(f"{server.url}/v2/models/nope/ready").status_code == 404


def test_tritonclient_sees_the_message(server: ServerProcess) -> None:
    client = http.InferenceServerClient(f"127.0.0.1:{server.port}")
    x = http.InferInput("pixels", [1, 64], "FP32")
    x.set_data_from_numpy(np.zeros((1, 64), np.float32))
    with pytest.raises(InferenceServerException, match=r"shape \[1, 64\]; the model expects \[-1, 1, 8, 8\]"):
        client.infer("digits", [x])


def test_out_of_range_integers_are_refused(server: ServerProcess) -> None:
    body = {"inputs": [{"name": "x", "datatype": "UINT8", "shape": [1, 3], "data": [1, 2, 300]}]}
    r = post(server, "/v2/models/id_uint8/infer", json=body)
    assert r.status_code == 400 and "do not fit UINT8" in r.json()["error"]
    body = {"inputs": [{"name": "x", "datatype": "INT32", "shape": [1, 3], "data": [1.5, 2, 3]}]}
    r = post(server, "/v2/models/id_int32/infer", json=body)
    assert r.status_code == 400 and "floating-point" in r.json()["error"]


def slow_request(rows: int) -> tuple[bytes, dict[str, str]]:
    """A binary V2 request for the slow model: cheap to send and parse, seconds to compute."""
    import orjson

    data = np.zeros((rows, 512), dtype=np.float32).tobytes()
    head = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [rows, 512],
                                     "parameters": {"binary_data_size": len(data)}}]})
    return head + data, {"Inference-Header-Content-Length": str(len(head))}


def wait_for(condition: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def queue_state(server: ServerProcess) -> dict[str, int]:
    stats = httpx.get(f"{server.url}/v2/models/slow/stats").json()["model_stats"][0]
    return {"queued": stats["queue_depth"], "running": stats["executing"]}


def test_full_queue_answers_503_with_retry_after(fresh_repo: Repository) -> None:
    """One slow request runs, one waits in the queue (size 1): the next is refused at once."""
    server = ServerProcess(fresh_repo.root, "--models", "slow,digits", "--max-queue-size", "1", "--max-batch-size", "1")
    try:
        big, big_headers = slow_request(8000)
        small, small_headers = slow_request(1)
        statuses: list[int] = []

        def send(body: bytes, headers: dict[str, str]) -> None:
            statuses.append(post(server, "/v2/models/slow/infer", content=body, headers=headers).status_code)

        runner = threading.Thread(target=send, args=(big, big_headers))
        runner.start()
        wait_for(lambda: queue_state(server) == {"queued": 0, "running": 1})
        waiter = threading.Thread(target=send, args=(small, small_headers))
        waiter.start()
        wait_for(lambda: queue_state(server) == {"queued": 1, "running": 1})
        t = time.monotonic()
        r = post(server, "/v2/models/slow/infer", content=small, headers=small_headers)
        assert time.monotonic() - t < 0.5, "a full queue must refuse at once, not wait"
        assert r.status_code == 503, r.text
        assert "queue is full" in r.json()["error"] and r.headers["retry-after"] == "1"
        # Shed before the body is parsed (so shedding costs the loop next to nothing): a body that
        # is not even JSON gets the same 503.
        r = post(server, "/v2/models/slow/infer", content=b"{not json", headers={"Content-Type": "application/json"})
        assert r.status_code == 503 and "queue is full" in r.json()["error"], r.text
        still_serving(server)  # other models are not affected
        runner.join()
        waiter.join()
        assert statuses == [200, 200]
    finally:
        assert server.stop() == 0, server.output()


def test_sigterm_finishes_in_flight_requests_and_exits_0(fresh_repo: Repository) -> None:
    server = ServerProcess(fresh_repo.root, "--models", "slow")
    body, headers = slow_request(4000)
    result: list[httpx.Response] = []
    t = threading.Thread(target=lambda: result.append(post(server, "/v2/models/slow/infer", content=body, headers=headers)))
    t.start()
    wait_for(lambda: queue_state(server)["running"] == 1)
    assert server.stop() == 0, server.output()
    t.join()
    assert result and result[0].status_code == 200, result
    assert result[0].json()["outputs"][0]["shape"] == [4000, 512]
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/v2/health/live")


def test_messages_cut_what_the_client_sent_and_say_its_length(server: ServerProcess) -> None:
    """A 100,000-character value came back whole in the message (issue 13 D11)."""
    r = post(server, "/v2/models/digits/infer", json=inputs(datatype="F" * 100_000))
    assert r.status_code == 400 and "unknown datatype 'FFFF" in r.json()["error"]
    assert "(100000 characters)" in r.json()["error"] and len(r.content) < 1000, len(r.content)
    r = post(server, "/v2/models/digits/infer", json={"inputs": [{**PIXELS, "name": "x" * 100_000}]})
    assert r.status_code == 400 and "(100000 characters)" in r.json()["error"] and len(r.content) < 2000
    r = post(server, "/v1/models/two:predict", json={"instances": [{str(i): 1 for i in range(50_000)}]})
    assert r.status_code == 400 and "(50000 items)" in r.json()["error"] and len(r.content) < 1000, r.text[:300]
    still_serving(server)


def test_loading_an_unknown_model_names_neither_the_folder_nor_the_others(server: ServerProcess,
                                                                          serve_repo: Repository) -> None:
    """The 404 said 'model 'nope' is not in repository /srv/... (models: broken, digits, ...)' (issue 13 D15)."""
    r = post(server, "/v2/repository/models/nope/load")
    assert r.status_code == 404 and r.json()["error"] == "model 'nope' is not in the repository"
    assert str(serve_repo.root) not in r.text and "digits" not in r.text


def requests_total(server: ServerProcess, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "shipyard_requests_total" and labels.items() <= s.labels.items())


def upload_then_leave(server: ServerProcess, path: str) -> None:
    """Declare a 1,000,000-byte body, send 1,000 bytes of it, and hang up."""
    import socket

    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  "Content-Length: 1000000\r\n\r\n".encode() + b"[" * 1000)


@pytest.mark.parametrize(("path", "channel"), [("/v2/models/digits/infer", "rest_v2"),
                                               ("/v1/models/digits:predict", "rest_v1"),
                                               ("/v2/models/digits/versions/2/infer", "rest_v2")])
def test_a_client_that_leaves_mid_upload_is_counted_as_cancelled_not_logged_as_an_error(
        server: ServerProcess, path: str, channel: str) -> None:
    """Each aborted upload logged an ERROR with a whole traceback (210 of them for 210 uploads),
    and was not counted (issue 13 D8)."""
    labels = {"model": "digits", "channel": channel, "outcome": "cancelled"}
    before, logged = requests_total(server, **labels), len(server.output())
    for _ in range(3):
        upload_then_leave(server, path)
    wait_for(lambda: requests_total(server, **labels) == before + 3)
    still_serving(server)
    new = server.output()[logged:]
    assert "ERROR" not in new and "Traceback" not in new, new
    assert new.count("INFO") <= 3, new  # at most one line each
    assert requests_total(server, **labels) == before + 3
    upload_then_leave(server, "/v2/repository/models/digits/load")  # not an inference: logged the same way
    still_serving(server)
    wait_for(lambda: server.output().count("INFO", logged) > new.count("INFO"), timeout=10)
    new = server.output()[logged:]
    assert "ERROR" not in new and "Traceback" not in new, new

"""Connections that never finish a request are closed (issue 13 D3): real servers on free ports,
raw sockets playing the slow and silent clients, httpx and grpcio for everyone else.

Each wait below is a bound on how long the server may take (30 s against timeouts of 1 s), never
a measure of how fast it was: a server that does close its connections passes however loaded the
machine is, and one that keeps them open fails."""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from shipyard.config import Settings
from shipyard.protocol import messages_pb2 as pb
from shipyard.protocol import service_pb2_grpc
from tests.fixtures import ServerProcess

BOUND = 30.0  # seconds a server may take to close what it must close (its timeouts here: 1 s)


def empty_repo(base: Path) -> Path:
    root = base / "repo"
    root.mkdir()
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Timeouts of 1 s and a minimum body rate of 10 bytes/s, set through the environment."""
    env = {"SHIPYARD_HEADER_TIMEOUT_S": "1", "SHIPYARD_BODY_TIMEOUT_S": "1",
           "SHIPYARD_KEEP_ALIVE_TIMEOUT_S": "1", "SHIPYARD_GRPC_MAX_CONNECTION_IDLE_S": "1",
           "SHIPYARD_MIN_BODY_RATE_BYTES_S": "10"}
    proc = ServerProcess(empty_repo(tmp_path_factory.mktemp("conn")), env=env)
    yield proc
    assert proc.stop() == 0, proc.output()


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """At most 4 connections a port, set with `shipyard serve` options; long keep-alive, so that
    held connections stay held."""
    proc = ServerProcess(empty_repo(tmp_path_factory.mktemp("capped")), "--max-connections", "4",
                         "--keep-alive-timeout-s", "120", "--header-timeout-s", "120")
    yield proc
    assert proc.stop() == 0, proc.output()


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=BOUND)


def until_closed(sock: socket.socket, what: str) -> bytes:
    """All the server sends until it closes the connection; the test fails if it is still open
    after BOUND seconds."""
    data = b""
    sock.settimeout(BOUND)
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"the server kept {what} open for {BOUND:.0f} s; it sent {data[:200]!r}")
    return data


def dribble(sock: socket.socket, piece: bytes, what: str) -> bytes:
    """Send `piece` every 0.2 s, as a slow client does, until the server answers or closes."""
    deadline = time.monotonic() + BOUND
    while time.monotonic() < deadline:
        try:
            sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            return b""
        if select.select([sock], [], [], 0.2)[0]:
            return until_closed(sock, what)
    pytest.fail(f"the server kept {what} open for {BOUND:.0f} s")


def is_open(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except ConnectionResetError:
        return False
    finally:
        sock.settimeout(BOUND)


def live(url: str) -> int:
    return httpx.get(f"{url}/v2/health/live", timeout=BOUND).status_code


def get(sock: socket.socket, path: str = "/v2/health/live") -> bytes:
    """One keep-alive GET on a raw connection, and its whole answer (its body is short)."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    sock.settimeout(BOUND)
    data = b""
    while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


# -- HTTP ------------------------------------------------------------------------------------
def test_silent_connections_are_closed_and_the_server_answers_meanwhile(server: ServerProcess) -> None:
    silent = [connect(server.port) for _ in range(20)]
    assert live(server.url) == 200
    for sock in silent:
        assert until_closed(sock, "a connection that sent nothing") == b""
        sock.close()


def test_partial_headers_get_408_however_slowly_they_trickle(server: ServerProcess) -> None:
    with connect(server.port) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")
        answer = dribble(sock, b"X-Slow: 1\r\n", "a request whose headers never end")
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b"header_timeout_s" in answer and b"connection: close" in answer.lower()
    assert live(server.url) == 200


def test_a_stalled_body_gets_408(server: ServerProcess) -> None:
    with connect(server.port) as sock:
        sock.sendall(b"POST /v2/repository/index HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"ready\": ")
        assert live(server.url) == 200  # the server answers others while this body is late
        answer = until_closed(sock, "a request whose body stopped")
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b"body_timeout_s" in answer and b"10 of 1000 bytes" in answer


def test_a_slow_body_is_served_while_it_keeps_coming(server: ServerProcess) -> None:
    """The body timeout is the longest gap between its pieces, not a deadline for the whole body:
    a body that takes longer than the timeout, never pauses that long and keeps above the minimum
    rate (20 bytes/s against 10) is served."""
    body = b'{"ready": false}' + b" " * 24
    with connect(server.port) as sock:
        sock.sendall(b"POST /v2/repository/index HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body))
        for i in range(0, len(body), 4):  # 10 pieces 0.2 s apart: 2 s in all, against 1 s allowed
            sock.sendall(body[i:i + 4])
            time.sleep(0.2)
        answer = until_closed(sock, "a keep-alive connection after its answer")
    assert answer.startswith(b"HTTP/1.1 200 "), answer


def test_a_trickling_body_gets_408_though_it_never_pauses(server: ServerProcess) -> None:
    """A byte every 0.2 s never pauses as long as the body timeout, but at 5 bytes/s a 1,000-byte
    body would hold the connection for over 3 minutes: under the minimum rate it is answered 408."""
    with connect(server.port) as sock:
        sock.sendall(b"POST /v2/repository/index HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n")
        answer = dribble(sock, b" ", "a body that trickles in")
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b"min_body_rate_bytes_s" in answer and b"too slowly" in answer
    assert live(server.url) == 200


def test_headers_over_the_limit_get_431(server: ServerProcess) -> None:
    limit = Settings().max_header_bytes
    with connect(server.port) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")
        sock.sendall(b"X-Big: " + b"a" * (limit + 1024) + b"\r\n")
        answer = until_closed(sock, "a request with oversized headers")
    assert answer.startswith(b"HTTP/1.1 431 "), answer
    assert b"max_header_bytes" in answer
    with connect(server.port) as sock:  # headers just under the limit are fine
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (limit - 200) + b"\r\n\r\n")
        assert until_closed(sock, "a keep-alive connection after its answer").startswith(b"HTTP/1.1 200 ")


def test_idle_keep_alive_connections_are_closed(server: ServerProcess) -> None:
    """After an answer the connection is kept for the next request (two on one connection here),
    then closed once idle; a stray line break after an answer does not keep it open either."""
    with connect(server.port) as idle, connect(server.port) as stray:
        for _ in range(2):
            assert get(idle).startswith(b"HTTP/1.1 200 ")
        assert get(stray).startswith(b"HTTP/1.1 200 ")
        stray.sendall(b"\r\n")
        assert until_closed(idle, "an idle keep-alive connection") == b""
        assert until_closed(stray, "a keep-alive connection that sent a line break") == b""


def test_connections_past_the_cap_get_503_until_one_closes(capped: ServerProcess) -> None:
    held = [connect(capped.port) for _ in range(4)]
    try:
        for sock in held:
            assert get(sock).startswith(b"HTTP/1.1 200 ")
        refused = httpx.get(f"{capped.url}/v2/health/live", timeout=BOUND)
        assert refused.status_code == 503, refused.text
        assert "max_connections" in refused.json()["error"] and refused.headers["retry-after"] == "1"
        assert all(is_open(sock) for sock in held)  # the cap refused the newcomer, kept the others
        held.pop().close()
        deadline = time.monotonic() + BOUND
        while live(capped.url) != 200:  # the server sees the close a moment later
            assert time.monotonic() < deadline, "a freed connection slot was never reused"
            time.sleep(0.05)
    finally:
        for sock in held:
            sock.close()


# -- gRPC ------------------------------------------------------------------------------------
def test_grpc_silent_connection_is_closed(server: ServerProcess) -> None:
    with connect(server.grpc_port) as sock:  # never sends the HTTP/2 preface
        until_closed(sock, "a gRPC connection that sent nothing")
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=BOUND).live


def watch(channel: grpc.Channel) -> tuple[list[grpc.ChannelConnectivity], threading.Event]:
    """The channel's connectivity states as they change, and an event set when it leaves READY."""
    states: list[grpc.ChannelConnectivity] = []
    left = threading.Event()

    def on_change(state: grpc.ChannelConnectivity) -> None:
        states.append(state)
        if states[:-1] and grpc.ChannelConnectivity.READY in states and state != grpc.ChannelConnectivity.READY:
            left.set()

    channel.subscribe(on_change, try_to_connect=False)
    return states, left


def test_grpc_idle_connection_is_closed_and_reopens_on_the_next_call(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.grpc_url, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        states, left = watch(channel)
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=BOUND).live
        assert left.wait(BOUND), f"an idle gRPC connection was kept open for {BOUND:.0f} s: {states}"
        assert states[-1] == grpc.ChannelConnectivity.IDLE, states  # a GOAWAY, not a failure
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=BOUND).live  # the client reconnects


def test_grpc_connections_past_the_cap_are_refused(capped: ServerProcess) -> None:
    options = [("grpc.use_local_subchannel_pool", 1)]  # one connection per channel
    channels = [grpc.insecure_channel(capped.grpc_url, options=options) for _ in range(4)]
    try:
        for channel in channels:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            assert stub.ServerLive(pb.ServerLiveRequest(), timeout=BOUND).live
        with grpc.insecure_channel(capped.grpc_url, options=options) as extra:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(extra)
            with pytest.raises(grpc.RpcError) as e:
                stub.ServerLive(pb.ServerLiveRequest(), timeout=5)
            assert e.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        channels.pop().close()
        deadline = time.monotonic() + BOUND
        while True:
            with grpc.insecure_channel(capped.grpc_url, options=options) as again:
                try:
                    stub = service_pb2_grpc.GRPCInferenceServiceStub(again)
                    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=5).live
                    break
                except grpc.RpcError:
                    assert time.monotonic() < deadline, "a freed gRPC connection slot was never reused"
    finally:
        for channel in channels:
            channel.close()

"""The HTTP server under the app: uvicorn, with the limits on slow and idle clients it lacks.

uvicorn closes a connection that idles after an answer (`timeout_keep_alive`), and nothing else: a
connection that sends nothing, headers that never end or a body that stops halfway are held for
ever, each with a file descriptor and the parser's buffers. `protocol_class` adds to uvicorn's
httptools protocol, per connection:

- a head deadline (`header_timeout_s`), from connecting and from the first byte of each later
  request to the end of its headers: a partial request is answered 408, a silent connection closed;
- a body gap (`body_timeout_s`), the longest pause between two pieces of a body, and a body rate
  (`min_body_rate_bytes_s`), the slowest average from `body_timeout_s` after the body began, so a
  byte every second cannot hold a connection for hours (neither counted while the app is not
  reading, nor while the client waits for `100 Continue`): 408 if no answer began;
- a limit on the request line and headers (`max_header_bytes`; httptools has none): 431;
- a cap on open connections (`max_connections`), checked as each one is accepted: past it the
  newcomer is answered 503 with Retry-After and closed.

A request the app is working on has no deadline here: a long generation is the app's business.
An answer made here is written, the connection half-closed, and what the client still sends is read
and dropped for a moment before closing ("lingering close"), so that the client reads the answer
rather than a reset.
"""

from __future__ import annotations

import asyncio
import logging
import math
import resource
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http import HTTPStatus
from typing import Any

import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from shipyard.config import Settings
from shipyard.errors import HeadersTooLarge, RequestTimeout, ShipyardError, Unavailable, clipped
from shipyard.protocol.status import http_status

log = logging.getLogger("shipyard.serve")

LINGER_S = 2.0  # how long a connection answered here reads and drops what still comes
REFUSALS_LOGGED_EVERY_S = 10.0


def answer(exc: ShipyardError) -> bytes:
    """A whole HTTP/1.1 response for an error of the connection layer, in the app's JSON form."""
    body = orjson.dumps({"error": clipped(exc.message)})
    status = http_status(exc)
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", "content-type: application/json",
             f"content-length: {len(body)}", "connection: close"]
    retry = getattr(exc, "retry_after", None)
    if retry is not None:
        lines.append(f"retry-after: {max(1, math.ceil(retry))}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class LimitedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the deadlines and caps above; `protocol_class` makes the
    subclass that carries the settings (uvicorn builds a protocol from the config alone)."""

    settings: Settings
    last_refusal_logged = 0.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_started = False  # a request line has begun (a silent connection is only closed)
        self._head_bytes = 0
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_seen = 0.0
        self._body_bytes = 0
        self._rate_since = 0.0  # the rate is measured from here (reset while the app is not reading)
        self._rate_bytes = 0
        self._body_expected: int | None = None
        self._lingering = False

    # -- accept ---------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        limit = self.settings.max_connections
        if len(self.connections) >= limit:
            self.transport = transport
            self._log_refusal(limit)
            self._linger(Unavailable(
                f"the server has {len(self.connections)} connections open, its limit (max_connections "
                f"{limit}); retry shortly, or raise --max-connections (SHIPYARD_MAX_CONNECTIONS)", retry_after=1))
            return
        super().connection_made(transport)
        self._arm_head()

    def _log_refusal(self, limit: int) -> None:
        now = time.monotonic()
        if now - LimitedProtocol.last_refusal_logged >= REFUSALS_LOGGED_EVERY_S:
            LimitedProtocol.last_refusal_logged = now
            log.warning("HTTP connections refused: %d open, the limit (max_connections)", limit)

    # -- reading ----------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return
        if self._head_timer is None and self._body_timer is None:
            self._arm_head()  # bytes between requests: the next head's deadline starts now
        if self._head_timer is not None:
            self._head_bytes += len(data)
        super().data_received(data)
        limit = self.settings.max_header_bytes
        if self._head_timer is not None and self._head_bytes > limit and not self.transport.is_closing():
            self._linger(HeadersTooLarge(
                f"the request line and headers passed {limit} bytes ({self._head_bytes} received, no end "
                f"yet), the limit (max_header_bytes); send smaller headers"))

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_started = True
        if self._head_timer is None:
            self._arm_head()

    def on_headers_complete(self) -> None:
        self._cancel_head()
        self._head_started, self._head_bytes = False, 0
        super().on_headers_complete()
        length = dict(self.headers).get(b"content-length")
        self._body_expected = int(length) if length is not None and length.isdigit() else None
        self._body_bytes = self._rate_bytes = 0
        self._body_seen = self._rate_since = self.loop.time()
        self._body_timer = self.loop.call_later(self.settings.body_timeout_s, self._body_expired)

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        self._body_bytes += len(body)
        self._body_seen = self.loop.time()

    def on_message_complete(self) -> None:
        self._cancel_body()
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head()
        self._cancel_body()
        super().connection_lost(exc)

    # -- deadlines --------------------------------------------------------------------------------
    def _arm_head(self) -> None:
        self._cancel_head()
        self._head_timer = self.loop.call_later(self.settings.header_timeout_s, self._head_expired)

    def _cancel_head(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _cancel_body(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _head_expired(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self._arm_head()  # a request before this one is still being answered: it comes first
            return
        if not self._head_started:
            self.transport.close()
            return
        timeout = self.settings.header_timeout_s
        self._linger(RequestTimeout(
            f"the request's headers did not arrive within {timeout:g} s ({self._head_bytes} bytes came, "
            f"no end of headers), the limit (header_timeout_s); send the whole request head at once"))

    def _body_expired(self) -> None:
        self._body_timer = None
        if self.transport.is_closing():
            return
        now, timeout, cycle = self.loop.time(), self.settings.body_timeout_s, self.cycle
        if self.flow.read_paused or (cycle is not None and cycle.waiting_for_100_continue):
            # the app is not reading yet: the client cannot be late
            self._body_seen = self._rate_since = now
            self._rate_bytes = self._body_bytes
        left = self._body_seen + timeout - now
        too_slow = self._too_slow(now)
        if left > 0 and too_slow is None:
            # Past the grace, the rate is checked each second; before it, at the gap's deadline.
            rate_check = self._rate_since + timeout - now
            self._body_timer = self.loop.call_later(min(left, max(rate_check, 1.0)), self._body_expired)
            return
        if cycle is None or cycle.response_started:
            self.transport.close()  # an answer began: nothing else can be said on this connection
            return
        of = f" of {self._body_expected}" if self._body_expected is not None else ""
        # The app sees the client gone (its read ends, its answer is dropped); the client gets 408.
        cycle.disconnected = True
        cycle.message_event.set()
        if too_slow is not None and left > 0:  # still coming, too slowly (a stalled body says so below)
            self._linger(RequestTimeout(
                f"the request body came too slowly: {self._body_bytes}{of} bytes, {too_slow:.0f} bytes/s over "
                f"{now - self._rate_since:.0f} s, under the limit of {self.settings.min_body_rate_bytes_s:g} "
                f"bytes/s (min_body_rate_bytes_s); send the body at full speed"))
            return
        self._linger(RequestTimeout(
            f"the request body stopped: {self._body_bytes}{of} bytes arrived, then nothing for {timeout:g} s, "
            f"the limit (body_timeout_s); send the body without pauses"))

    def _too_slow(self, now: float) -> float | None:
        """The body's rate in bytes/s when, past the grace of body_timeout_s, it is under the minimum."""
        minimum, elapsed = self.settings.min_body_rate_bytes_s, now - self._rate_since
        if minimum <= 0 or elapsed < self.settings.body_timeout_s:
            return None
        rate = (self._body_bytes - self._rate_bytes) / elapsed
        return rate if rate < minimum else None

    def _linger(self, exc: ShipyardError) -> None:
        """Answer `exc` and close once the client has read it: half-close now, drop what it still
        sends, close when it closes or after LINGER_S."""
        self._cancel_head()
        self._cancel_body()
        self._lingering = True
        self.transport.write(answer(exc))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        if self.flow is not None:
            self.flow.resume_reading()
        self.loop.call_later(LINGER_S, self.transport.close)


def protocol_class(settings: Settings) -> type[LimitedProtocol]:
    """The protocol uvicorn builds for each connection, carrying `settings`' limits."""
    return type("ShipyardHttpProtocol", (LimitedProtocol,), {"settings": settings})


class Server(uvicorn.Server):
    """uvicorn's server, except that a SIGTERM/SIGINT that ends a graceful shutdown is not raised
    again afterwards: the process then exits 0, as a supervisor expects from a clean stop."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        sigs = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in sigs}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def config(app: Any, settings: Settings, log_level: str = "warning") -> uvicorn.Config:
    """uvicorn's config for the app, with shipyard's connection limits."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=30,
        server_header=False,
        http=protocol_class(settings),
        timeout_keep_alive=settings.keep_alive_timeout_s,  # type: ignore[arg-type]  # a float works
    )


def ensure_open_files(settings: Settings) -> None:
    """Raise this process's open-files limit (up to the hard limit) to what max_connections on
    both ports needs, and say so when it cannot be."""
    need = 2 * settings.max_connections + 256  # HTTP, gRPC, and the models' and logs' own files
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return
    target = need if hard == resource.RLIM_INFINITY else min(hard, need)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < need:
        log.warning("the open-files limit is %d, under the %d that max_connections %d needs on two ports: "
                    "raise `ulimit -n`, or lower --max-connections", target, need, settings.max_connections)


def build(app: Any, settings: Settings, log_level: str = "warning") -> Server:
    ensure_open_files(settings)
    return Server(config(app, settings, log_level))

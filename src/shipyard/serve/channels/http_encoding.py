"""HTTP content codings on every HTTP channel: compressed request bodies (`Content-Encoding: gzip`
or `deflate`, as tritonclient's `request_compression_algorithm` sends them) are decoded within the
body limit, and whole answers are compressed for a client whose `Accept-Encoding` asks for it
(tritonclient's `response_compression_algorithm`)."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Mapping
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shipyard.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType, shown

ACCEPTED = ("gzip", "deflate", "identity")
# zlib's window bits for each coding; deflate's is chosen by the body's first two bytes.
GZIP_WBITS = 16 + zlib.MAX_WBITS
ZLIB_WBITS = zlib.MAX_WBITS
RAW_WBITS = -zlib.MAX_WBITS
# Output is taken from the decompressor at most this much at a time, so a small body that
# expands without bound (a zip bomb) is stopped at the limit, never held whole.
PIECE = 1 << 20


def _deflate_wbits(body: bytes) -> int:
    """`Content-Encoding: deflate` is RFC 1950's zlib stream, but some clients send the raw
    RFC 1951 stream: a zlib header is CMF (method 8) and FLG, their 16 bits a multiple of 31."""
    if len(body) >= 2 and body[0] & 0x0F == 8 and (body[0] << 8 | body[1]) % 31 == 0:
        return ZLIB_WBITS
    return RAW_WBITS


def decode_body(headers: Mapping[str, str], body: bytes, limit: int) -> bytes:
    """The body with its `Content-Encoding` undone, refused with 413 once the decoded bytes pass
    `limit`, 415 for a coding this server does not decode, 400 for a corrupt stream."""
    coding = headers.get("content-encoding")
    if coding is None:
        return body
    coding = coding.strip().lower()
    if coding in ("", "identity"):
        return body
    if coding in ("gzip", "x-gzip"):
        wbits = GZIP_WBITS
    elif coding == "deflate":
        wbits = _deflate_wbits(body)
    else:
        raise UnsupportedMediaType(f"Content-Encoding {shown(coding)} is not supported; send the body "
                                   f"as one of {', '.join(ACCEPTED)}")
    pieces: list[bytes] = []
    size = 0
    data = body
    decompressor = zlib.decompressobj(wbits)
    try:
        while True:
            piece = decompressor.decompress(data, min(PIECE, limit + 1 - size))
            size += len(piece)
            if size > limit:
                raise PayloadTooLarge(f"request body decompresses to more than the limit of {limit} bytes "
                                      f"(--max-request-bytes; {len(body)} bytes as sent, {coding})")
            pieces.append(piece)
            data = decompressor.unconsumed_tail
            if decompressor.eof:
                data = decompressor.unused_data
                if wbits != GZIP_WBITS or not data:
                    break
                decompressor = zlib.decompressobj(wbits)  # gzip allows several members in a row
            elif not piece and not data:
                raise InvalidInput(f"request body ends inside its {coding} stream (truncated?)")
    except zlib.error as e:
        raise InvalidInput(f"request body is not valid {coding} data ({e}); send it as Content-Encoding "
                           "says, or leave the header out") from None
    return b"".join(pieces)


# -- answers ---------------------------------------------------------------------------------
MIN_SIZE = 1024  # below about one packet, compressing saves the client nothing
THREAD_SIZE = 256 * 1024  # larger answers are compressed off the event loop
LEVEL = 6


def wanted_coding(scope: Scope) -> str | None:
    """'gzip' or 'deflate' when the request's Accept-Encoding names one (gzip first), else None."""
    for key, value in scope["headers"]:
        if key == b"accept-encoding":
            offered = set()
            for item in value.decode("latin-1").lower().split(","):
                token, _, params = item.partition(";")
                if params.replace(" ", "") in ("q=0", "q=0.0", "q=0.00", "q=0.000"):
                    continue
                offered.add(token.strip())
            if "gzip" in offered:
                return "gzip"
            if "deflate" in offered:
                return "deflate"
            return None
    return None


def compress(body: bytes, coding: str) -> bytes:
    c = zlib.compressobj(LEVEL, zlib.DEFLATED, GZIP_WBITS if coding == "gzip" else ZLIB_WBITS)
    return c.compress(body) + c.flush()


class ResponseCompression:
    """ASGI wrapper: a whole answer (not a stream) of at least MIN_SIZE bytes is sent gzip- or
    zlib-compressed when the client asked for it. A request that asks for neither passes straight
    through (one scan of its headers), so the V2 fast path behind it pays nothing more."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        coding = wanted_coding(scope) if scope["type"] == "http" else None
        if coding is None:
            await self.app(scope, receive, send)
            return
        start: Message | None = None

        async def send_compressed(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                # Only a whole answer (it declares its length) can be held for compressing: a stream's
                # headers go out at once, so a queued client learns it is queued.
                headers = {k.lower(): v for k, v in message.get("headers", [])}
                length = headers.get(b"content-length", b"")
                if (length.isdigit() and int(length) >= MIN_SIZE and b"content-encoding" not in headers
                        and not headers.get(b"content-type", b"").startswith(b"text/event-stream")):
                    start = message
                    return
                await send(message)
                return
            if start is None:  # not a response we hold (already passed on)
                await send(message)
                return
            held, start = start, None
            body: bytes = message.get("body", b"")
            headers: list[tuple[bytes, bytes]] = list(held.get("headers", []))
            names = {k.lower() for k, _ in headers}
            content_type = next((v for k, v in headers if k.lower() == b"content-type"), b"")
            if (message.get("more_body", False) or len(body) < MIN_SIZE or b"content-encoding" in names
                    or content_type.startswith(b"text/event-stream")):
                await send(held)
                await send(message)
                return
            packed = await asyncio.to_thread(compress, body, coding) if len(body) >= THREAD_SIZE else compress(body, coding)
            headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
            headers += [(b"content-encoding", coding.encode()), (b"content-length", str(len(packed)).encode()),
                        (b"vary", b"accept-encoding")]
            out: dict[str, Any] = {**held, "headers": headers}
            await send(out)
            await send({"type": "http.response.body", "body": packed, "more_body": False})

        await self.app(scope, receive, send_compressed)

"""The generator's HTTP/1.1 and websocket client: asyncio protocols around httptools' parser.

Why not aiohttp (used here before): a journey is three small requests and one short websocket,
and aiohttp's request machinery (client request and response objects, stream readers, timers,
tracing hooks) plus a reader task per socket cost ~2 ms of Python per journey, about what
Locust spends on all of it (benchmarks/RESULTS.md section 3). Parsing stays with a library:
httptools, the C parser (llhttp) uvicorn uses, reads every HTTP response and the websocket
handshake. What is written here is what a load generator needs and no more: a keep-alive pool
per origin, one write per request, and websocket frames read and written in place, their
messages handed to a callback as they arrive (RFC 6455: client frames masked, server frames
not, pings answered, fragments joined, close answered).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import os
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httptools

IDLE_S = 2.0
# The generator talks to a checkout and a card tokenizer: anything near these is not them.
MAX_BODY_BYTES = 8 << 20
MAX_MESSAGE_BYTES = 1 << 20
WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CLOSE_NORMAL = (1000).to_bytes(2, "big")
OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10
DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}


class WireError(Exception):
    """A failed exchange, in a few words alike for alike failures: they become report rows."""


def describe(error: BaseException) -> str:
    """An OS or TLS error by class and reason, without the address (one row per kind)."""
    if isinstance(error, WireError):
        return str(error)
    if isinstance(error, TimeoutError):
        return "timeout"
    if isinstance(error, OSError) and error.errno:
        # os.strerror, not the message: asyncio's names the address ("Connect call failed").
        return f"{type(error).__name__}: {os.strerror(error.errno)}"[:120]
    return type(error).__name__


@dataclass(frozen=True)
class Origin:
    """Where a URL's connection goes: host, port, TLS or not, and its Host header."""

    host: str
    port: int
    tls: bool
    host_header: str


@functools.lru_cache(maxsize=64)
def parse_origin(base: str) -> Origin:
    """`scheme://host[:port]` as an Origin (cached: a run has a handful of origins)."""
    scheme, sep, netloc = base.partition("://")
    if not sep or scheme.lower() not in DEFAULT_PORTS or not netloc:
        raise WireError(f"not an http(s) or ws(s) URL: {base[:80]}")
    scheme = scheme.lower()
    host, port = netloc, DEFAULT_PORTS[scheme]
    if netloc.startswith("["):  # an IPv6 literal: [::1]:5000
        end = netloc.find("]")
        host, rest = netloc[1:end], netloc[end + 1 :]
        if end < 0 or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            raise WireError(f"bad address in URL: {base[:80]}")
        if rest:
            port = int(rest[1:])
    elif ":" in netloc:
        host, _, number = netloc.rpartition(":")
        if not number.isdigit():
            raise WireError(f"bad port in URL: {base[:80]}")
        port = int(number)
    return Origin(host, port, scheme in ("https", "wss"), netloc)


def split_url(url: str) -> tuple[Origin, str]:
    """A URL as its origin and its request target (path and query)."""
    slash = url.find("/", url.find("//") + 2)
    base, target = (url, "/") if slash < 0 else (url[:slash], url[slash:])
    return parse_origin(base), target.partition("#")[0] or "/"


@functools.cache
def default_tls() -> ssl.SSLContext:
    """The system's trust store, loaded once (loading it takes ~20 ms): for https and wss."""
    return ssl.create_default_context()


async def _open(
    loop: asyncio.AbstractEventLoop,
    factory: Callable[[], asyncio.Protocol],
    origin: Origin,
    tls: ssl.SSLContext | None,
) -> asyncio.BaseTransport:
    try:
        transport, _ = await loop.create_connection(
            factory,
            origin.host,
            origin.port,
            ssl=(tls or default_tls()) if origin.tls else None,
        )
    except OSError as error:
        raise WireError(describe(error)) from None
    return transport


# -- HTTP/1.1 ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Response:
    """A response read whole."""

    status: int
    body: bytes


class _HttpConnection(asyncio.Protocol):
    """One keep-alive connection; one exchange at a time, the response parsed by httptools."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[Response] | None = None
        self.parts: list[bytes] = []
        self.size = 0
        self.heard = False  # any byte of the current exchange's response
        self.reusable = False
        self.closed = False
        self.idle_since = 0.0

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:
            # Bytes nobody asked for (on an idle connection, or after an answer): the parser
            # would carry them into the next exchange, so the connection is not used again.
            self.reusable = False
            self.closed = True
            if self.transport is not None:
                self.transport.abort()
            return
        self.heard = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.fail(WireError("unexpected protocol upgrade"))
        except httptools.HttpParserError as error:
            self.fail(WireError(f"bad response: {error}"[:120]))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if exc is None:
            self.settle(WireError("ServerDisconnected"))
        else:
            self.settle(WireError(describe(exc)))

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self.waiter is None:
            # A second response after the one asked for, in the same read: stop parsing it
            # (data_received then retires the connection).
            raise WireError("unsolicited response")
        self.parts = []
        self.size = 0

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > MAX_BODY_BYTES:
            self.fail(WireError("response body too large"))
            return
        self.parts.append(body)

    def on_message_complete(self) -> None:
        self.reusable = self.parser.should_keep_alive()
        self.settle(Response(self.parser.get_status_code(), b"".join(self.parts)))

    # the exchange

    def settle(self, outcome: Response | WireError) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is None or waiter.done():
            return
        if isinstance(outcome, Response):
            waiter.set_result(outcome)
        else:
            waiter.set_exception(outcome)

    def fail(self, error: WireError) -> None:
        self.reusable = False
        self.settle(error)
        if self.transport is not None:
            self.transport.abort()

    async def exchange(self, data: bytes) -> Response:
        assert self.transport is not None
        self.waiter = waiter = self.loop.create_future()
        self.heard = False
        self.reusable = False
        self.transport.write(data)
        try:
            return await waiter
        except BaseException:
            # Timed out or cancelled mid-exchange: a late answer must not reach the next one.
            self.reusable = False
            self.transport.abort()
            raise


class HttpClient:
    """Keep-alive HTTP/1.1 connections per origin, unbounded in number; idle ones close after
    `idle_s` (a doors-open burst opens one per customer, which should not linger).

    `async with HttpClient() as client:` closes every connection on the way out.
    """

    def __init__(self, idle_s: float = IDLE_S, tls: ssl.SSLContext | None = None) -> None:
        self.idle_s = idle_s
        self.tls = tls
        self.idle: dict[Origin, list[_HttpConnection]] = {}
        self.busy: set[_HttpConnection] = set()
        self.sweeping: asyncio.TimerHandle | None = None

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def request(
        self,
        method: str,
        url: str,
        body: bytes = b"",
        headers: Sequence[tuple[str, str]] = (),
    ) -> Response:
        """One exchange; raises WireError. Bound it with asyncio.timeout (the caller's phase)."""
        origin, target = split_url(url)
        head = f"{method} {target} HTTP/1.1\r\nHost: {origin.host_header}\r\n"
        for name, value in headers:
            head += f"{name}: {value}\r\n"
        if head.count("\n") != 2 + len(headers) or head.count("\r") != head.count("\n"):
            # A line break smuggled into the URL or a header (both can come from a server's
            # session answer) would split the request: refuse it instead.
            raise WireError("line break in the request target or a header")
        if body or method in ("POST", "PUT", "PATCH"):
            head += f"Content-Length: {len(body)}\r\n"
        data = (head + "\r\n").encode("latin-1") + body
        loop = asyncio.get_running_loop()
        connection = self.take_idle(origin, loop.time())
        if connection is not None:
            try:
                return await self.exchange(connection, origin, data, loop)
            except WireError:
                if connection.heard:
                    raise
                # It closed while idle before we could know: once more, on a new connection.
        connection = _HttpConnection(loop)
        await _open(loop, lambda: connection, origin, self.tls)
        return await self.exchange(connection, origin, data, loop)

    async def exchange(
        self,
        connection: _HttpConnection,
        origin: Origin,
        data: bytes,
        loop: asyncio.AbstractEventLoop,
    ) -> Response:
        self.busy.add(connection)
        try:
            response = await connection.exchange(data)
        finally:
            self.busy.discard(connection)
        if connection.reusable and not connection.closed:
            connection.idle_since = loop.time()
            self.idle.setdefault(origin, []).append(connection)
            if self.sweeping is None:
                self.sweeping = loop.call_later(self.idle_s, self.sweep)
        elif connection.transport is not None:
            connection.transport.close()
        return response

    def fresh(self, connection: _HttpConnection, now: float) -> bool:
        """Still open and idle for less than idle_s."""
        return not connection.closed and now - connection.idle_since < self.idle_s

    def take_idle(self, origin: Origin, now: float) -> _HttpConnection | None:
        pool = self.idle.get(origin)
        while pool:
            connection = pool.pop()  # the most recently used: least likely closed by now
            if self.fresh(connection, now):
                return connection
            if connection.transport is not None:
                connection.transport.close()
        return None

    def sweep(self) -> None:
        """Close connections idle for idle_s; again later while any stay idle."""
        self.sweeping = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        for pool in self.idle.values():
            keep = []
            for connection in pool:
                if self.fresh(connection, now):
                    keep.append(connection)
                elif connection.transport is not None:
                    connection.transport.close()
            pool[:] = keep
        if any(self.idle.values()):
            self.sweeping = loop.call_later(self.idle_s / 2, self.sweep)

    async def close(self) -> None:
        if self.sweeping is not None:
            self.sweeping.cancel()
            self.sweeping = None
        for connection in [c for pool in self.idle.values() for c in pool] + list(self.busy):
            if connection.transport is not None:
                connection.transport.abort()
        self.idle.clear()
        self.busy.clear()
        await asyncio.sleep(0)  # let the transports finish closing


# -- websocket ---------------------------------------------------------------------------------


def _frame(opcode: int, payload: bytes) -> bytes:
    """One final client frame, masked as RFC 6455 requires of clients."""
    size = len(payload)
    if size < 126:
        head = bytes((0x80 | opcode, 0x80 | size))
    elif size < 1 << 16:
        head = bytes((0x80 | opcode, 0x80 | 126)) + size.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + size.to_bytes(8, "big")
    mask = os.urandom(4)
    if not size:
        return head + mask
    key = int.from_bytes((mask * (size // 4 + 1))[:size], "big")
    return head + mask + (int.from_bytes(payload, "big") ^ key).to_bytes(size, "big")


class WebSocket(asyncio.Protocol):
    """A client websocket: text messages go to `on_text` as they arrive, the end of the
    connection to `on_close(reason)` once, unless our own close() ended it."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        key: bytes,
        on_text: Callable[[str], None],
        on_close: Callable[[str], None],
    ) -> None:
        self.on_text = on_text
        self.on_close = on_close
        self.transport: asyncio.Transport | None = None
        self.parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self.accept = base64.b64encode(hashlib.sha1(key + WEBSOCKET_GUID).digest())
        self.accepted = False
        self.handshake: asyncio.Future[None] = loop.create_future()
        self.pending = b""
        self.fragments: list[bytes] | None = None
        self.open = False
        self.ended = False

    @property
    def connected(self) -> bool:
        return self.open and not self.ended

    def send_text(self, text: str) -> None:
        """Queue one text message (asyncio writes it as soon as the socket takes it)."""
        self.send_frames(_frame(OP_TEXT, text.encode()))

    def send_frames(self, frames: bytes) -> None:
        if not self.connected or self.transport is None:
            raise WireError("transport close")
        self.transport.write(frames)

    def close(self, last_text: str | None = None) -> None:
        """Hang up: `last_text` (if any) and a close frame in one write, then the connection."""
        if self.ended:
            return
        self.ended = True
        if self.transport is None:
            return
        if self.open:
            frames = b"" if last_text is None else _frame(OP_TEXT, last_text.encode())
            with contextlib.suppress(RuntimeError):
                self.transport.write(frames + _frame(OP_CLOSE, CLOSE_NORMAL))
        self.transport.close()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.parser is not None:
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserUpgrade as upgrade:
                data = data[upgrade.args[0] :]
                self.parser = None
                if not self.upgraded():
                    return
            except httptools.HttpParserError as error:
                self.end(f"bad handshake: {error}"[:120])
                return
            else:
                return
        self.read_frames(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is None:
            self.end("transport close")
        else:
            self.end(f"transport error: {describe(exc)}")

    # the handshake (httptools callbacks, then the upgrade)

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"sec-websocket-accept" and value.strip() == self.accept:
            self.accepted = True

    def on_message_complete(self) -> None:
        # llhttp completes a 101 before it reports the upgrade; any other whole response means
        # the server said no (404, 400, 503, ...).
        assert self.parser is not None
        status = self.parser.get_status_code()
        if status != 101:
            self.end(f"handshake refused: http {status}")

    def upgraded(self) -> bool:
        if not self.accepted:
            self.end("handshake refused: no valid Sec-WebSocket-Accept")
            return False
        self.open = True
        if not self.handshake.done():
            self.handshake.set_result(None)
        return True

    # frames

    def read_frames(self, data: bytes) -> None:
        if self.pending:
            data, self.pending = self.pending + data, b""
        at, size = 0, len(data)
        while not self.ended and size - at >= 2:
            first, second = data[at], data[at + 1]
            length, start = second & 0x7F, at + 2
            if second & 0x80:
                self.fail("masked frame from the server")
                return
            if length == 126:
                if size - at < 4:
                    break
                length, start = int.from_bytes(data[at + 2 : at + 4], "big"), at + 4
            elif length == 127:
                if size - at < 10:
                    break
                length, start = int.from_bytes(data[at + 2 : at + 10], "big"), at + 10
            if length > MAX_MESSAGE_BYTES:
                self.fail("message too large")
                return
            end = start + length
            if end > size:
                break
            self.frame(first & 0x80, first & 0x0F, data[start:end])
            at = end
        if at < size and not self.ended:
            self.pending = data[at:]

    def frame(self, final: int, opcode: int, payload: bytes) -> None:
        if opcode == OP_TEXT and final and self.fragments is None:
            self.deliver(payload)
        elif opcode == OP_PING:
            with contextlib.suppress(WireError):
                self.send_frames(_frame(OP_PONG, payload))
        elif opcode == OP_CLOSE:
            if self.transport is not None:
                with contextlib.suppress(RuntimeError):
                    self.transport.write(_frame(OP_CLOSE, payload[:2]))
                self.transport.close()
            self.end("transport close")
        elif opcode == OP_PONG:
            pass
        elif opcode == OP_TEXT and self.fragments is None:
            self.fragments = [payload]
        elif opcode == OP_CONTINUATION and self.fragments is not None:
            self.fragments.append(payload)
            if sum(map(len, self.fragments)) > MAX_MESSAGE_BYTES:
                self.fail("message too large")
            elif final:
                whole, self.fragments = b"".join(self.fragments), None
                self.deliver(whole)
        elif opcode == OP_BINARY:
            self.fail("unexpected binary frame")
        else:
            self.fail(f"unexpected frame (opcode {opcode})")

    def deliver(self, payload: bytes) -> None:
        try:
            text = payload.decode()
        except UnicodeDecodeError:
            self.fail("text frame not UTF-8")
            return
        self.on_text(text)

    def fail(self, reason: str) -> None:
        if self.transport is not None:
            self.transport.abort()
        self.end(reason)

    def end(self, reason: str) -> None:
        """The connection is over: tell the waiting handshake or, once, on_close."""
        if not self.handshake.done():
            self.handshake.set_exception(WireError(reason))
            if self.transport is not None:
                self.transport.abort()
        elif not self.ended:
            self.ended = True
            self.on_close(reason)
        self.ended = True


async def open_websocket(
    url: str,
    on_text: Callable[[str], None],
    on_close: Callable[[str], None],
    tls: ssl.SSLContext | None = None,
) -> WebSocket:
    """Connect and pass the upgrade handshake; raises WireError. Bound it with asyncio.timeout."""
    origin, target = split_url(url)
    loop = asyncio.get_running_loop()
    key = base64.b64encode(os.urandom(16))
    socket = WebSocket(loop, key, on_text, on_close)
    transport = await _open(loop, lambda: socket, origin, tls)
    try:
        request = (
            f"GET {target} HTTP/1.1\r\nHost: {origin.host_header}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key.decode()}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        )
        transport.write(request.encode("latin-1"))  # type: ignore[attr-defined]
        await socket.handshake
    except BaseException:
        socket.ended = True
        transport.abort()  # type: ignore[attr-defined]
        raise
    return socket

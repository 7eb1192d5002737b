"""The generator's HTTP/1.1 client: keep-alive connections as asyncio protocols on httptools.

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
import ssl
from collections.abc import Sequence
from dataclasses import dataclass

import httptools

from flashsale.loadgen.client.connection import (
    Origin,
    WireError,
    describe,
    open_connection,
    split_url,
)

IDLE_S = 2.0
# The generator talks to a checkout and a card tokenizer: anything near these is not them.
MAX_BODY_BYTES = 8 << 20


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
        await open_connection(loop, lambda: connection, origin, self.tls)
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

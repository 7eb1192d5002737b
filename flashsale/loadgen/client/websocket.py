"""The generator's websocket client (RFC 6455): frames read and written in place on asyncio.

Client frames masked, server frames not, pings answered, fragments joined, close answered; each
text message goes to a callback as it arrives. The upgrade handshake is parsed by httptools.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import ssl
from collections.abc import Callable

import httptools

from flashsale.loadgen.client.connection import WireError, describe, open_connection, split_url

MAX_MESSAGE_BYTES = 1 << 20
WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CLOSE_NORMAL = (1000).to_bytes(2, "big")
OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


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
    transport = await open_connection(loop, lambda: socket, origin, tls)
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

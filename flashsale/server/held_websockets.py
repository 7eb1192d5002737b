"""A websocket held by a watcher on its descriptor, not by a greenlet parked in a read.

After its handshake a websocket waits, most of its life, for the client's next frame; a queued
customer sends one every ping interval. Parked in a read, that wait kept a greenlet for every
socket: its saved C stack (pywsgi, the app, engine.io and gevent-websocket, ~30 frames deep),
its CPython frames, and the request handler's objects (headers, read buffer).
Here the handler hands the connection over once the handshake is done (its request ends), and
a libev watcher (gevent's loop.io) waits for the descriptor to become readable: only then
does a short greenlet read the frame and handle it. Frames are parsed by gevent-websocket's
WebSocket as before, reading exactly the bytes a frame has, so that whatever is left stays in
the kernel, where the watcher sees it (benchmarks/waiting_room.py measures the memory per
held socket).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import gevent
from geventwebsocket.websocket import WebSocket

log = logging.getLogger(__name__)
READABLE = 1  # libev's EV_READ


class ExactReads:
    """The stream a held WebSocket reads from and writes to: each read takes exactly the bytes
    asked for (fewer only at the end of the connection), starting with those the handshake's
    buffer had read ahead."""

    __slots__ = ("sock", "pending")

    def __init__(self, sock: Any, pending: bytes = b"") -> None:
        self.sock = sock
        self.pending = pending

    def read(self, size: int) -> bytes:
        pending = self.pending
        if len(pending) >= size:
            self.pending = pending[size:]
            return pending[:size]
        data = bytearray(pending)
        self.pending = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                break
            data += chunk
        return bytes(data)

    def write(self, data: bytes) -> None:
        self.sock.sendall(data)


class _QuietOwner:
    """What gevent-websocket's WebSocket asks of the handler it belongs to: a logger, and an
    app to tell of closes (without one it defines a new class on every close)."""

    logger = logging.getLogger("geventwebsocket.handler")

    def __init__(self) -> None:
        self.server = self.application = self.current_app = self

    def on_close(self, *reason: Any) -> None:
        pass


OWNER = _QuietOwner()


class HeldWebsocket:
    """One websocket connection after its handshake, on a descriptor of its own.

    receive(message) is called for each text or binary message, in order, from a short
    greenlet; it returns False to end the connection. on_end() is called once, when the
    connection ends for any reason (the client closed it, a bad frame, close() here)."""

    __slots__ = ("sock", "stream", "ws", "watcher", "receive", "on_end", "ended")

    def __init__(
        self,
        sock: Any,
        pending: bytes,
        receive: Callable[[Any], bool],
        on_end: Callable[[], None],
    ) -> None:
        self.sock = sock
        self.stream = ExactReads(sock, pending)
        self.ws = WebSocket(None, self.stream, OWNER)
        self.receive = receive
        self.on_end = on_end
        self.ended = False
        self.watcher = gevent.get_hub().loop.io(sock.fileno(), READABLE)

    def start(self) -> None:
        if self.stream.pending:
            gevent.spawn_raw(self.read)  # a frame arrived with the handshake
        else:
            self.watcher.start(self.readable)

    def readable(self) -> None:
        """In the hub, when the client has sent something: read it outside the hub."""
        self.watcher.stop()
        gevent.spawn_raw(self.read)

    def read(self) -> None:
        """Handle the message that made the descriptor readable (and any the handshake's
        buffer held), then wait for the next one again."""
        try:
            while True:
                message = self.ws.receive()  # None: the client closed, or a bad frame (closed)
                if message is None or not self.receive(message):
                    self.end()
                    return
                if not self.stream.pending:
                    break
        except Exception as error:  # gevent-websocket turns socket errors into None itself
            log.info("reading a websocket failed, closing it: %r", error)
            self.end()
            return
        if not self.ended:
            self.watcher.start(self.readable)

    def send(self, message: str | bytes) -> None:
        self.ws.send(message)

    def close(self) -> None:
        """Send the close frame and end the connection."""
        if not self.ws.closed:
            self.ws.close()
        self.end()

    def end(self) -> None:
        if self.ended:
            return
        self.ended = True
        # The watcher before the descriptor it watches; a reader blocked on it is woken.
        self.watcher.stop()
        self.watcher.close()
        self.sock.close()
        try:
            self.on_end()
        except Exception:
            log.exception("ending a websocket")

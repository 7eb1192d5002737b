"""One customer's Socket.IO connection: the few packets a customer needs, over client.websocket.

A customer needs one namespace, a handful of server events and the pongs that keep it alive.
python-socketio's AsyncClient brings a writer task, a packet queue, reconnection machinery and
a waited-for close handshake to every connection; on the generator's hot path that was about
half of a journey's CPU. Its packet classes were kept for a while, but importing python-socketio
and python-engineio (which pull in aiohttp, requests and redis) cost ~0.3 s of CPU at every
generator process's start, for a codec this small. What is spoken here, on the default
namespace with JSON text only (Engine.IO 4, Socket.IO 5):

    server -> client   0{...} open, 2 ping, 1 close, 6 noop; in a 4 message: 0{sid} connected,
                       4{message} refused, 2["event", data] event, 1 disconnected
    client -> server   3 pong, 40{auth} connect, 41 disconnect, 42["event",data] event

tests/test_loadgen_room.py checks it against the real server.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Callable
from typing import Any

from flashsale.loadgen.client.connection import WireError, describe
from flashsale.loadgen.client.websocket import WebSocket, open_websocket

# Engine.IO 4, websocket from the first request: the server accepts no other transport.
ENDPOINT = "/socket.io/?EIO=4&transport=websocket"
# Engine.IO packet types (the first character of every message).
EIO_OPEN, EIO_CLOSE, EIO_PING, EIO_PONG, EIO_MESSAGE = "0", "1", "2", "3", "4"
# Socket.IO packet types (the character after an Engine.IO MESSAGE's "4").
SIO_CONNECT, SIO_DISCONNECT, SIO_EVENT, SIO_CONNECT_ERROR = "0", "1", "2", "4"
DISCONNECT_MESSAGE = EIO_MESSAGE + SIO_DISCONNECT


class SocketError(Exception):
    """No Socket.IO session: nothing listening, a broken handshake, or no answer in time."""


class SocketRefused(SocketError):
    """The server answered the namespace connection with CONNECT_ERROR (e.g. a bad room token)."""


class RoomSocket:
    """A websocket-only Socket.IO client for the default namespace: events in, `emit` out.

    `on_event(name, data)` runs for every server event; `on_drop(reason)` once if the
    connection ends by anything but `close()`.
    """

    def __init__(
        self,
        on_event: Callable[[str, Any], None],
        on_drop: Callable[[str], None],
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.on_event = on_event
        self.on_drop = on_drop
        self.tls = tls
        self.ws: WebSocket | None = None
        self.state = "new"  # opening -> connecting -> connected
        self.stage: asyncio.Future[None] | None = None  # the handshake step awaited
        self.closing = False

    @property
    def connected(self) -> bool:
        return self.ws is not None and self.ws.connected

    async def connect(self, url: str, auth: dict[str, Any], timeout_s: float) -> None:
        """Open the websocket, pass Engine.IO's handshake, connect the namespace with `auth`."""
        endpoint = url.replace("http", "ws", 1).rstrip("/") + ENDPOINT
        loop = asyncio.get_running_loop()
        self.closing = False  # a retry after a failed attempt starts afresh
        self.state = "opening"
        self.stage = loop.create_future()
        try:
            async with asyncio.timeout(timeout_s):
                self.ws = ws = await open_websocket(endpoint, self.on_text, self.on_close, self.tls)
                await self.stage  # Engine.IO's OPEN packet
                self.stage = loop.create_future()
                ws.send_text(EIO_MESSAGE + SIO_CONNECT + json.dumps(auth, separators=(",", ":")))
                await self.stage  # the namespace's CONNECT (or CONNECT_ERROR)
        except (WireError, TimeoutError) as error:
            self.abort()
            raise SocketError(describe(error)) from None
        except SocketError:
            self.abort()
            raise

    def emit(self, name: str, data: Any) -> None:
        """Send an event (the waiting room's `leave`); dropped if not connected."""
        if self.ws is not None and self.ws.connected and self.state == "connected":
            packet = json.dumps([name, data], separators=(",", ":"))
            self.ws.send_text(EIO_MESSAGE + SIO_EVENT + packet)

    async def close(self) -> None:
        """Hang up: leave the namespace and close the websocket, not reported as a drop."""
        self.closing = True
        if self.ws is not None:
            self.ws.close(last_text=DISCONNECT_MESSAGE)

    # -- inside ----------------------------------------------------------------------------

    def abort(self) -> None:
        self.closing = True
        if self.ws is not None:
            self.ws.close()

    def on_text(self, text: str) -> None:
        kind = text[:1]
        if kind == EIO_MESSAGE:
            self.on_packet(text[1:2], text[2:])
        elif kind == EIO_PING:  # the server drops a client that does not answer
            if self.ws is not None and self.ws.connected:
                self.ws.send_text(EIO_PONG + text[1:])
        elif kind == EIO_OPEN and self.state == "opening":
            self.state = "connecting"
            self.advance()
        elif kind == EIO_CLOSE:
            self.end("transport close")

    def on_packet(self, kind: str, body: str) -> None:
        if kind == SIO_EVENT:
            # Nothing but a JSON array is an event for us: an ack id or another namespace
            # would come first, and this server asks for neither.
            if body.startswith("["):
                self.on_event_data(_json(body))
        elif kind == SIO_CONNECT and self.state == "connecting":
            self.state = "connected"
            self.advance()
        elif kind == SIO_CONNECT_ERROR and self.state == "connecting":
            self.advance(SocketRefused(_refusal(_json(body))))
        elif kind == SIO_DISCONNECT:
            self.end("server disconnect")

    def on_event_data(self, data: Any) -> None:
        if isinstance(data, list) and data:
            name, *args = data
            self.on_event(str(name), args[0] if args else None)

    def advance(self, error: SocketError | None = None) -> None:
        stage = self.stage
        if stage is not None and not stage.done():
            if error is None:
                stage.set_result(None)
            else:
                stage.set_exception(error)

    def on_close(self, reason: str) -> None:
        """The websocket ended without our close(): a failed handshake or a drop."""
        if self.state != "connected":
            self.advance(SocketError(reason))
            return
        if not self.closing:
            self.closing = True
            self.on_drop(reason)

    def end(self, reason: str) -> None:
        """The server ended the session: hang up our side and report the drop."""
        if self.ws is not None:
            self.ws.close()
        self.on_close(reason)


def _json(body: str) -> Any:
    try:
        return json.loads(body) if body else None
    except ValueError:
        return None


def _refusal(data: Any) -> str:
    message = data.get("message") if isinstance(data, dict) else data
    return str(message or "connection refused")

"""One customer's Socket.IO connection: python-socketio's packets over the generator's websocket.

A customer needs one namespace, a handful of server events and the pongs that keep it alive.
python-socketio's AsyncClient brings a writer task, a packet queue, reconnection machinery and
a waited-for close handshake to every connection; on the generator's hot path that was about
half of a journey's CPU. This keeps the protocol to the library (its packet classes encode and
decode every Socket.IO packet) and the transport to `wire.WebSocket`, whose messages arrive
here as callbacks: no task per socket.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Any

from engineio import packet as eio_packet
from socketio import packet as sio_packet

from flashsale.loadgen import wire

# Engine.IO 4, websocket from the first request: the server accepts no other transport.
ENDPOINT = "/socket.io/?EIO=4&transport=websocket"


class SocketError(Exception):
    """No Socket.IO session: nothing listening, a broken handshake, or no answer in time."""


class SocketRefused(SocketError):
    """The server answered the namespace connection with CONNECT_ERROR (e.g. a bad room token)."""


class RoomSocket:
    """A websocket-only Socket.IO client for the default namespace, events in, nothing out.

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
        self.ws: wire.WebSocket | None = None
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
                self.ws = ws = await wire.open_websocket(
                    endpoint, self.on_text, self.on_close, self.tls
                )
                await self.stage  # Engine.IO's OPEN packet
                self.stage = loop.create_future()
                ws.send_text(_encode(sio_packet.Packet(sio_packet.CONNECT, data=auth)))
                await self.stage  # the namespace's CONNECT (or CONNECT_ERROR)
        except (wire.WireError, TimeoutError, ValueError) as error:
            self.abort()
            raise SocketError(wire.describe(error)) from None
        except SocketError:
            self.abort()
            raise

    async def close(self) -> None:
        """Hang up: leave the namespace and close the websocket, not reported as a drop."""
        self.closing = True
        if self.ws is not None:
            self.ws.close(last_text=_encode(sio_packet.Packet(sio_packet.DISCONNECT)))

    # -- inside ----------------------------------------------------------------------------

    def abort(self) -> None:
        self.closing = True
        if self.ws is not None:
            self.ws.close()

    def on_text(self, text: str) -> None:
        kind = text[:1]
        if kind == "4":  # Engine.IO MESSAGE carrying a Socket.IO packet
            self.on_packet(sio_packet.Packet(encoded_packet=text[1:]))
        elif kind == "2":  # PING: the server drops a client that does not answer
            if self.ws is not None and self.ws.connected:
                self.ws.send_text("3" + text[1:])
        elif kind == "0" and self.state == "opening":
            self.state = "connecting"
            self.advance()
        elif kind == "1":
            self.end("transport close")

    def on_packet(self, packet: sio_packet.Packet) -> None:
        kind = packet.packet_type
        if self.state == "connecting":
            if kind == sio_packet.CONNECT:
                self.state = "connected"
                self.advance()
                return
            if kind == sio_packet.CONNECT_ERROR:
                self.advance(SocketRefused(_refusal(packet.data)))
                return
        if kind == sio_packet.DISCONNECT:
            self.end("server disconnect")
        elif kind == sio_packet.EVENT and isinstance(packet.data, list) and packet.data:
            name, *args = packet.data
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


def _encode(packet: sio_packet.Packet) -> str:
    """A Socket.IO packet inside an Engine.IO MESSAGE, as one websocket text message."""
    return str(eio_packet.Packet(eio_packet.MESSAGE, data=packet.encode()).encode())


def _refusal(data: Any) -> str:
    message = data.get("message") if isinstance(data, dict) else data
    return str(message or "connection refused")

"""One customer's Socket.IO connection: an aiohttp websocket speaking python-socketio's packets.

A customer needs one namespace, a handful of server events and the pongs that keep it alive.
python-socketio's AsyncClient brings a writer task, a packet queue, reconnection machinery and
a waited-for close handshake to every connection; on the generator's hot path that was about
half of a journey's CPU. This keeps the protocol to the library (its packet classes encode and
decode every frame) and the transport to aiohttp, with one reader task per socket.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import aiohttp
from engineio import packet as eio_packet
from socketio import packet as sio_packet

# Engine.IO 4, websocket from the first request: the server accepts no other transport.
ENDPOINT = "/socket.io/?EIO=4&transport=websocket"
# A close the server does not answer is not worth waiting for: the outcome is decided.
CLOSE_TIMEOUT_S = 2.0
# Socket.IO events carry small JSON bodies; anything near this is not our server.
MAX_MESSAGE_BYTES = 1 << 20


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
        http: aiohttp.ClientSession,
        on_event: Callable[[str, Any], None],
        on_drop: Callable[[str], None],
    ) -> None:
        self.http = http
        self.on_event = on_event
        self.on_drop = on_drop
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.reader: asyncio.Task[None] | None = None
        self.closing = False

    @property
    def connected(self) -> bool:
        return self.ws is not None and not self.ws.closed

    async def connect(self, url: str, auth: dict[str, Any], timeout_s: float) -> None:
        """Open the websocket, pass Engine.IO's handshake, connect the namespace with `auth`."""
        endpoint = url.replace("http", "ws", 1).rstrip("/") + ENDPOINT
        self.closing = False  # a retry after a failed attempt starts afresh
        try:
            async with asyncio.timeout(timeout_s):
                self.ws = ws = await self.http.ws_connect(
                    endpoint,
                    timeout=aiohttp.ClientWSTimeout(ws_close=CLOSE_TIMEOUT_S),
                    autoping=True,
                    max_msg_size=MAX_MESSAGE_BYTES,
                )
                opening = eio_packet.Packet(encoded_packet=await self.receive_text())
                if opening.packet_type != eio_packet.OPEN:
                    raise SocketError("no Engine.IO open packet")
                await self.send(sio_packet.Packet(sio_packet.CONNECT, data=auth))
                while True:
                    answer = await self.next_packet()
                    if answer is None:
                        continue
                    if answer.packet_type == sio_packet.CONNECT:
                        break
                    if answer.packet_type == sio_packet.CONNECT_ERROR:
                        raise SocketRefused(_refusal(answer.data))
                    self.dispatch(answer)
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as error:
            await self.abort()
            raise SocketError(describe_error(error)) from None
        except SocketError:
            await self.abort()
            raise
        self.reader = asyncio.create_task(self.read_loop(ws))

    async def close(self) -> None:
        """Hang up: leave the namespace and close the websocket, not reported as a drop."""
        self.closing = True
        ws = self.ws
        if ws is None:
            return
        if not ws.closed:
            with contextlib.suppress(Exception):
                await self.send(sio_packet.Packet(sio_packet.DISCONNECT))
            with contextlib.suppress(Exception):
                await ws.close()
        if self.reader is not None:
            with contextlib.suppress(Exception):
                await self.reader

    # -- inside ----------------------------------------------------------------------------

    async def abort(self) -> None:
        self.closing = True
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()

    async def send(self, packet: sio_packet.Packet) -> None:
        assert self.ws is not None
        await self.ws.send_str(_encode(packet))

    async def receive_text(self) -> str:
        assert self.ws is not None
        message = await self.ws.receive()
        if message.type is aiohttp.WSMsgType.TEXT:
            return str(message.data)
        if message.type is aiohttp.WSMsgType.ERROR:
            raise SocketError("transport error")
        if message.type is aiohttp.WSMsgType.BINARY:
            raise SocketError("unexpected binary frame")
        raise SocketError("transport close")  # CLOSE, CLOSING or CLOSED

    async def next_packet(self) -> sio_packet.Packet | None:
        """The next Socket.IO packet, answering Engine.IO pings on the way (None: not one)."""
        text = await self.receive_text()
        kind = text[:1]
        if kind == "4":  # Engine.IO MESSAGE carrying a Socket.IO packet
            return sio_packet.Packet(encoded_packet=text[1:])
        if kind == "2":  # PING: the server drops a client that does not answer
            assert self.ws is not None
            await self.ws.send_str("3" + text[1:])
            return None
        if kind == "1":
            raise SocketError("transport close")
        return None

    def dispatch(self, packet: sio_packet.Packet) -> None:
        if packet.packet_type == sio_packet.EVENT and isinstance(packet.data, list) and packet.data:
            name, *args = packet.data
            self.on_event(str(name), args[0] if args else None)

    async def read_loop(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        reason = "transport close"
        try:
            while True:
                packet = await self.next_packet()
                if packet is None:
                    continue
                if packet.packet_type == sio_packet.DISCONNECT:
                    reason = "server disconnect"
                    break
                self.dispatch(packet)
        except SocketError as error:
            reason = str(error)
        except (aiohttp.ClientError, OSError, ValueError) as error:
            reason = f"transport error: {describe_error(error)}"
        finally:
            if not self.closing:
                self.closing = True
                with contextlib.suppress(Exception):
                    await ws.close()
                self.on_drop(reason)


def _encode(packet: sio_packet.Packet) -> str:
    """A Socket.IO packet inside an Engine.IO MESSAGE, as one websocket text frame."""
    return str(eio_packet.Packet(eio_packet.MESSAGE, data=packet.encode()).encode())


def _refusal(data: Any) -> str:
    message = data.get("message") if isinstance(data, dict) else data
    return str(message or "connection refused")


def describe_error(error: BaseException) -> str:
    """A failed HTTP or websocket exchange in a few words, alike for alike failures.

    The class and the OS error, not the message: aiohttp's messages name host and port, which
    would split one kind of failure into many rows of a report.
    """
    if isinstance(error, TimeoutError):
        return "timeout"
    os_error = getattr(error, "os_error", None)
    if isinstance(os_error, OSError) and os_error.strerror:
        return f"{type(error).__name__}: {os_error.strerror}"[:120]
    return type(error).__name__

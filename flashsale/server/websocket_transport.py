"""engine.io's websocket transport with no greenlet of its own per socket: reads and writes
from greenlets started when there is something to do.

python-engineio's websocket handler keeps two greenlets per socket for its whole life: the
request's, parked in a read, and a writer task waiting on the socket's packet queue. A queued
customer, sent one position update every few seconds and sending a pong every ping interval,
kept both, their saved stacks and their frames, for nothing most of the time. Here the request
hands its connection to a HeldWebsocket (server/held_websockets.py), which reads when the client
has sent something, and the queue wakes a writer when a packet is put: it sends what is queued,
in order, one writer per socket at a time, and ends when the queue is empty. A slow client
still blocks only its own writer, never the greenlet that emitted (benchmarks/waiting_room.py
measures the memory per held socket and the server's CPU).

Installed per engine.io server (gevent only), for connections that open on the websocket
transport, the only one flashsale serves; an upgrade from polling keeps engine.io's handler.
"""

from __future__ import annotations

import logging
from typing import Any

import gevent
from engineio import exceptions, packet
from gevent.queue import Empty, JoinableQueue

from flashsale.server.connections import ReleasesWebsockets
from flashsale.server.held_websockets import HeldWebsocket

log = logging.getLogger(__name__)


class WakingQueue(JoinableQueue):  # type: ignore[misc]
    """engine.io's per-socket packet queue, which tells its writer after each put."""

    __slots__ = ("writer",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.writer: SocketWriter | None = None

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        if self.writer is not None:
            self.writer.wake()


class SocketWriter:
    """Sends one socket's queued packets from a short-lived greenlet; None closes the websocket."""

    __slots__ = ("queue", "ws", "running", "closed")

    def __init__(self, queue: WakingQueue, ws: HeldWebsocket) -> None:
        self.queue = queue
        self.ws = ws
        self.running = False
        self.closed = False

    def wake(self) -> None:
        if not self.running:
            self.running = True
            gevent.spawn_raw(self.drain)

    def drain(self) -> None:
        try:
            while True:
                try:
                    pkt = self.queue.get(block=False)
                except Empty:
                    return
                self.queue.task_done()
                if self.closed:
                    continue  # after the close: taken, so that engine.io's queue.join() returns
                if pkt is None:
                    self.close()
                    continue
                try:
                    self.ws.send(pkt.encode())
                except Exception:  # the client is gone: closing ends the held connection
                    self.close()
        finally:
            self.running = False

    def close(self) -> None:
        self.closed = True
        try:
            self.ws.close()
        except Exception as error:
            log.debug("closing a websocket: %s", error)


def serve_websocket(socket: Any, ws: Any) -> list[Any]:
    """engine.io's websocket transport for a socket that opened on it, without a greenlet of
    its own: the handler releases the connection to a HeldWebsocket, which reads on demand,
    and a SocketWriter writes on demand. A handler that cannot release it (not one of
    flashsale's: see server/connections.py) gets engine.io's own handler."""
    handler = getattr(getattr(ws, "_sock", None), "handler", None)
    if not isinstance(handler, ReleasesWebsockets):
        return list(socket._websocket_handler(ws))
    sock, pending = handler.release_websocket()
    server = socket.server
    socket.connected = True
    socket.upgraded = True
    # A frame the client has begun, and a write it does not read, must end within a ping and its
    # timeout; a client that goes silent without closing is engine.io's ping timeout (its
    # service task checks every socket).
    sock.settimeout(server.ping_interval + server.ping_timeout)
    queue = socket.queue

    def receive(data: Any) -> bool:
        if len(data) > server.max_http_buffer_size:
            server.logger.info("%s: packet is too large, closing", socket.sid)
            return False
        try:
            socket.receive(packet.Packet(encoded_packet=data))
        except exceptions.UnknownPacketError:
            pass
        except exceptions.SocketIsClosedError:
            return False
        except Exception:
            server.logger.exception("Unknown receive error")
            return False
        return True

    def ended() -> None:
        queue.put(None)  # the writer drops what is left: the connection is gone
        socket.close(wait=False, abort=True, reason=server.reason.TRANSPORT_CLOSE)
        # engine.io forgets a websocket-opened socket when its handler returns; this one
        # returned at the handshake.
        if server.sockets.get(socket.sid) is socket:
            del server.sockets[socket.sid]

    held = HeldWebsocket(sock, pending, receive, ended)
    writer = SocketWriter(queue, held)
    queue.writer = writer
    writer.wake()  # the OPEN packet (and anything else) queued before the websocket was ready
    held.start()
    return []


def install(eio: Any) -> None:
    """Serve this engine.io server's websocket-opened sockets with writes on demand."""
    driver = eio._async
    if driver.get("queue") is not JoinableQueue or driver.get("websocket") is None:
        return  # another async mode: engine.io's own writer task
    websocket_wsgi = driver["websocket"]

    def websocket(handler: Any, server: Any) -> Any:
        socket = handler.__self__
        if socket.connected:  # an upgrade from polling
            return websocket_wsgi(handler, server)
        return websocket_wsgi(lambda ws: serve_websocket(socket, ws), server)

    # This server's copy of the driver table: other engine.io servers keep theirs.
    eio._async = {**driver, "queue": WakingQueue, "websocket": websocket}

"""Socket.IO handlers: admit a signed room token, join that room, replay stored results."""

from __future__ import annotations

import logging
from typing import Any

from flask_socketio import ConnectionRefusedError, SocketIO
from socketio import packet

from flashsale.core import events, inventory, orders, signing
from flashsale.server.context import ServerContext

log = logging.getLogger("flashsale.server")


def register_handlers(socketio: SocketIO, ctx: ServerContext) -> None:
    settings = ctx.settings
    metrics = ctx.metrics

    def welcome(sid: str, customer_id: str, watch_stock: bool) -> None:
        """Runs after the connect handler returns, so the client already counts as connected.

        Redis pub/sub drops emits while a listener reconnects, so every join re-sends the
        customer's stored results; clients match them up by order_id. A stock watcher also gets
        the current count, so a counter that missed broadcasts while disconnected catches up.
        """
        socketio.emit(events.JOINED, events.joined(customer_id), to=sid, ignore_queue=True)
        metrics.emits.labels(events.JOINED).inc()
        if ctx.room is not None:
            try:
                ctx.room.welcome(sid, customer_id)
            except Exception as error:  # the next update tells it anyway
                log.error("could not tell %s its place in the queue: %s", customer_id, error)
        if watch_stock:
            try:
                left = inventory.stock_left(ctx.redis, settings.sale_sku)
            except Exception as error:
                log.error("could not read stock for a new watcher: %s", error)
            else:
                payload = events.stock(settings.sale_sku, left)
                socketio.emit(events.STOCK, payload, to=sid, ignore_queue=True)
                metrics.emits.labels(events.STOCK).inc()
        try:
            told = orders.orders_to_replay(ctx.redis, customer_id)
        except Exception as error:  # a replay failure must not kill the socket
            log.error("could not replay results of %s: %s", customer_id, error)
            return
        for order in told:
            action = order.action_required()
            name, payload = (
                (events.ACTION_REQUIRED, action)
                if action is not None
                else (events.CHARGE_RESULT, order.charge_result())
            )
            socketio.emit(name, payload, to=sid, ignore_queue=True)
            metrics.emits.labels(name).inc()

    def on_connect(sid: str, environ: object, auth: object = None) -> None:
        token = auth.get("room_token") if isinstance(auth, dict) else None
        customer_id = signing.verify_room_token(settings.secret, token, settings.room_token_ttl_s)
        if customer_id is None:
            metrics.socket_connects.labels("refused").inc()
            raise ConnectionRefusedError("invalid or missing room_token")
        server.enter_room(sid, events.room_for(customer_id), namespace=events.NAMESPACE)
        # Opt-in, so load generators that never show stock do not pay for its broadcasts.
        watch_stock = isinstance(auth, dict) and auth.get("watch_stock") is True
        if watch_stock:
            server.enter_room(sid, events.stock_room(settings.sale_sku), namespace=events.NAMESPACE)
        if ctx.room is not None:
            ctx.room.on_connect(sid, customer_id)
        metrics.socket_connects.labels("accepted").inc()
        metrics.sockets.inc()
        socketio.start_background_task(welcome, sid, customer_id, watch_stock)

    def on_disconnect(sid: str, reason: object = None) -> None:
        metrics.sockets.dec()
        if ctx.room is not None:
            ctx.room.on_disconnect(sid)

    # Straight on python-socketio: neither handler needs Flask, and through Flask-SocketIO every
    # connect and disconnect would push a whole Flask request context (a session, URL matching
    # that ends in a NotFound for /socket.io/) first.
    server = socketio.server
    server.on("connect", on_connect, namespace=events.NAMESPACE)
    server.on("disconnect", on_disconnect, namespace=events.NAMESPACE)
    if ctx.room is not None:
        server.on(events.LEAVE, ctx.room.on_leave, namespace=events.NAMESPACE)
    guard_client_packets(server, metrics)


# Event names only the library may raise. python-socketio 5.18 hands a client's EVENT packet
# to whatever handler bears its name, reserved or not: 42["connect",...] re-ran the connect
# handler (a replay of every stored result, the sockets gauge up), 42["disconnect"] took the
# gauge below zero. Clients have no business sending them.
RESERVED_EVENTS = frozenset({"connect", "connect_error", "disconnect", "__disconnect_final"})
# The packet types a client may send (Socket.IO protocol v5); CONNECT_ERROR is the server's.
CLIENT_PACKET_TYPES = frozenset(
    {packet.CONNECT, packet.DISCONNECT, packet.EVENT, packet.ACK, packet.BINARY_EVENT}
    | {packet.BINARY_ACK}
)


def guard_client_packets(server: Any, metrics: Any) -> None:
    """Drop client events with reserved names, and packets python-socketio cannot take, before
    it dispatches them.

    Wraps the server's private `_handle_event(eio_sid, namespace, id, data)`, the one place
    client EVENT packets pass, and `_handle_eio_message(eio_sid, data)`, Engine.IO's "message"
    handler, where every client packet is decoded (python-socketio pinned in pyproject.toml;
    tests/test_private_hooks.py fails if a hook goes). Without the second, each undecodable
    packet (2[x, 9, 4, an integer of 101 digits, 1,300 levels of [) wrote an ERROR line and a
    traceback to the server's log, as often as a client cared to send one.
    """
    handle_event = server._handle_event
    handle_message = server._handle_eio_message

    def refuse(eio_sid: str, reason: str, what: object) -> None:
        metrics.socket_refused_packets.labels(reason).inc()
        log.warning("refused a client packet on %s (%s): %.80r", eio_sid, reason, what)

    def guarded_event(eio_sid: str, namespace: str | None, id: int | None, data: Any) -> Any:
        if not (isinstance(data, list) and data and isinstance(data[0], str)):
            refuse(eio_sid, "event_without_a_name", data)
            return None
        if data[0] in RESERVED_EVENTS:
            metrics.socket_refused_events.labels(data[0]).inc()
            log.warning("refused a client event named %r (reserved) on %s", data[0], eio_sid)
            return None
        return handle_event(eio_sid, namespace, id, data)

    def guarded_message(eio_sid: str, data: Any) -> Any:
        try:
            return handle_message(eio_sid, data)
        except Exception:
            reason = client_fault(server, eio_sid, data)
            if reason is None:
                raise  # the packet was fine: the failure is ours, and its traceback is wanted
            refuse(eio_sid, reason, data)
            return None

    server._handle_event = guarded_event
    server.eio.on("message", guarded_message)  # Engine.IO took the bound method at init


def client_fault(server: Any, eio_sid: str, data: Any) -> str | None:
    """Why python-socketio could not take this client packet; None if the packet was sound.

    Asked only after handling failed, so a sound packet costs nothing extra."""
    if not isinstance(data, str) or eio_sid in server._binary_packet:
        return None  # a binary attachment: python-socketio decodes nothing there
    try:
        pkt = server.packet_class(encoded_packet=data)
    except Exception:  # ValueError, RecursionError: bad JSON, past engineio's limits, too deep
        return "undecodable"
    if pkt.packet_type not in CLIENT_PACKET_TYPES:
        return "packet_type"
    binary = pkt.packet_type in (packet.BINARY_EVENT, packet.BINARY_ACK)
    if binary and not server.manager.sid_from_eio_sid(eio_sid, pkt.namespace or "/"):
        return "binary_before_connect"
    return None

"""Socket.IO handlers: admit a signed room token, join that room, replay stored results."""

from __future__ import annotations

import logging

from flask import request
from flask_socketio import ConnectionRefusedError, SocketIO, join_room

from flashsale.core import events, orders, signing
from flashsale.server.context import ServerContext

log = logging.getLogger("flashsale.server")


def register_handlers(socketio: SocketIO, ctx: ServerContext) -> None:
    settings = ctx.settings
    metrics = ctx.metrics

    def welcome(sid: str, customer_id: str) -> None:
        """Runs after the connect handler returns, so the client already counts as connected.

        Redis pub/sub drops emits while a listener reconnects, so every join re-sends the
        customer's stored results; clients match them up by order_id.
        """
        socketio.emit(events.JOINED, events.joined(customer_id), to=sid, ignore_queue=True)
        metrics.emits.labels(events.JOINED).inc()
        try:
            finished = orders.final_orders_of(ctx.redis, customer_id)
        except Exception as error:  # a replay failure must not kill the socket
            log.error("could not replay results of %s: %s", customer_id, error)
            return
        for order in finished:
            socketio.emit(events.CHARGE_RESULT, order.charge_result(), to=sid, ignore_queue=True)
            metrics.emits.labels(events.CHARGE_RESULT).inc()

    @socketio.on("connect")
    def on_connect(auth: object = None) -> None:
        token = auth.get("room_token") if isinstance(auth, dict) else None
        customer_id = signing.verify_room_token(settings.secret, token, settings.room_token_ttl_s)
        if customer_id is None:
            metrics.socket_connects.labels("refused").inc()
            raise ConnectionRefusedError("invalid or missing room_token")
        join_room(events.room_for(customer_id))
        metrics.socket_connects.labels("accepted").inc()
        metrics.sockets.inc()
        socketio.start_background_task(welcome, request.sid, customer_id)  # type: ignore[attr-defined]

    @socketio.on("disconnect")
    def on_disconnect(reason: object = None) -> None:
        metrics.sockets.dec()

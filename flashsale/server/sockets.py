"""Socket.IO handlers: admit a signed room token, join that room, replay stored results."""

from __future__ import annotations

import logging

from flask import request
from flask_socketio import ConnectionRefusedError, SocketIO, join_room

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
        # Opt-in, so load generators that never show stock do not pay for its broadcasts.
        watch_stock = isinstance(auth, dict) and auth.get("watch_stock") is True
        if watch_stock:
            join_room(events.stock_room(settings.sale_sku))
        metrics.socket_connects.labels("accepted").inc()
        metrics.sockets.inc()
        socketio.start_background_task(
            welcome,
            request.sid,  # type: ignore[attr-defined]
            customer_id,
            watch_stock,
        )

    @socketio.on("disconnect")
    def on_disconnect(reason: object = None) -> None:
        metrics.sockets.dec()

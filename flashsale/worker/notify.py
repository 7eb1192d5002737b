"""Delivering a final order result to its customer's room: the Redis message queue or /notify."""

from __future__ import annotations

import json
from typing import Any, Protocol

import httpx
import socketio

from flashsale.core import events, inventory, signing, store
from flashsale.core.orders import Order
from flashsale.core.stock_feed import StockFeed
from flashsale.errors import ConfigError
from flashsale.settings import Settings


class Notifier(Protocol):
    def notify(self, order: Order) -> None: ...

    def action_required(self, order: Order) -> None: ...

    def stock_changed(self, sku: str) -> None: ...


class QueueNotifier:
    """Publishes the charge_result straight to the server processes (write-only Socket.IO)."""

    def __init__(self, redis_url: str) -> None:
        # The same channel constant as the server, or every emit is silently dropped.
        self.manager = socketio.RedisManager(redis_url, write_only=True, channel=events.CHANNEL)
        reader = store.connect(redis_url)
        self.stock_feed = StockFeed(
            lambda sku: inventory.stock_left(reader, sku), self._publish_stock
        )

    def _publish_stock(self, sku: str, payload: dict[str, Any]) -> None:
        self.manager.emit(
            events.STOCK, payload, room=events.stock_room(sku), namespace=events.NAMESPACE
        )

    def stock_changed(self, sku: str) -> None:
        """A released unit is for sale again: tell the watchers (coalesced per worker process)."""
        self.stock_feed.changed(sku)

    def notify(self, order: Order) -> None:
        self.manager.emit(
            events.CHARGE_RESULT,
            order.charge_result(),
            room=events.room_for(order.customer_id),
            namespace=events.NAMESPACE,
        )

    def action_required(self, order: Order) -> None:
        payload = order.action_required()
        if payload is not None:
            self.manager.emit(
                events.ACTION_REQUIRED,
                payload,
                room=events.room_for(order.customer_id),
                namespace=events.NAMESPACE,
            )


class HttpNotifier:
    """The original design's hop: POST the order id, HMAC-signed, to the server's /notify."""

    def __init__(self, server_url: str, secret: str, timeout_s: float = 5.0) -> None:
        self.url = f"{server_url.rstrip('/')}/notify"
        self.secret = secret
        self.client = httpx.Client(timeout=timeout_s)

    def action_required(self, order: Order) -> None:
        """The same hop: /notify sends a pending order's action_required from Redis."""
        self.notify(order)

    def notify(self, order: Order) -> None:
        # Only the order id travels: the server sends what Redis holds, so a replayed or
        # reordered notify can never change what the customer sees.
        body = json.dumps({"order_id": order.order_id}).encode()
        response = self.client.post(
            self.url,
            content=body,
            headers={
                "Content-Type": "application/json",
                signing.SIGNATURE_HEADER: signing.sign_body(self.secret, body),
            },
        )
        response.raise_for_status()

    def stock_changed(self, sku: str) -> None:
        """Nothing to do: the server broadcasts the stock when /notify brings a released order."""


def require_notify_secret(settings: Settings) -> None:
    """--notify http signs every call with the server's secret: without one, refuse to start."""
    if settings.notify == "http" and not settings.secret:
        raise ConfigError(
            "--notify http needs FLASHSALE_SECRET, the one the server has: it signs /notify"
        )


def make_notifier(settings: Settings) -> Notifier:
    require_notify_secret(settings)
    if settings.notify == "http":
        return HttpNotifier(settings.server_url, settings.secret)
    return QueueNotifier(settings.redis_url)

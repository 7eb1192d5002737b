"""What the server's routes and socket handlers share: settings, Redis, the queue, metrics."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import redis
from celery import Celery
from flask import current_app
from flask_socketio import SocketIO

from flashsale.core import broker, events, inventory, jobs
from flashsale.core.orders import Order
from flashsale.core.stock_feed import StockFeed
from flashsale.server.metrics import ServerMetrics
from flashsale.server.waiting_room import WaitingRoom
from flashsale.settings import Settings


@dataclass
class ServerContext:
    settings: Settings
    redis: redis.Redis
    producer: Celery
    metrics: ServerMetrics
    socketio: SocketIO
    stock_feed: StockFeed
    room: WaitingRoom | None = None  # when the waiting room is on

    def tell_customer(self, order: Order) -> bool:
        """Send the order's news to its customer's room, what Redis holds: the final result,
        or the 3D Secure its PaymentIntent waits for; a released unit goes to the stock
        watchers too. False when there is nothing to tell yet."""
        action = order.action_required()
        if action is not None:
            name, payload = events.ACTION_REQUIRED, action
        elif order.final:
            name, payload = events.CHARGE_RESULT, order.charge_result()
        else:
            return False
        self.socketio.emit(
            name, payload, to=events.room_for(order.customer_id), namespace=events.NAMESPACE
        )
        self.metrics.emits.labels(name).inc()
        if order.final and order.released:
            self.stock_feed.changed(order.sku)
        return True

    def enqueue_charge(self, order_id: str) -> None:
        """Hand the order to the worker (by task name: the server does not import the worker)."""
        self.producer.send_task(
            jobs.CREATE_CHARGE, queue=jobs.QUEUE, **jobs.publish_options(order_id)
        )


class ProducerApp(Celery):
    """A Celery app with one result backend for the process instead of one per greenlet.

    Celery keeps its backend per thread, and under gevent every greenlet is a thread: each
    request built its own (disabled: no result backend) just to attach it to the AsyncResult
    send_task returns, ~100 us per request. A disabled backend holds nothing to share.
    """

    @cached_property
    def backend(self) -> Any:
        return self._get_backend()


def make_producer(settings: Settings) -> Celery:
    """A Celery app that only sends tasks; its settings mirror the worker's broker options."""
    producer = ProducerApp("flashsale-server", set_as_current=False)
    producer.conf.update(
        **broker.celery_broker(
            settings.redis_url, visibility_timeout=settings.visibility_timeout_s
        ),
        broker_pool_limit=64,
        task_serializer="json",
        task_ignore_result=True,
        result_backend=None,
    )
    return producer


def make_stock_feed(socketio: SocketIO, client: redis.Redis, metrics: ServerMetrics) -> StockFeed:
    """Stock broadcasts to the sale's watchers, through the message queue so every server
    process's sockets hear them (each process throttles its own, see core.stock_feed)."""

    def publish(sku: str, payload: dict[str, object]) -> None:
        socketio.emit(events.STOCK, payload, to=events.stock_room(sku), namespace=events.NAMESPACE)
        metrics.emits.labels(events.STOCK).inc()

    return StockFeed(lambda sku: inventory.stock_left(client, sku), publish)


def context() -> ServerContext:
    """The context of the app handling the current request or socket event."""
    found: ServerContext = current_app.extensions["flashsale"]
    return found

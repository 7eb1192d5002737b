"""The server's Prometheus metrics: requests, orders by state, stock, sockets, emits."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import redis
from flask import Request
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from flashsale.core import inventory, jobs, orders

log = logging.getLogger("flashsale.server")
QUEUES = (jobs.QUEUE, jobs.RESULTS_QUEUE)


class SaleCollector(Collector):
    """Reads order counts, stock and queue depths from Redis at scrape time, so every server
    process agrees (and the load generator sees them over HTTP, never in Redis)."""

    def __init__(self, client: redis.Redis, sku: str) -> None:
        self.client = client
        self.sku = sku

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            counts = orders.count_by_state(self.client, self.sku)
            left = inventory.stock_left(self.client, self.sku)
            depths = {queue: int(self.client.llen(queue)) for queue in QUEUES}
        except redis.RedisError as error:
            # A scrape during an outage still shows the process metrics (and /healthz says why).
            log.warning("metrics: Redis unavailable: %s", error)
            return
        by_state = GaugeMetricFamily(
            "flashsale_orders", "Orders in the sale by state.", labels=["state"]
        )
        for state, count in counts.items():
            by_state.add_metric([state], count)
        yield by_state
        stock = GaugeMetricFamily("flashsale_stock_left", "Units still for sale.", labels=["sku"])
        stock.add_metric([self.sku], left)
        yield stock
        depth = GaugeMetricFamily(
            "flashsale_queue_depth",
            "Celery tasks waiting in the pipeline's queues (not yet taken by a worker).",
            labels=["queue"],
        )
        for queue, waiting in depths.items():
            depth.add_metric([queue], waiting)
        yield depth


def route_of(req: Request) -> str:
    """The route pattern, not the path: a small label set under hostile input."""
    return req.url_rule.rule if req.url_rule else "unmatched"


class ServerMetrics:
    """One registry per app, so several apps in one process never share counters."""

    def __init__(self, client: redis.Redis, sku: str) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "flashsale_http_requests",
            "HTTP requests answered, by route and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.redis_errors = Counter(
            "flashsale_redis_errors",
            "Requests answered 503 because Redis failed them, by route and kind "
            "(pool_exhausted: every connection of the pool was busy for the pool's timeout).",
            ["route", "kind"],
            registry=self.registry,
        )
        self.http_in_progress = Gauge(
            "flashsale_http_in_progress",
            "HTTP requests this process is working on (at most serve --max-in-flight).",
            registry=self.registry,
        )
        self.http_waiting = Gauge(
            "flashsale_http_waiting",
            "HTTP requests waiting for a place among those in progress.",
            registry=self.registry,
        )
        self.http_shed = Counter(
            "flashsale_http_shed",
            "HTTP requests answered 503 (Retry-After) because they waited --queue-wait for a "
            "place among those in progress, by route.",
            ["route"],
            registry=self.registry,
        )
        self.sockets = Gauge(
            "flashsale_sockets_connected",
            "Socket.IO clients connected to this process.",
            registry=self.registry,
        )
        self.socket_connects = Counter(
            "flashsale_socket_connects",
            "Socket.IO connection attempts, by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self.socket_refused_events = Counter(
            "flashsale_socket_refused_events",
            "Client events refused because they bear a reserved name (connect, disconnect).",
            ["event"],
            registry=self.registry,
        )
        self.socket_refused_packets = Counter(
            "flashsale_socket_refused_packets",
            "Client packets refused unread: undecodable, a server-only packet type, an event "
            "without a name.",
            ["reason"],
            registry=self.registry,
        )
        self.emits = Counter(
            "flashsale_socket_emits",
            "Events this process emitted to clients (worker emits via the queue are not counted).",
            ["event"],
            registry=self.registry,
        )
        self.webhooks = Counter(
            "flashsale_stripe_webhooks",
            "Stripe webhook deliveries to /stripe/webhook, by outcome: processed, already_final "
            "(the worker finished it first), duplicate (an event already applied), "
            "replayed_signature (a signed delivery received before: a replay, or Stripe's "
            "duplicate in the same second; 200, nothing changed), ignored (a type we do not act "
            "on), not_final (an event whose PaymentIntent has not ended), unknown_order, or "
            "refused (missing_signature, bad_signature, stale_signature, "
            "bad_payload, not_configured).",
            ["outcome"],
            registry=self.registry,
        )
        self.room_admit_rate = Gauge(
            "flashsale_room_admit_rate",
            "The waiting room's admission rate (customers/s) as this process last set or saw "
            "it; with --admit-rate auto, what the Stripe budget and the pipeline allow now.",
            registry=self.registry,
        )
        self.registry.register(SaleCollector(client, sku))

    def render(self) -> bytes:
        return generate_latest(self.registry)

"""A bound on the HTTP requests one server process works on at once: the rest wait their turn,
first come first served, up to a deadline, then get a counted 503 with Retry-After.

Without it the bound was the Redis pool's, by accident: in the doors-open herd 2,000 requests
raced for 128 connections and those that waited past the pool's 5 s timeout failed as "No
connection available" (405-876 per run), while a bigger pool made latency worse (2,143 Redis
clients, each connected through a saturated run queue). Requests now wait before they take a
connection, so HTTP never drains the pool (the pool is opened before the doors, sized above the
bound, leaving room for the Socket.IO handlers), and a request that cannot be served in time is
told so, explicitly, and counted (flashsale_http_shed_total).
"""

from __future__ import annotations

import logging
import threading
import time

from flask import Flask, Response, g, jsonify, request

from flashsale.server.metrics import ServerMetrics, route_of

log = logging.getLogger("flashsale.server")

# What operators and supervisors read to see an overloaded server: never queued behind it.
EXEMPT_ENDPOINTS = frozenset({"http.healthz", "http.metrics"})
RETRY_AFTER_S = 1


class InFlightLimit:
    """Installed on a Flask app: a slot per request in progress, taken in before_request and
    given back in teardown_request (which runs whatever the request did).

    threading's semaphore, so it works under the threading test client too; with gevent's
    monkey patching it is cooperative, and its Condition wakes waiters in arrival order."""

    def __init__(self, limit: int, wait_s: float, metrics: ServerMetrics) -> None:
        self.limit = limit
        self.wait_s = wait_s
        self.metrics = metrics
        self.slots = threading.BoundedSemaphore(limit)

    def install(self, app: Flask) -> None:
        app.before_request(self.take_slot)
        app.teardown_request(self.give_back)

    def take_slot(self) -> Response | None:
        if request.endpoint in EXEMPT_ENDPOINTS:
            return None
        started = time.monotonic()
        self.metrics.http_waiting.inc()
        try:
            got = self.slots.acquire(timeout=self.wait_s)
        finally:
            self.metrics.http_waiting.dec()
        if got:
            g.flashsale_slot = True
            self.metrics.http_in_progress.inc()
            return None
        route = route_of(request)
        self.metrics.http_shed.labels(route).inc()
        log.warning(
            "shed %s %s after waiting %.1fs: %d requests in progress",
            request.method,
            route,
            time.monotonic() - started,
            self.limit,
        )
        response = jsonify(
            {
                "error": {
                    "code": "overloaded",
                    "message": f"the server is at its {self.limit} requests in progress and "
                    f"this one waited {self.wait_s:g}s; try again in {RETRY_AFTER_S}s",
                }
            }
        )
        response.status_code = 503
        response.headers["Retry-After"] = str(RETRY_AFTER_S)
        return response

    def give_back(self, _error: BaseException | None = None) -> None:
        if g.pop("flashsale_slot", False):
            self.metrics.http_in_progress.dec()
            self.slots.release()

"""Faults a rehearsal injects: added latency, 500s Stripe asks to retry, dropped connections."""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections import Counter, deque

from aiohttp import web

from flashsale.stripe_sim.api_errors import StripeApiError
from flashsale.stripe_sim.config import SimConfig

DELAYS_KEPT = 1000  # the latency held on the last this many delayed requests, for /_sim/stats
API_ERROR = (
    "Sorry, something went wrong. We've already been notified of the problem, but if you need "
    "any help, you can reach us at support.stripe.com/contact. (injected by stripe-sim "
    "--error-rate)"
)


class Dropped(Exception):
    """The connection was aborted on purpose after the work was committed."""


class Faults:
    """Applies the configured faults and counts each one it injects."""

    def __init__(self) -> None:
        self.injected: Counter[str] = Counter()
        # The delays latency added to the last requests (seconds held), for /_sim/stats.
        self.delays: deque[float] = deque(maxlen=DELAYS_KEPT)

    def maybe_fail(self, config: SimConfig) -> None:
        """Sometimes answer 500 api_error, as Stripe does on its rare internal errors."""
        if config.error_rate and random.random() < config.error_rate:
            self.injected["injected_errors"] += 1
            raise StripeApiError(
                500, API_ERROR, type="api_error", headers={"Stripe-Should-Retry": "true"}
            )

    async def pause(self, config: SimConfig) -> None:
        delay = config.latency.sample()
        if delay > 0:
            began = time.monotonic()
            await asyncio.sleep(delay)
            self.delays.append(time.monotonic() - began)

    def maybe_drop(self, request: web.BaseRequest, config: SimConfig) -> None:
        """After the work is committed, sometimes hang up instead of answering."""
        rate = config.drop_rate
        if rate and random.random() < rate:
            self.injected["dropped_connections"] += 1
            transport = request.transport
            if transport is not None:
                transport.abort()
            raise Dropped()

    def latency_added(self) -> dict[str, float | int]:
        """What latency held the last (at most DELAYS_KEPT) delayed requests for, in ms, as the
        simulator's own clock saw it; /_sim itself never waits."""
        if not self.delays:
            return {"requests": 0}
        held = sorted(self.delays)
        return {
            "requests": len(held),
            "min": round(held[0] * 1000, 3),
            "median": round(statistics.median(held) * 1000, 3),
            "max": round(held[-1] * 1000, 3),
        }

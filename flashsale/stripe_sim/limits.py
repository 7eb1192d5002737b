"""Stripe's request limits at the edge: concurrent requests and requests per second.

Both are checked before a request's params are read, like Stripe's edge, and every refusal is
counted by its `Stripe-Rate-Limited-Reason`.
"""

from __future__ import annotations

import time
from collections import Counter

from flashsale.stripe_sim.api_errors import StripeApiError
from flashsale.stripe_sim.config import SimConfig

RATE_LIMITED = (
    "Request rate limit exceeded. You can learn more about rate limits here "
    "https://stripe.com/docs/rate-limits."
)
CONCURRENCY_LIMITED = (
    "This request was rate limited because too many concurrent requests were in flight. You "
    "can learn more about rate limits here https://stripe.com/docs/rate-limits."
)


class TokenBucket:
    """Refills `rate` tokens per second up to one second's worth, so bursts stay near the rate."""

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.capacity = max(rate, 1.0)
        self.tokens = self.capacity
        self.stamp = now

    def take(self, now: float) -> bool:
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class Limits:
    """The account's limits in force; requests in flight are counted by enter() and leave()."""

    def __init__(self, config: SimConfig) -> None:
        self.in_flight = 0
        self.refused: Counter[str] = Counter()  # by Stripe-Rate-Limited-Reason
        self.concurrency = 0
        self.bucket: TokenBucket | None = None
        self.configure(config)

    def configure(self, config: SimConfig) -> None:
        self.concurrency = config.concurrency_limit
        rate = config.rate_per_s
        self.bucket = None if rate is None else TokenBucket(rate, time.monotonic())

    def enter(self) -> None:
        """Count a request in; refuse it (still counted: call leave()) above the concurrency."""
        self.in_flight += 1
        if self.concurrency and self.in_flight > self.concurrency:
            raise self.limited("global-concurrency", CONCURRENCY_LIMITED)

    def leave(self) -> None:
        self.in_flight -= 1

    def take_rate(self) -> None:
        """One request of the account's rate budget (secret keys only; see the server)."""
        if self.bucket is not None and not self.bucket.take(time.monotonic()):
            raise self.limited("global-rate", RATE_LIMITED)

    def limited(self, reason: str, message: str) -> StripeApiError:
        self.refused[reason] += 1
        return StripeApiError(
            429, message, code="rate_limit", headers={"Stripe-Rate-Limited-Reason": reason}
        )

    def stats(self) -> dict[str, int]:
        return {"total": sum(self.refused.values()), **self.refused}

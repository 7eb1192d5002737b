"""Stripe's request limits: per account and per named operation, each a rate and a
concurrency, and a lock per object that concurrent updates of it wait on.

The account and operation limits are checked before a request's params are read, like Stripe's
edge; every refusal is counted by its `Stripe-Rate-Limited-Reason` (global-rate,
global-concurrency, endpoint-rate, endpoint-concurrency, resource-specific).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator

from flashsale.core.stripe_limits import PAYMENT_INTENT_UPDATES_PER_HOUR
from flashsale.stripe_sim.api_errors import StripeApiError
from flashsale.stripe_sim.config import SimConfig

RATE_LIMITED = (
    "Request rate limit exceeded. You can learn more about rate limits here "
    "https://stripe.com/docs/rate-limits."
)
LOCK_TIMEOUT = (
    "This object cannot be accessed right now because another API request or Stripe process is "
    "currently accessing it. If you see this error intermittently, retry the request. If you see "
    "this error frequently and are making multiple concurrent requests to a single object, make "
    "your requests serially or at a lower rate. See https://stripe.com/docs/rate-limits for more "
    "information."
)
LOCK_WAIT_S = 1.0  # how long an update waits for another one on the same object
TOO_MANY_UPDATES = (
    "This PaymentIntent has been updated too many times: at most "
    f"{PAYMENT_INTENT_UPDATES_PER_HOUR:,} update requests per PaymentIntent per hour. See "
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


class ObjectLock:
    """One object's lock and how many requests hold or wait for it (forgotten at zero)."""

    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class Limits:
    """The account's limits in force; requests in flight are counted by enter() and leave()."""

    def __init__(self, config: SimConfig) -> None:
        self.in_flight = 0
        self.in_flight_by_endpoint: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()  # by Stripe-Rate-Limited-Reason
        self.concurrency = 0
        self.endpoint_concurrency = 0
        self.endpoint_rate: float | None = None
        self.bucket: TokenBucket | None = None
        self.endpoint_buckets: dict[str, TokenBucket] = {}
        self.locks: dict[str, ObjectLock] = {}
        # Updates per PaymentIntent in the current clock hour (a fixed window: the dict holds
        # one hour of updated objects at most).
        self.updates: Counter[str] = Counter()
        self.updates_hour = 0
        self.configure(config)

    def configure(self, config: SimConfig) -> None:
        self.concurrency = config.concurrency_limit
        self.endpoint_concurrency = config.endpoint_concurrency_limit
        rate = config.rate_per_s
        self.bucket = None if rate is None else TokenBucket(rate, time.monotonic())
        self.endpoint_rate = config.endpoint_rate_per_s
        self.endpoint_buckets = {}

    def enter(self, endpoint: str) -> None:
        """Count a request in; refuse it above a concurrency (still counted: call leave())."""
        self.in_flight += 1
        self.in_flight_by_endpoint[endpoint] += 1
        if self.concurrency and self.in_flight > self.concurrency:
            raise self.limited("global-concurrency", CONCURRENCY_LIMITED)
        if self.endpoint_concurrency and (
            self.in_flight_by_endpoint[endpoint] > self.endpoint_concurrency
        ):
            raise self.limited("endpoint-concurrency", CONCURRENCY_LIMITED)

    def leave(self, endpoint: str) -> None:
        self.in_flight -= 1
        self.in_flight_by_endpoint[endpoint] -= 1

    def take_rate(self, endpoint: str) -> None:
        """One request of the account's and the operation's budgets (secret keys only)."""
        now = time.monotonic()
        if self.bucket is not None and not self.bucket.take(now):
            raise self.limited("global-rate", RATE_LIMITED)
        if self.endpoint_rate is not None:
            bucket = self.endpoint_buckets.get(endpoint)
            if bucket is None:
                bucket = self.endpoint_buckets[endpoint] = TokenBucket(self.endpoint_rate, now)
            if not bucket.take(now):
                raise self.limited("endpoint-rate", RATE_LIMITED)

    @contextlib.asynccontextmanager
    async def object_lock(self, ident: str | None) -> AsyncIterator[None]:
        """Updates of one object run one at a time; one that waits too long is a lock_timeout."""
        if ident is None:
            yield
            return
        held = self.locks.get(ident)
        if held is None:
            held = self.locks[ident] = ObjectLock()
        held.users += 1
        try:
            try:
                await asyncio.wait_for(held.lock.acquire(), LOCK_WAIT_S)
            except TimeoutError:
                refusal = self.limited("resource-specific", LOCK_TIMEOUT, "lock_timeout")
                refusal.headers["Stripe-Should-Retry"] = "true"
                raise refusal from None
            try:
                yield
            finally:
                held.lock.release()
        finally:
            held.users -= 1
            if not held.users:
                del self.locks[ident]

    def count_update(self, ident: str) -> None:
        """One update request of a PaymentIntent; past the hour's 1,000 it is refused."""
        hour = int(time.time() // 3600)
        if hour != self.updates_hour:
            self.updates_hour = hour
            self.updates.clear()
        if self.updates[ident] >= PAYMENT_INTENT_UPDATES_PER_HOUR:
            raise self.limited("resource-specific", TOO_MANY_UPDATES)
        self.updates[ident] += 1

    def limited(self, reason: str, message: str, code: str = "rate_limit") -> StripeApiError:
        self.refused[reason] += 1
        return StripeApiError(
            429, message, code=code, headers={"Stripe-Rate-Limited-Reason": reason}
        )

    def stats(self) -> dict[str, int]:
        return {"total": sum(self.refused.values()), **self.refused}

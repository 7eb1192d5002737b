"""Stripe-style request limits: a token bucket for requests per second."""

from __future__ import annotations


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

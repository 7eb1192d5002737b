"""The flashsale error tree: every error a user can cause or meet, each mapped to one clear line.

FlashsaleError
 ├── ConfigError                 bad settings, flags or environment
 │    └── LiveStripeKeyRefused   a live key without --allow-live-stripe
 ├── ServiceError                something we depend on is missing or broken
 │    ├── RedisUnavailable
 │    └── ComponentFailed        a child process (redis, sim, server, worker) did not start
 ├── OutputError                 a report or log could not be written (disk full, read-only):
 │                               exit 4, so it is never taken for a failed check
 ├── OrderError                  the sale refused an order
 │    ├── SoldOut
 │    ├── OrderNotFound
 │    └── InvalidTransition      an order state change the state machine forbids
 └── PaymentError                Stripe said something the pipeline cannot turn into an outcome
      ├── StripeAuthError        the secret key was refused: stop charging, do not retry
      └── StripeUnavailable      rate limited, 5xx or unreachable: retry later with backoff

The CLI catches FlashsaleError in one place and prints ``str(error)``; anything else is a bug.
"""

from __future__ import annotations


class FlashsaleError(Exception):
    """Base of every error flashsale raises on purpose."""

    exit_code = 1


class ConfigError(FlashsaleError):
    exit_code = 2


class LiveStripeKeyRefused(ConfigError):
    pass


class ServiceError(FlashsaleError):
    pass


class RedisUnavailable(ServiceError):
    pass


class ComponentFailed(ServiceError):
    pass


class OutputError(FlashsaleError):
    exit_code = 4


class OrderError(FlashsaleError):
    pass


class SoldOut(OrderError):
    pass


class NotHeld(OrderError):
    """With the waiting room on: no unit is held for this customer (not admitted, or lapsed)."""


class OrderInProgress(OrderError):
    """With the waiting room on: the customer's held unit already has an order with Stripe."""


class OrderNotFound(OrderError):
    pass


class InvalidTransition(OrderError):
    pass


class PaymentError(FlashsaleError):
    pass


class StripeAuthError(PaymentError):
    pass


class StripeUnavailable(PaymentError):
    """Stripe gave no answer worth keeping. `outcome_known`: it certainly did not process the
    request (429, or no connection); otherwise (a timeout, a cut connection, a 5xx, another
    request with the key in flight) it may have committed it, and only Stripe can say."""

    def __init__(self, message: str, outcome_known: bool = False) -> None:
        super().__init__(message)
        self.outcome_known = outcome_known

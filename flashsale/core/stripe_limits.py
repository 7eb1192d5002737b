"""Stripe's documented request limits and the one parser of a limit named by mode or number."""

from __future__ import annotations

from flashsale.errors import ConfigError
from flashsale.units import parse_rate

# Requests per second per account (docs.stripe.com/rate-limits): a sandbox (test mode) 25,
# live mode 100.
STRIPE_LIMITS = {"test": 25.0, "live": 100.0}
# Each named API operation (POST /v1/payment_intents, GET /v1/payment_intents/{id}, ...) also
# has its own limit, 25 requests per second unless the docs say otherwise, in both modes.
ENDPOINT_LIMIT = 25.0
# And a PaymentIntent takes at most 1,000 update requests an hour.
PAYMENT_INTENT_UPDATES_PER_HOUR = 1000
UNLIMITED = ("off", "none", "unlimited")


def parse_limit(value: object, what: str) -> float | None:
    """'test' (25/s), 'live' (100/s), 'off' or a positive rate ('40', '40/s') -> per second;
    None for no limit."""
    text = str(value).strip().lower()
    if text in UNLIMITED:
        return None
    if text in STRIPE_LIMITS:
        return STRIPE_LIMITS[text]
    try:
        if isinstance(value, bool):
            raise ConfigError("a flag, not a rate")
        return parse_rate(text, what)
    except ConfigError:
        raise ConfigError(
            f"{what} must be 'test' ({STRIPE_LIMITS['test']:g}/s), 'live' "
            f"({STRIPE_LIMITS['live']:g}/s), 'off' or a positive number of requests per second, "
            f"not {value!r}"
        ) from None


def describe_limit(value: object) -> str:
    """How a limit is shown: 'off', 'test', 'live' or the number per second ('7')."""
    rate = parse_limit(value, "rate limit")
    text = str(value).strip().lower()
    return "off" if rate is None else text if text in STRIPE_LIMITS else f"{rate:g}"


def endpoint_limit_of(account: object, per_operation: object = "auto") -> float | None:
    """The limit of one named operation (POST /v1/charges, ...): 'stripe' (the documented
    25/s), 'off', a number, or 'auto': what the account's limit implies, Stripe's 25/s when it
    is one of Stripe's modes ('test', 'live'), none otherwise (a bare number, 'off')."""
    text = str(per_operation).strip().lower()
    if text in ("auto", ""):
        return ENDPOINT_LIMIT if str(account).strip().lower() in STRIPE_LIMITS else None
    if text == "stripe":
        return ENDPOINT_LIMIT
    if text in STRIPE_LIMITS:
        raise ConfigError(
            f"endpoint rate limit: Stripe's per-operation limit is {ENDPOINT_LIMIT:g}/s in both "
            "modes; say 'stripe', 'auto', 'off' or a number"
        )
    return parse_limit(per_operation, "endpoint rate limit")


def describe_endpoint_limit(account: object, per_operation: object = "auto") -> str:
    """How a per-operation limit is kept and shown: 'auto', 'stripe', 'off' or the number."""
    rate = endpoint_limit_of(account, per_operation)  # refuses a bad one
    text = str(per_operation).strip().lower() or "auto"
    if text in ("auto", "stripe") or rate is None:
        return text if text in ("auto", "stripe") else "off"
    return f"{rate:g}"

"""One Stripe request budget shared by every worker process and thread: a GCRA bucket in Redis."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import redis

from flashsale.core import keys
from flashsale.core.auto_admission import BUDGET_SHARE
from flashsale.core.stripe_limits import STRIPE_LIMITS, endpoint_limit_of, parse_limit
from flashsale.errors import ConfigError
from flashsale.settings import Settings

# 'auto' keeps this share of the limit: against real Stripe the account's other traffic (the
# Dashboard, refunds, webhooks replays) spends the same budget; the simulator has no other user.
STRIPE_HEADROOM = 0.9
SIMULATOR_HEADROOM = 0.99

# Generic cell rate algorithm: one key holds the theoretical arrival time (TAT, microseconds on
# Redis's clock, so every host agrees) of the next free slot. A caller reserves the next slot and
# learns how long to sleep until it; slots are 1/rate apart, `burst` of them may be due at once.
# A slot further away than max_wait is not taken, so a refused caller costs the others nothing.
_RESERVE = """
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then
  tat = now
end
local wait = tat - tolerance - now
if wait < 0 then
  wait = 0
end
if wait > max_wait then
  return {0, wait}
end
local next_tat = tat + interval
local ttl_ms = math.ceil((next_tat - now) / 1000) + 1000
redis.call('SET', KEYS[1], string.format('%d', next_tat), 'PX', ttl_ms)
return {1, wait}
"""


def budget_key(secret_key: str) -> str:
    """One budget per Stripe account (its secret key), never the key itself in Redis."""
    digest = hashlib.sha256(secret_key.encode()).hexdigest()[:16]
    return f"{keys.PREFIX}stripe-budget:{digest}"


@dataclass(frozen=True)
class Reservation:
    granted: bool
    wait_s: float  # until the slot (granted), or until the next free slot (refused)


class RateBudget:
    """At most `rate` requests per second (plus `burst` at once) across everyone sharing `key`."""

    def __init__(
        self,
        client: redis.Redis,
        key: str,
        rate: float,
        burst: int = 1,
        max_wait_s: float = 5.0,
    ) -> None:
        if rate <= 0:
            raise ConfigError("a Stripe rate budget needs a positive rate")
        self.client = client
        self.key = key
        self.rate = rate
        self.burst = max(1, burst)
        self.max_wait_s = max_wait_s
        self._script = client.register_script(_RESERVE)
        self._interval_us = 1_000_000 / rate

    def reserve(self) -> Reservation:
        """Take the next slot if it is at most max_wait_s away; say how long until it."""
        granted, wait_us = self._script(
            keys=[self.key],
            args=[
                repr(self._interval_us),
                repr((self.burst - 1) * self._interval_us),
                repr(self.max_wait_s * 1_000_000),
            ],
        )
        return Reservation(bool(granted), int(wait_us) / 1_000_000)

    def acquire(self) -> Reservation:
        """Wait for a slot (at most max_wait_s); refused means: try again later, nothing spent."""
        reservation = self.reserve()
        if reservation.granted and reservation.wait_s > 0:
            time.sleep(reservation.wait_s)
        return reservation


def parse_rate(text: str) -> float | None | str:
    """--stripe-rate: 'auto', 'off' (None), 'test', 'live' or requests per second."""
    value = text.strip().lower()
    if value in ("auto", ""):
        return "auto"
    if value == "0":
        return None
    try:
        return parse_limit(value, "--stripe-rate")
    except ConfigError:
        raise ConfigError(
            f"--stripe-rate takes auto, off, test, live or requests per second, not {text!r}"
        ) from None


def stripe_limit_of(
    stripe_mode: str, stripe_limit: str | None = None, endpoint_limit: str | None = None
) -> float | None:
    """The request limit the workers' charges meet at the Stripe they talk to: the account's
    (`--stripe-limit`: 'test', 'live', 'off' or a number; or the key's mode against Stripe) or,
    when lower, the limit of the one operation they repeat (POST /v1/charges: Stripe's 25/s per
    endpoint with 'test' or 'live', or `--stripe-endpoint-limit`). A simulator's is whatever
    it was started with, so without one given it is unknown (None)."""
    if stripe_limit:
        account: str | None = stripe_limit
        overall = parse_limit(stripe_limit, "--stripe-limit")
    elif stripe_mode == "simulator":
        account, overall = None, None
    else:
        account = stripe_mode if stripe_mode in STRIPE_LIMITS else "test"
        overall = STRIPE_LIMITS[account]
    per_operation = endpoint_limit_of(account or "off", endpoint_limit or "auto")
    known = [limit for limit in (overall, per_operation) if limit is not None]
    return min(known) if known else None


def auto_rate(
    stripe_mode: str, stripe_limit: str | None = None, endpoint_limit: str | None = None
) -> float | None:
    """The default budget: a share of the limit the workers' charges meet (none when that limit
    is unknown or off)."""
    limit = stripe_limit_of(stripe_mode, stripe_limit, endpoint_limit)
    share = SIMULATOR_HEADROOM if stripe_mode == "simulator" else STRIPE_HEADROOM
    return None if limit is None else limit * share


def admission_budget(settings: Settings) -> float | None:
    """Charges a second the waiting room's `auto` admission may bring about: at most
    auto_admission.BUDGET_SHARE of the Stripe limit, and no more than the workers' budget;
    None when neither is known (a simulator started without --stripe-limit)."""
    limits = (settings.stripe_mode, settings.stripe_limit, settings.stripe_endpoint_limit)
    limit = stripe_limit_of(*limits)
    rate = parse_rate(settings.stripe_rate)
    workers = auto_rate(*limits) if isinstance(rate, str) else rate
    shares = [value for value in (limit and limit * BUDGET_SHARE, workers) if value]
    return min(shares) if shares else None

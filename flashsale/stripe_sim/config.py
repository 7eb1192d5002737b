"""Rehearsal controls of the simulator (rate limit, concurrency, latency, faults), checked."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from flashsale.core.stripe_limits import (
    STRIPE_LIMITS,
    describe_endpoint_limit,
    describe_limit,
    endpoint_limit_of,
    parse_limit,
)
from flashsale.errors import ConfigError
from flashsale.units import Spread, parse_spread

# A sampled delay never exceeds this, so one unlucky draw cannot hang a rehearsal.
MAX_LATENCY_S = 60.0
# Delay added to each API request: fixed, or lognormal fitted to a p50 and a p99.
Latency = Spread


def parse_latency(text: object) -> Latency:
    """'0', '200ms', '0.2s' or 'lognormal:p50=80ms,p99=600ms'."""
    return parse_spread(text, "latency", maximum_s=MAX_LATENCY_S)


def check_fraction(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ConfigError(f"{what} must be a number between 0 and 1, not {value!r}")
    return float(value)


def check_flag(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{what} must be true or false, not {value!r}")
    return value


def check_count(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{what} must be a whole number >= 0, not {value!r}")
    return value


@dataclass(frozen=True)
class SimConfig:
    """The controls in force; immutable, swapped whole by POST /_sim/config."""

    rate_limit: str = "off"  # as given, for display
    rate_per_s: float | None = None
    concurrency_limit: int = 0  # 0 = unlimited
    # Per named operation, like Stripe's 25/s; 'auto' follows rate_limit's preset.
    endpoint_rate_limit: str = "auto"
    endpoint_rate_per_s: float | None = None
    endpoint_concurrency_limit: int = 0  # per named operation; 0 = unlimited
    latency: Latency = dataclasses.field(default_factory=Latency)
    error_rate: float = 0.0
    drop_rate: float = 0.0
    idempotency_ttl_s: int = 86400
    # Webhook faults: delay before each delivery, and shares of events never delivered,
    # delivered twice, or held back so later events overtake them.
    webhook_latency: Latency = dataclasses.field(default_factory=Latency)
    webhook_drop_rate: float = 0.0
    webhook_duplicate_rate: float = 0.0
    webhook_out_of_order_rate: float = 0.0
    # Raw card numbers with a secret key: most real accounts refuse them; Stripe.js and the
    # publishable key may always send them (that is how Elements tokenizes).
    allow_raw_cards: bool = False

    @classmethod
    def from_options(
        cls,
        rate_limit: str = "off",
        concurrency_limit: int = 0,
        endpoint_rate_limit: str = "auto",
        endpoint_concurrency_limit: int = 0,
        latency: str = "0",
        error_rate: float = 0.0,
        drop_rate: float = 0.0,
        idempotency_ttl_s: int = 86400,
        webhook_latency: str = "0",
        webhook_drop_rate: float = 0.0,
        webhook_duplicate_rate: float = 0.0,
        webhook_out_of_order_rate: float = 0.0,
        allow_raw_cards: bool = False,
    ) -> SimConfig:
        """Build from CLI-style values; any bad value is a ConfigError with a clear message."""
        rate = parse_limit(rate_limit, "rate limit")
        shown = describe_limit(rate_limit)
        ttl = check_count(idempotency_ttl_s, "idempotency TTL (seconds)")
        if ttl == 0:
            raise ConfigError("idempotency TTL must be at least 1 second")
        return cls(
            rate_limit=shown,
            rate_per_s=rate,
            concurrency_limit=check_count(concurrency_limit, "concurrency limit"),
            endpoint_rate_limit=describe_endpoint_limit(rate_limit, endpoint_rate_limit),
            endpoint_rate_per_s=endpoint_limit_of(rate_limit, endpoint_rate_limit),
            endpoint_concurrency_limit=check_count(
                endpoint_concurrency_limit, "endpoint concurrency limit"
            ),
            latency=parse_latency(latency),
            error_rate=check_fraction(error_rate, "error rate"),
            drop_rate=check_fraction(drop_rate, "drop rate"),
            idempotency_ttl_s=ttl,
            webhook_latency=parse_spread(
                webhook_latency, "webhook latency", maximum_s=MAX_LATENCY_S
            ),
            webhook_drop_rate=check_fraction(webhook_drop_rate, "webhook drop rate"),
            webhook_duplicate_rate=check_fraction(webhook_duplicate_rate, "webhook duplicate rate"),
            webhook_out_of_order_rate=check_fraction(
                webhook_out_of_order_rate, "webhook out-of-order rate"
            ),
            allow_raw_cards=check_flag(allow_raw_cards, "allow_raw_cards"),
        )

    def with_changes(self, changes: Mapping[str, object]) -> SimConfig:
        """Apply a JSON object of changes from POST /_sim/config; unknown keys are refused."""
        current = self.as_dict()
        unknown = sorted(set(changes) - set(current))
        if unknown:
            raise ConfigError(
                f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(current))}"
            )
        merged = {**current, **changes}
        latency = merged["latency"]
        return SimConfig.from_options(
            rate_limit=merged["rate_limit"],  # type: ignore[arg-type]
            concurrency_limit=merged["concurrency_limit"],  # type: ignore[arg-type]
            endpoint_rate_limit=merged["endpoint_rate_limit"],  # type: ignore[arg-type]
            endpoint_concurrency_limit=merged["endpoint_concurrency_limit"],  # type: ignore[arg-type]
            latency=latency,  # type: ignore[arg-type]
            error_rate=merged["error_rate"],  # type: ignore[arg-type]
            drop_rate=merged["drop_rate"],  # type: ignore[arg-type]
            idempotency_ttl_s=merged["idempotency_ttl_s"],  # type: ignore[arg-type]
            webhook_latency=merged["webhook_latency"],  # type: ignore[arg-type]
            webhook_drop_rate=merged["webhook_drop_rate"],  # type: ignore[arg-type]
            webhook_duplicate_rate=merged["webhook_duplicate_rate"],  # type: ignore[arg-type]
            webhook_out_of_order_rate=merged["webhook_out_of_order_rate"],  # type: ignore[arg-type]
            allow_raw_cards=merged["allow_raw_cards"],  # type: ignore[arg-type]
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "rate_limit": self.rate_limit,
            "concurrency_limit": self.concurrency_limit,
            "endpoint_rate_limit": self.endpoint_rate_limit,
            "endpoint_concurrency_limit": self.endpoint_concurrency_limit,
            "latency": str(self.latency),
            "error_rate": self.error_rate,
            "drop_rate": self.drop_rate,
            "idempotency_ttl_s": self.idempotency_ttl_s,
            "webhook_latency": str(self.webhook_latency),
            "webhook_drop_rate": self.webhook_drop_rate,
            "webhook_duplicate_rate": self.webhook_duplicate_rate,
            "webhook_out_of_order_rate": self.webhook_out_of_order_rate,
            "allow_raw_cards": self.allow_raw_cards,
        }

    def describe(self) -> str:
        """One line for the start-up log: every setting in force."""
        rate = self.rate_limit
        if self.rate_limit in STRIPE_LIMITS:
            rate = f"{self.rate_limit} ({self.rate_per_s:g}/s)"
        elif self.rate_per_s is not None:
            rate = f"{self.rate_per_s:g}/s"
        return (
            f"rate_limit={rate}, concurrency_limit={self.concurrency_limit or 'off'}, "
            f"endpoint_rate_limit={self.describe_endpoint_rate()}, "
            f"endpoint_concurrency_limit={self.endpoint_concurrency_limit or 'off'}, "
            f"latency={self.latency}, error_rate={self.error_rate:g}, "
            f"drop_rate={self.drop_rate:g}, idempotency_ttl={self.idempotency_ttl_s}s, "
            f"raw_cards={'allowed' if self.allow_raw_cards else 'publishable key only'}"
            + self.describe_webhook_faults()
        )

    def describe_endpoint_rate(self) -> str:
        rate = self.endpoint_rate_per_s
        return "off" if rate is None else f"{self.endpoint_rate_limit} ({rate:g}/s)"

    def describe_webhook_faults(self) -> str:
        faults = [
            f"{name}={value:g}"
            for name, value in (
                ("webhook_drop_rate", self.webhook_drop_rate),
                ("webhook_duplicate_rate", self.webhook_duplicate_rate),
                ("webhook_out_of_order_rate", self.webhook_out_of_order_rate),
            )
            if value
        ]
        if self.webhook_latency.is_lognormal or self.webhook_latency.fixed_s:
            faults.insert(0, f"webhook_latency={self.webhook_latency}")
        return "".join(", " + fault for fault in faults)

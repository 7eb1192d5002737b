"""Durations, rates and shares: the one parser of each, so a value means the same on every flag.

A duration always carries its unit ('250ms', '60s', '2m'); a bare number other than 0 is refused
with the unit to write, because flags once disagreed on what one meant (milliseconds for the
simulator's latency, seconds for loadgen's timeout). A bare rate is per second everywhere.
Options typed as plain numbers (`--drain-timeout 60`, `--stripe-timeout 10`) say "seconds" in
their help, and so does every scenario key that takes one. A moment (`reconcile --since`) is a
duration ago or an ISO 8601 time.
"""

from __future__ import annotations

import datetime
import math
import random
import re
import time
from dataclasses import dataclass

from flashsale.errors import ConfigError

DURATION_UNITS = {
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(us|µs|ms|s|m|min|h)?\s*$")
# z-score of the 99th percentile of a standard normal: turns (p50, p99) into a lognormal sigma.
Z_P99 = 2.3263478740408408
_RATE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(?:/\s*(s|sec|m|min))?\s*$")


def parse_duration(
    text: object, what: str = "duration", *, maximum_s: float | None = None
) -> float:
    """'250ms', '60s', '2m', '1.5h', '0' -> seconds; else a ConfigError naming `what`."""
    if isinstance(text, bool) or not isinstance(text, str | int | float):
        raise ConfigError(f"{what} must be a duration like 250ms, 60s or 2m, not {text!r}")
    match = _DURATION.match(str(text))
    if not match:
        raise ConfigError(
            f"{what} must be a duration, a time like 250ms, 60s or 2m ({text!r} is not a duration)"
        )
    number, unit = float(match.group(1)), match.group(2)
    if unit is None and number != 0:
        value = match.group(1)
        raise ConfigError(f"{what} {text!r} has no unit: write {value}ms or {value}s")
    seconds = number * DURATION_UNITS[unit or "s"]
    if maximum_s is not None and seconds > maximum_s:
        raise ConfigError(f"{what} must be at most {format_duration(maximum_s)}, not {text!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """The short form parse_duration reads back: '0', '250ms', '1.5s', '2m'."""
    if seconds == 0:
        return "0"
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"


def parse_rate(text: object, what: str = "rate") -> float:
    """'200/s', '600/m', '200' (per second) -> a positive number of arrivals per second."""
    match = _RATE.match(str(text)) if not isinstance(text, bool) else None
    if not match:
        raise ConfigError(f"{what} {text!r} is not a rate like 200/s")
    per_s = float(match.group(1)) / (60.0 if match.group(2) in ("m", "min") else 1.0)
    if not (per_s > 0 and math.isfinite(per_s)):
        raise ConfigError(f"{what} must be above zero")
    return per_s


def parse_share(text: str, what: str) -> float:
    """'10%' -> 0.1 (above zero)."""
    try:
        share = float(text.strip().removesuffix("%")) / 100
    except ValueError:
        raise ConfigError(f"{what} {text!r} is not a share like 10%") from None
    if not share > 0:
        raise ConfigError(f"{what} must be above zero")
    return share


def parse_share_or_duration(text: str, what: str) -> tuple[float | None, float | None]:
    """'10%' -> (None, 0.1); '500ms' -> (0.5, None): a relative or an absolute limit."""
    if text.strip().endswith("%"):
        return None, parse_share(text, what)
    return parse_duration(text, what), None


@dataclass(frozen=True)
class Spread:
    """A duration that varies: fixed, or lognormal fitted to a p50 and a p99 (how long people
    and networks take is skewed: most are quick, a few take many times as long). A draw never
    exceeds max_s, so one unlucky draw cannot hang a run."""

    fixed_s: float = 0.0
    p50_s: float = 0.0
    p99_s: float = 0.0
    max_s: float = math.inf

    @property
    def is_lognormal(self) -> bool:
        return self.p50_s > 0

    def sample(self, rng: random.Random | None = None) -> float:
        if not self.is_lognormal:
            return self.fixed_s
        sigma = (math.log(self.p99_s) - math.log(self.p50_s)) / Z_P99
        return min((rng or random).lognormvariate(math.log(self.p50_s), sigma), self.max_s)

    def __str__(self) -> str:
        if self.is_lognormal:
            return f"lognormal:p50={format_duration(self.p50_s)},p99={format_duration(self.p99_s)}"
        return format_duration(self.fixed_s)


def parse_spread(text: object, what: str, *, maximum_s: float) -> Spread:
    """'0', '200ms', '0.2s' or 'lognormal:p50=80ms,p99=600ms' (each at most maximum_s)."""
    if isinstance(text, bool) or not isinstance(text, str | int | float):
        raise ConfigError(f"{what} must be a string like '200ms', not {text!r}")
    spec = str(text).strip().lower()
    if not spec.startswith("lognormal"):
        return Spread(fixed_s=parse_duration(spec, what, maximum_s=maximum_s), max_s=maximum_s)
    usage = f"{what} must look like 'lognormal:p50=80ms,p99=600ms'"
    _, _, args = spec.partition(":")
    given: dict[str, float] = {}
    for part in filter(None, (piece.strip() for piece in args.split(","))):
        name, sep, value = part.partition("=")
        if not sep or name.strip() not in ("p50", "p99"):
            raise ConfigError(f"{usage}, not {text!r}")
        given[name.strip()] = parse_duration(value, f"{what} {name.strip()}", maximum_s=maximum_s)
    if set(given) != {"p50", "p99"}:
        raise ConfigError(f"{usage} (both p50 and p99), not {text!r}")
    if not 0 < given["p50"] <= given["p99"]:
        raise ConfigError(f"{what} needs 0 < p50 <= p99, not {text!r}")
    return Spread(p50_s=given["p50"], p99_s=given["p99"], max_s=maximum_s)


def parse_since(text: str, what: str = "--since") -> int:
    """'2h' (that long ago) or an ISO 8601 time ('2026-12-03T14:00:00Z') -> a Unix time;
    a time without its zone is UTC."""
    try:
        return int(time.time() - parse_duration(text, what))
    except ConfigError:
        pass
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"{what} must be a duration (2h, 90m) or an ISO 8601 time "
            f"(2026-12-03T14:00:00Z), not {text!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return int(moment.timestamp())

"""What a load run does: arrival schedules (open, closed, doors-open), test cards, its options."""

from __future__ import annotations

import dataclasses
import functools
import math
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flashsale.errors import ConfigError
from flashsale.loadgen.stats import DEFAULT_SLOS, Slo, parse_slo
from flashsale.units import (
    Spread,
    parse_duration,
    parse_rate,
    parse_share,
    parse_share_or_duration,
    parse_spread,
)


@dataclass(frozen=True)
class TestCard:
    """A Stripe test card: the raw number for tokenization, the `tok_` alias for test mode."""

    name: str
    number: str
    token: str | None  # None: Stripe has no ready-made token for it (it fails at tokenization)
    expect: str  # the outcome a customer sees with this card: succeeded | declined | abandoned
    # A card that asks for 3D Secure (on PaymentIntents): what its customer does with the
    # challenge: complete it, fail it, or leave the page without answering (the worker cancels
    # the PaymentIntent after its --authentication-timeout and the unit goes back). None: the
    # card asks for none.
    challenge: str | None = None


# Stripe's documented test cards (docs.stripe.com/testing), keyed by the code they produce.
TEST_CARDS: dict[str, TestCard] = {
    card.name: card
    for card in (
        TestCard("visa", "4242424242424242", "tok_visa", "succeeded"),
        TestCard("visa_debit", "4000056655665556", "tok_visa_debit", "succeeded"),
        TestCard("mastercard", "5555555555554444", "tok_mastercard", "succeeded"),
        TestCard("amex", "378282246310005", "tok_amex", "succeeded"),
        TestCard("generic_decline", "4000000000000002", "tok_chargeDeclined", "declined"),
        TestCard(
            "insufficient_funds",
            "4000000000009995",
            "tok_chargeDeclinedInsufficientFunds",
            "declined",
        ),
        TestCard("lost_card", "4000000000009987", "tok_chargeDeclinedLostCard", "declined"),
        TestCard("stolen_card", "4000000000009979", "tok_chargeDeclinedStolenCard", "declined"),
        TestCard("expired_card", "4000000000000069", "tok_chargeDeclinedExpiredCard", "declined"),
        TestCard("incorrect_cvc", "4000000000000127", "tok_chargeDeclinedIncorrectCvc", "declined"),
        TestCard(
            "processing_error",
            "4000000000000119",
            "tok_chargeDeclinedProcessingError",
            "declined",
        ),
        TestCard(
            "velocity_exceeded",
            "4000000000006975",
            "tok_chargeDeclinedVelocityLimitExceeded",
            "declined",
        ),
        TestCard("fraudulent", "4100000000000019", "tok_radarBlock", "declined"),
        # Asks for 3D Secure: on PaymentIntents the customer authenticates, then it succeeds;
        # the Charges API cannot authenticate and declines it (authentication_required).
        TestCard(
            "three_d_secure",
            "4000000000003220",
            "tok_threeDSecure2Required",
            "succeeded",
            challenge="complete",
        ),
        TestCard(
            "three_d_secure_failed",
            "4000000000003220",
            "tok_threeDSecure2Required",
            "declined",
            challenge="fail",
        ),
        TestCard(
            "three_d_secure_abandoned",
            "4000000000003220",
            "tok_threeDSecure2Required",
            "abandoned",
            challenge="abandon",
        ),
        # Authenticates, then the issuer declines it (insufficient_funds), as Stripe documents.
        TestCard(
            "three_d_secure_then_declined",
            "4000008260003178",
            "tok_authenticationRequiredChargeDeclinedInsufficientFunds",
            "declined",
            challenge="complete",
        ),
        # Fails the Luhn check: Stripe refuses it at tokenization, before any charge.
        TestCard("incorrect_number", "4242424242424241", None, "declined"),
    )
}

DEFAULT_CARDS = "visa=85,insufficient_funds=5,generic_decline=5,expired_card=3,incorrect_cvc=2"
TOKENIZE_MODES = ("auto", "raw", "test-tokens")
MAX_PATIENCE_S = 4 * 3600.0


def parse_patience(text: object) -> Spread:
    """--patience: how long one customer waits in a waiting room's queue before leaving; each
    customer draws their own from it ('20m', or 'lognormal:p50=10m,p99=60m')."""
    patience = parse_spread(text, "--patience", maximum_s=MAX_PATIENCE_S)
    if not patience.is_lognormal and patience.fixed_s <= 0:
        raise ConfigError(f"--patience must be longer than 0, not {text!r}")
    return patience


# Patience is skewed: a few leave at once, most wait minutes, some an hour (call-centre studies
# fit it with lognormals). This default is an assumption, not a measurement of flash-sale
# crowds: give what your own waiting room's data says.
DEFAULT_PATIENCE = parse_patience("lognormal:p50=10m,p99=60m")


@dataclass(frozen=True)
class CardMix:
    """Weighted cards handed out by smooth weighted round-robin, so counts match the mix exactly.

    Random picks would make "outcome counts match the card mix" true only on average; the
    round-robin gives exactly weight_i customers per sum(weights) customers, interleaved.
    """

    weights: tuple[tuple[TestCard, int], ...]

    def sequence(self) -> Iterator[TestCard]:
        total = sum(weight for _, weight in self.weights)
        current = [0] * len(self.weights)
        while True:
            for i, (_, weight) in enumerate(self.weights):
                current[i] += weight
            best = max(range(len(current)), key=current.__getitem__)
            current[best] -= total
            yield self.weights[best][0]

    @functools.cached_property
    def cycle(self) -> tuple[TestCard, ...]:
        """One period of the round-robin: it repeats every sum(weights) customers."""
        return tuple(self.first(sum(weight for _, weight in self.weights)))

    def card_at(self, index: int) -> TestCard:
        """The card of customer `index`, the same whichever process plays that customer."""
        return self.cycle[index % len(self.cycle)]

    def first(self, count: int) -> list[TestCard]:
        cards = self.sequence()
        return [next(cards) for _ in range(count)]

    def expected_counts(self, count: int) -> dict[str, int]:
        """How many of the first `count` customers get each card (ground truth for tests)."""
        counts = {card.name: 0 for card, _ in self.weights}
        for card in self.first(count):
            counts[card.name] += 1
        return counts

    def challenges(self) -> list[str]:
        """The cards of the mix that ask for 3D Secure."""
        return [card.name for card, _ in self.weights if card.challenge is not None]

    def spec(self) -> str:
        return ",".join(f"{card.name}={weight}" for card, weight in self.weights)


def parse_cards(spec: str, tokenize: str = "auto") -> CardMix:
    """Parse `visa=85,insufficient_funds=5`; names are Stripe decline codes or card brands."""
    if tokenize not in TOKENIZE_MODES:
        modes = ", ".join(TOKENIZE_MODES)
        raise ConfigError(f"--tokenize must be one of {modes}, not {tokenize!r}")
    weights: list[tuple[TestCard, int]] = []
    seen: set[str] = set()
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        name, sep, weight_text = part.partition("=")
        name = name.strip()
        if not sep:
            weight_text = "1"
        card = TEST_CARDS.get(name)
        if card is None:
            raise ConfigError(
                f"unknown test card {name!r} in --cards; known: {', '.join(sorted(TEST_CARDS))}"
            )
        if name in seen:
            raise ConfigError(f"test card {name!r} appears twice in --cards")
        seen.add(name)
        try:
            weight = int(weight_text)
        except ValueError:
            raise ConfigError(f"--cards weight for {name!r} must be a whole number") from None
        if weight < 0:
            raise ConfigError(f"--cards weight for {name!r} cannot be negative")
        if tokenize == "test-tokens" and card.token is None and weight:
            raise ConfigError(
                f"test card {name!r} has no tok_ alias; use --tokenize raw to send its number"
            )
        if weight:
            weights.append((card, weight))
    if not weights:
        raise ConfigError("--cards needs at least one card with a positive weight")
    return CardMix(tuple(weights))


@dataclass(frozen=True)
class ArrivalRate:
    """Target arrival rate: constant, or a linear ramp that then holds its end rate."""

    start_per_s: float
    end_per_s: float
    ramp_s: float = 0.0

    def at(self, t: float) -> float:
        if self.ramp_s <= 0 or t >= self.ramp_s:
            return self.end_per_s
        return self.start_per_s + (self.end_per_s - self.start_per_s) * t / self.ramp_s

    def cumulative(self, t: float) -> float:
        """Expected arrivals in [0, t]: the integral of the rate."""
        if self.ramp_s <= 0:
            return self.end_per_s * t
        ramp_t = min(t, self.ramp_s)
        slope = (self.end_per_s - self.start_per_s) / self.ramp_s
        during = self.start_per_s * ramp_t + slope * ramp_t * ramp_t / 2
        return during + self.end_per_s * max(0.0, t - self.ramp_s)

    def time_of(self, n: float) -> float:
        """Inverse of cumulative(): when the n-th expected arrival falls due."""
        if self.ramp_s <= 0:
            return n / self.end_per_s
        ramp_total = self.cumulative(self.ramp_s)
        if n >= ramp_total:
            return self.ramp_s + (n - ramp_total) / self.end_per_s
        a = (self.end_per_s - self.start_per_s) / (2 * self.ramp_s)
        b = self.start_per_s
        if abs(a) < 1e-12:
            return n / b
        # Stable root of a t^2 + b t - n = 0 (avoids cancellation when a is tiny).
        return 2 * n / (b + math.sqrt(b * b + 4 * a * n))


def parse_ramp(text: str) -> ArrivalRate:
    """'10/s:500/s:60s' -> from 10/s to 500/s linearly over 60 s."""
    parts = text.split(":")
    if len(parts) != 3:
        raise ConfigError(f"--ramp {text!r} must be START:END:DURATION, e.g. 10/s:500/s:60s")
    start = parse_rate(parts[0], "--ramp start")
    end = parse_rate(parts[1], "--ramp end")
    ramp_s = parse_duration(parts[2], "--ramp duration")
    if ramp_s <= 0:
        raise ConfigError("--ramp duration must be above zero")
    return ArrivalRate(start, end, ramp_s)


@dataclass(frozen=True)
class Schedule:
    """When each customer arrives, as offsets in seconds from the start of the run.

    Open model: arrivals follow `rate` (evenly spaced, or a Poisson process with that intensity,
    drawn by time-rescaling unit-rate exponential gaps so ramps work too). Closed model:
    `concurrency` customers loop with no schedule. Doors-open: customers get ready on the
    schedule, then all submit at one instant. Bounded by `customers` and/or `duration_s`.
    """

    rate: ArrivalRate | None
    customers: int | None = None
    duration_s: float | None = None
    poisson: bool = False
    seed: int = 0
    concurrency: int | None = None
    doors_open: bool = False

    @property
    def model(self) -> str:
        if self.concurrency is not None:
            return "closed"
        return "doors-open" if self.doors_open else "open"

    def arrivals(self) -> Iterator[float]:
        """Offsets (s) of each scheduled arrival, in order, within the bounds."""
        if self.rate is None:
            return
        rng = random.Random(self.seed)
        n = 0.0
        index = 0
        while self.customers is None or index < self.customers:
            offset = self.rate.time_of(n)
            if self.duration_s is not None and offset >= self.duration_s:
                return
            yield offset
            index += 1
            n += rng.expovariate(1.0) if self.poisson else 1.0

    def describe(self) -> str:
        if self.concurrency is not None:
            return f"closed model, {self.concurrency} concurrent customers"
        assert self.rate is not None
        kind = "poisson " if self.poisson else ""
        if self.rate.ramp_s > 0:
            shape = (
                f"{kind}ramp {self.rate.start_per_s:g}/s -> {self.rate.end_per_s:g}/s "
                f"over {self.rate.ramp_s:g}s"
            )
        else:
            shape = f"{kind}{self.rate.end_per_s:g}/s"
        return f"doors-open (ready at {shape})" if self.doors_open else f"open model, {shape}"


DEFAULT_RATE = "50/s"
# Customers gathering before the doors open: 500/s took ~1.25 of this 2-core machine's cores
# for the generator alone (2.5 ms CPU per journey) on top of the server it loads, and its
# lag made the run invalid; a crowd gathers over tens of seconds, not four.
DEFAULT_DOORS_OPEN_RATE = "100/s"


def build_schedule(
    *,
    rate: str | None = None,
    ramp: str | None = None,
    poisson: bool = False,
    seed: int = 0,
    doors_open: bool = False,
    concurrency: int | None = None,
    customers: int | None = None,
    duration: str | None = None,
) -> Schedule:
    """Turn the load-model flags into a Schedule, refusing contradictions with one clear line."""
    if customers is None and duration is None:
        raise ConfigError("bound the run: give --customers and/or --duration")
    if customers is not None and customers <= 0:
        raise ConfigError("--customers must be above zero")
    duration_s = parse_duration(duration, "--duration") if duration is not None else None
    if duration_s is not None and duration_s <= 0:
        raise ConfigError("--duration must be above zero")
    if rate is not None and ramp is not None:
        raise ConfigError("give either --rate or --ramp, not both")
    if concurrency is not None:
        if concurrency <= 0:
            raise ConfigError("--concurrency must be above zero")
        if rate or ramp or poisson or doors_open:
            raise ConfigError(
                "--concurrency is the closed model; it cannot be combined with "
                "--rate, --ramp, --poisson or --doors-open"
            )
        return Schedule(None, customers, duration_s, concurrency=concurrency)
    if doors_open and customers is None:
        raise ConfigError("--doors-open needs --customers: how many wait for the doors")
    if ramp is not None:
        arrival = parse_ramp(ramp)
    else:
        default = DEFAULT_DOORS_OPEN_RATE if doors_open else DEFAULT_RATE
        per_s = parse_rate(rate or default, "--rate")
        arrival = ArrivalRate(per_s, per_s)
    return Schedule(
        arrival,
        customers,
        duration_s,
        poisson=poisson,
        seed=seed,
        doors_open=doors_open,
    )


@dataclass(frozen=True)
class LoadConfig:
    """Everything one load run is told: the customers to play and how the run is judged."""

    url: str
    schedule: Schedule
    cards: CardMix
    tokenize: str = "auto"
    timeout_s: float = 30.0
    max_in_flight: int | None = None
    slos: tuple[Slo, ...] = ()
    abort_on_fail: bool = False  # stop once an SLO can no longer pass (the report still written)
    report_path: Path | None = None
    html_path: Path | None = None
    csv_prefix: str | None = None  # PREFIX_requests.csv, _failures.csv, _history.csv
    dashboard: bool = True
    status_every_s: float = 5.0
    interval_s: float = 1.0
    max_lag_s: float = 0.1
    max_cpu_percent: float = 90.0
    fallback: bool = True
    # Doors-open release: an absolute limit, or (None) a share of the median e2e it distorts.
    max_release_lag_s: float | None = None
    max_release_lag_ratio: float = 0.10
    # Who plays the customers: N local processes (None: one per core), or N agents.
    processes: int | None = None
    agents: int | None = None
    agents_redis_url: str | None = None
    accept_timeout_s: float = 30.0
    lost_after_s: float = 10.0
    patience: Spread = DEFAULT_PATIENCE
    retry_after_decline: float = 0.0

    def to_spec(self) -> dict[str, Any]:
        """What a shard needs to play its customers, as JSON data (it travels through Celery)."""
        return {
            "url": self.url,
            "schedule": dataclasses.asdict(self.schedule),
            "cards": self.cards.spec(),
            "tokenize": self.tokenize,
            "timeout_s": self.timeout_s,
            "max_in_flight": self.max_in_flight,
            "interval_s": self.interval_s,
            "fallback": self.fallback,
            "patience": str(self.patience),
            "retry_after_decline": self.retry_after_decline,
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> LoadConfig:
        schedule = dict(spec["schedule"])
        rate = schedule.pop("rate")
        return cls(
            url=spec["url"],
            schedule=Schedule(rate=ArrivalRate(**rate) if rate else None, **schedule),
            cards=parse_cards(spec["cards"], spec["tokenize"]),
            tokenize=spec["tokenize"],
            timeout_s=spec["timeout_s"],
            max_in_flight=spec["max_in_flight"],
            interval_s=spec["interval_s"],
            fallback=spec["fallback"],
            patience=parse_patience(spec["patience"]),
            retry_after_decline=spec["retry_after_decline"],
            dashboard=False,
        )


# The options of a load run, as `flashsale loadgen` flags (--max-lag) and scenario keys
# (max_lag) name them; load_config() is the one place that reads and checks them.
OPTION_KINDS: dict[str, str] = {
    "url": "text",
    "customers": "count",
    "duration": "text",
    "rate": "text",
    "ramp": "text",
    "poisson": "flag",
    "seed": "whole",
    "doors_open": "flag",
    "concurrency": "count",
    "max_in_flight": "count",
    "cards": "text",
    "tokenize": "text",
    "timeout": "text",
    "report": "text",
    "html": "text",
    "csv": "text",
    "slo": "texts",
    "no_default_slos": "flag",
    "abort_on_fail": "flag",
    "no_dashboard": "flag",
    "interval": "text",
    "max_lag": "text",
    "max_cpu": "number",
    "max_release_lag": "text",
    "no_fallback": "flag",
    "processes": "count",
    "agents": "count",
    "agents_redis_url": "text",
    "accept_timeout": "text",
    "lost_after": "text",
    "patience": "text",
    "retry_after_decline": "text",
}
DEFAULT_OPTIONS: dict[str, Any] = {
    "url": "http://127.0.0.1:5000",
    "tokenize": "auto",
    "timeout": "30s",
    "interval": "1s",
    "max_lag": "100ms",
    "max_cpu": 90.0,
    "max_release_lag": "10%",
    "accept_timeout": "30s",
    "lost_after": "10s",
    "seed": 0,
    "patience": str(DEFAULT_PATIENCE),
    "retry_after_decline": "0%",
}


def option_name(key: str) -> str:
    return "--" + key.replace("_", "-")


def _checked(key: str, value: Any) -> Any:
    """A value of the kind its option takes, or a ConfigError naming the option."""
    kind = OPTION_KINDS[key]
    name = option_name(key)
    if kind == "flag":
        if not isinstance(value, bool):
            raise ConfigError(f"{name} is a flag: true or false, not {value!r}")
        return value
    if kind in ("count", "whole"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be a whole number, not {value!r}")
        if kind == "count" and value < 1:
            raise ConfigError(f"{name} must be at least 1, not {value}")
        return value
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{name} must be a number, not {value!r}")
        return float(value)
    if kind == "texts":
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
            raise ConfigError(f"{name} takes text (or a list of texts), not {value!r}")
        return tuple(items)
    if not isinstance(value, str):
        hint = (
            " (a duration carries its unit, e.g. '60s')" if isinstance(value, int | float) else ""
        )
        raise ConfigError(f"{name} must be text, not {value!r}{hint}")
    return value


def check_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Each option on its own: known, of its kind, its value readable. Returns those given
    (None and empty lists mean not given). A scenario's [loadgen] table is checked so when
    parsed; load_config() then checks them together."""
    unknown = sorted(set(options) - set(OPTION_KINDS))
    if unknown:
        keys = ", ".join(option_name(key) for key in unknown)
        raise ConfigError(f"unknown load option(s) {keys}; known: {', '.join(OPTION_KINDS)}")
    given = {key: _checked(key, value) for key, value in options.items() if value is not None}
    given = {key: value for key, value in given.items() if value != ()}
    durations = ("duration", "timeout", "interval", "max_lag", "accept_timeout", "lost_after")
    for key in durations:
        if key in given:
            parse_duration(given[key], option_name(key))
    if "patience" in given:
        parse_patience(given["patience"])
    if "rate" in given:
        parse_rate(given["rate"], "--rate")
    if "ramp" in given:
        parse_ramp(given["ramp"])
    if "retry_after_decline" in given:
        share_or_none(given["retry_after_decline"], "--retry-after-decline")
    if "max_release_lag" in given:
        parse_share_or_duration(given["max_release_lag"], "--max-release-lag")
    if "cards" in given or "tokenize" in given:
        parse_cards(given.get("cards", DEFAULT_CARDS), given.get("tokenize", "auto"))
    for text in given.get("slo", ()):
        parse_slo(text)
    return given


def load_config(options: Mapping[str, Any]) -> LoadConfig:
    """Check every option of a load run and build its config; None (or absent) means default.

    The `flashsale loadgen` command and a rehearsal's [loadgen] table (plus the options after
    `--`) both come through here, so a mistake is refused before anything starts.
    """
    given = check_options(options)
    values = {**DEFAULT_OPTIONS, **given}
    tokenize = values["tokenize"]
    release_lag_s, release_lag_ratio = parse_share_or_duration(
        values["max_release_lag"], "--max-release-lag"
    )
    if values.get("agents") is not None and not values.get("agents_redis_url"):
        raise ConfigError("--agents needs --agents-redis-url: the Redis the agents listen on")
    if values.get("agents") is not None and values.get("processes") is not None:
        raise ConfigError("give either --agents or --processes, not both")
    if values["max_cpu"] < 0:
        raise ConfigError(f"--max-cpu must be 0 or more, not {values['max_cpu']:g}")
    report, html = values.get("report"), values.get("html")
    return LoadConfig(
        url=str(values["url"]).rstrip("/"),
        schedule=build_schedule(
            rate=values.get("rate"),
            ramp=values.get("ramp"),
            poisson=bool(values.get("poisson")),
            seed=values["seed"],
            doors_open=bool(values.get("doors_open")),
            concurrency=values.get("concurrency"),
            customers=values.get("customers"),
            duration=values.get("duration"),
        ),
        cards=parse_cards(values.get("cards") or DEFAULT_CARDS, tokenize),
        tokenize=tokenize,
        timeout_s=positive_duration(values["timeout"], "--timeout"),
        max_in_flight=values.get("max_in_flight"),
        slos=slos_of(values.get("slo", ()), bool(values.get("no_default_slos"))),
        abort_on_fail=bool(values.get("abort_on_fail")),
        report_path=Path(report) if report else None,
        html_path=Path(html) if html else None,
        csv_prefix=values.get("csv"),
        dashboard=not values.get("no_dashboard"),
        interval_s=positive_duration(values["interval"], "--interval"),
        max_lag_s=parse_duration(values["max_lag"], "--max-lag"),
        max_cpu_percent=values["max_cpu"],
        fallback=not values.get("no_fallback"),
        max_release_lag_s=release_lag_s,
        max_release_lag_ratio=release_lag_ratio or 0.10,
        processes=values.get("processes"),
        agents=values.get("agents"),
        agents_redis_url=values.get("agents_redis_url"),
        accept_timeout_s=positive_duration(values["accept_timeout"], "--accept-timeout"),
        lost_after_s=positive_duration(values["lost_after"], "--lost-after"),
        patience=parse_patience(values["patience"]),
        retry_after_decline=share_or_none(values["retry_after_decline"], "--retry-after-decline"),
    )


def share_or_none(text: str, what: str) -> float:
    """'50%' -> 0.5, '0%' -> 0.0; at most 100%."""
    if text.strip() in ("0", "0%"):
        return 0.0
    share = parse_share(text, what)
    if share > 1:
        raise ConfigError(f"{what} is a share of at most 100%, not {text!r}")
    return share


def slos_of(texts: tuple[str, ...], no_defaults: bool) -> tuple[Slo, ...]:
    """The objectives given, or without any the default gates (unless they are dropped)."""
    if texts:
        return tuple(parse_slo(text) for text in texts)
    if no_defaults:
        return ()
    return tuple(dataclasses.replace(parse_slo(text), default=True) for text in DEFAULT_SLOS)


def positive_duration(text: str, what: str) -> float:
    seconds = parse_duration(text, what)
    if seconds <= 0:
        raise ConfigError(f"{what} must be above zero")
    return seconds

"""What a load run does: arrival schedules (open, closed, doors-open) and the test-card mix."""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

from flashsale.errors import ConfigError
from flashsale.units import parse_duration, parse_rate


@dataclass(frozen=True)
class TestCard:
    """A Stripe test card: the raw number for tokenization, the `tok_` alias for test mode."""

    name: str
    number: str
    token: str | None  # None: Stripe has no ready-made token for it (it fails at tokenization)
    expect: str  # the outcome a customer sees with this card: succeeded | declined


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
        # Fails the Luhn check: Stripe refuses it at tokenization, before any charge.
        TestCard("incorrect_number", "4242424242424241", None, "declined"),
    )
}

DEFAULT_CARDS = "visa=85,insufficient_funds=5,generic_decline=5,expired_card=3,incorrect_cvc=2"
TOKENIZE_MODES = ("raw", "test-tokens")


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

    def spec(self) -> str:
        return ",".join(f"{card.name}={weight}" for card, weight in self.weights)


def parse_cards(spec: str, tokenize: str = "raw") -> CardMix:
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

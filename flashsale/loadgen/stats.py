"""Load-run measurements (pure): HDR histograms per phase and outcome, counts, time series, SLOs."""

from __future__ import annotations

import operator
import re
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

from hdrh.histogram import HdrHistogram

from flashsale.errors import ConfigError
from flashsale.units import parse_duration

# `queue` is the wait in the waiting room; `checkout` is from admitted to the answer.
PHASES = (
    "session",
    "tokenize",
    "connect",
    "queue",
    "submit",
    "authenticate",
    "result",
    "checkout",
    "e2e",
)
ROOM_PHASES = ("queue", "checkout")  # shown only for a run whose customers met a room
# Shown only when some customer went through it: 3D Secure, on PaymentIntents.
AUTHENTICATE = "authenticate"
OUTCOMES = (
    "succeeded",
    "declined",
    "sold_out",
    "failed",
    "timeout",
    "disconnected",
    "abandoned",  # left: the waiting room's queue out of patience, or a 3D Secure challenge
    "error",
)
# What customers did in a waiting room, counted (Journey.room).
ROOM_COUNTS = (
    "queued",
    "position_updates",
    "waited_then_sold_out",
    "retried_after_decline",
    "abandoned",
)
# Admission fairness (issue 16): a customer admitted while someone whose ticket came more than
# FAIRNESS_SLACK_S earlier still waited "overtook" them; under FIFO that must never happen.
# The slack absorbs the network between the customers' clocks and the server's order, and
# ADMITTED_SLACK_S the order in which one admission step's events reach their sockets.
FAIRNESS_SLACK_S = 1.0
ADMITTED_SLACK_S = 0.2
OVERTOOK = "overtook_earlier_arrivals"  # the report's room count of them (RunStats.overtakes)
# Outcomes where the customer got an answer from the sale; only these feed the e2e histogram,
# so a timeout's 30 s does not pose as a latency (it has its own per-outcome histogram).
ANSWERED = ("succeeded", "declined", "sold_out", "failed")
PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p999": 99.9}

LOWEST_US = 1
HIGHEST_US = 3_600_000_000  # one hour: nothing a customer waits for lasts longer
SIGNIFICANT_DIGITS = 3
# The charts only need coarse per-interval shapes; 2 digits keeps each histogram ~25 KB.
INTERVAL_DIGITS = 2
# Where the generator was when it measured its own event-loop lag: lag while customers get
# ready, during the doors-open release burst, and after it distorts different numbers.
STAGES = ("run", "ready", "release", "results")


def new_histogram(digits: int = SIGNIFICANT_DIGITS) -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, digits)


def encode(histogram: HdrHistogram) -> str:
    return histogram.encode().decode("ascii")


def decode(text: str) -> HdrHistogram:
    return HdrHistogram.decode(text.encode("ascii"))


@dataclass
class Journey:
    """What happened to one simulated customer; times are seconds on the run's monotonic clock.

    `scheduled` is when the customer's clock was due to start (the arrival in the open model,
    the doors opening in doors-open mode) and `started` when it really started; the gap is
    charged to `lag_phase` in the corrected view, which is what coordinated-omission
    correction means: a customer the generator could not start on time was still waiting.
    """

    index: int
    card: str
    scheduled: float
    started: float
    outcome: str = "error"
    finished: float | None = None
    phases: dict[str, float] = field(default_factory=dict)
    lag_phase: str = "session"
    code: str | None = None
    decline_code: str | None = None
    error: str | None = None
    order_id: str | None = None
    fallback: bool = False
    disconnected: bool = False
    integrity: str | None = None
    submit_started: float | None = None
    drop_reason: str | None = None  # the socket dropped under the customer (not our hang-up)
    # Every exchange by (endpoint, outcome): an HTTP status ("200", "503"), a transport error
    # ("timeout", "ConnectionRefusedError: ..."), or for the socket "connected" / "refused".
    calls: Counter[tuple[str, str]] = field(default_factory=Counter)
    retries: Counter[str] = field(default_factory=Counter)  # tries again, by endpoint
    room: Counter[str] = field(default_factory=Counter)  # see ROOM_COUNTS
    # In the waiting room's queue: (arrived, left, admitted), unix seconds, for fairness.
    queue_span: tuple[float, float, bool] | None = None

    @property
    def lag(self) -> float:
        return max(0.0, self.started - self.scheduled)


@dataclass
class Interval:
    """One slice of the run's time series, keyed by when customers finished."""

    arrivals: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    corrected: HdrHistogram = field(default_factory=lambda: new_histogram(INTERVAL_DIGITS))
    uncorrected: HdrHistogram = field(default_factory=lambda: new_histogram(INTERVAL_DIGITS))
    # Each phase's corrected latency of the customers finishing in this slice (made on use).
    phases: dict[str, HdrHistogram] = field(default_factory=dict)
    server_errors: int = 0
    retries: int = 0

    def phase(self, name: str) -> HdrHistogram:
        found = self.phases.get(name)
        if found is None:
            found = self.phases[name] = new_histogram(INTERVAL_DIGITS)
        return found


class RunStats:
    """All measurements of a run, lossless to merge across generator processes.

    Latencies are whole microseconds in HDR histograms (3 significant digits). A measured
    duration under 1 µs is clamped to 1 µs and counted in `clamped`: no phase ever reads 0 ms.
    """

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self.corrected = {phase: new_histogram() for phase in PHASES}
        self.uncorrected = {phase: new_histogram() for phase in PHASES}
        self.by_outcome = {outcome: new_histogram() for outcome in OUTCOMES}
        self.schedule_lag = new_histogram()
        self.loop_lag = new_histogram()
        self.loop_lag_by_stage = {stage: new_histogram() for stage in STAGES}
        # Doors-open: from the agreed opening instant to each customer's submit leaving.
        self.release_lag = new_histogram()
        self.outcomes: Counter[str] = Counter({outcome: 0 for outcome in OUTCOMES})
        self.decline_codes: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.cards: Counter[str] = Counter()
        self.intervals: dict[int, Interval] = {}
        self.clamped = 0
        self.fallbacks = 0
        self.disconnects = 0
        self.integrity_problems: list[str] = []
        self.arrivals = 0
        self.socket_drops: Counter[str] = Counter()  # real drops by reason
        self.client_log: Counter[str] = Counter()  # socket client library log lines
        # Every exchange customers made, by endpoint then outcome (see Journey.calls).
        self.requests: dict[str, Counter[str]] = {}
        self.retries: Counter[str] = Counter()
        self.room: Counter[str] = Counter()  # the waiting room, see ROOM_COUNTS
        self.queue_spans: list[tuple[float, float, bool]] = []  # see Journey.queue_span

    # -- recording -------------------------------------------------------------------------

    def _us(self, seconds: float, count: bool = True) -> int:
        """Seconds -> µs; each raw measurement that rounds below 1 µs is counted once."""
        micros = round(seconds * 1_000_000)
        if micros < LOWEST_US:
            self.clamped += count
            return LOWEST_US
        return min(micros, HIGHEST_US)

    def _interval(self, t: float) -> Interval:
        key = int(max(0.0, t) // self.interval_s)
        interval = self.intervals.get(key)
        if interval is None:
            interval = self.intervals[key] = Interval()
        return interval

    def record_arrival(self, t: float) -> None:
        self.arrivals += 1
        self._interval(t).arrivals += 1

    def record_loop_lag(self, seconds: float, stage: str = "run") -> None:
        micros = max(LOWEST_US, min(HIGHEST_US, round(seconds * 1e6)))
        self.loop_lag.record_value(micros)
        self.loop_lag_by_stage[stage].record_value(micros)

    def record(self, journey: Journey) -> None:
        """Fold one finished customer into every view."""
        self.outcomes[journey.outcome] += 1
        self.cards[journey.card] += 1
        if journey.outcome == "declined":
            self.decline_codes[journey.decline_code or journey.code or "unknown"] += 1
        if journey.error:
            self.errors[journey.error] += 1
        if journey.fallback:
            self.fallbacks += 1
        if journey.disconnected:
            self.disconnects += 1
        if journey.integrity:
            self.integrity_problems.append(journey.integrity)
        if journey.drop_reason:
            self.socket_drops[journey.drop_reason] += 1
        for (endpoint, outcome), count in journey.calls.items():
            self.requests.setdefault(endpoint, Counter())[outcome] += count
        if journey.retries:
            self.retries.update(journey.retries)
        if journey.room:
            self.room.update(journey.room)
        if journey.queue_span is not None:
            self.queue_spans.append(journey.queue_span)
        lag = journey.lag
        self.schedule_lag.record_value(max(LOWEST_US, min(HIGHEST_US, round(lag * 1e6))))
        if journey.lag_phase == "submit":
            self.release_lag.record_value(max(LOWEST_US, min(HIGHEST_US, round(lag * 1e6))))
        corrected_phases = {}
        for phase, seconds in journey.phases.items():
            self.uncorrected[phase].record_value(self._us(seconds))
            extra = lag if phase == journey.lag_phase else 0.0
            corrected_phases[phase] = self._us(seconds + extra, count=False)
            self.corrected[phase].record_value(corrected_phases[phase])
        if journey.finished is None:
            return
        corrected = self._us(journey.finished - journey.scheduled, count=False)
        uncorrected = self._us(journey.finished - journey.started)
        self.by_outcome[journey.outcome].record_value(corrected)
        interval = self._interval(journey.finished)
        interval.outcomes[journey.outcome] += 1
        for phase, micros in corrected_phases.items():
            interval.phase(phase).record_value(micros)
        if journey.calls:
            interval.server_errors += sum(
                n for (_, outcome), n in journey.calls.items() if outcome.startswith("5")
            )
        interval.retries += sum(journey.retries.values())
        if journey.outcome in ANSWERED:
            self.corrected["e2e"].record_value(corrected)
            self.uncorrected["e2e"].record_value(uncorrected)
            interval.corrected.record_value(corrected)
            interval.uncorrected.record_value(uncorrected)

    # -- reading ---------------------------------------------------------------------------

    @property
    def finished(self) -> int:
        return sum(self.outcomes.values())

    def shown_phases(self) -> tuple[str, ...]:
        """PHASES, without the waiting room's unless customers met one."""
        met_room = bool(self.room) or self.corrected["queue"].get_total_count() > 0
        authenticated = self.corrected[AUTHENTICATE].get_total_count() > 0
        return tuple(
            p
            for p in PHASES
            if (met_room or p not in ROOM_PHASES) and (authenticated or p != AUTHENTICATE)
        )

    def overtakes(self) -> int:
        """Customers admitted while someone who arrived over FAIRNESS_SLACK_S earlier still
        waited in the queue (and was admitted, or left, over ADMITTED_SLACK_S later)."""
        ordered = sorted(self.queue_spans)
        arrivals = [arrived for arrived, _, _ in ordered]
        latest_left = list(accumulate((left for _, left, _ in ordered), max))
        count = 0
        for arrived, left, admitted in ordered:
            earlier = bisect_left(arrivals, arrived - FAIRNESS_SLACK_S)
            if admitted and earlier and latest_left[earlier - 1] > left + ADMITTED_SLACK_S:
                count += 1
        return count

    def phase_summary(self, phase: str, corrected: bool = True) -> dict[str, float | int]:
        histogram = (self.corrected if corrected else self.uncorrected)[phase]
        return summarize(histogram)

    def outcome_summary(self, outcome: str) -> dict[str, float | int]:
        return summarize(self.by_outcome[outcome])

    def ratio(self, outcome: str) -> float:
        return self.outcomes[outcome] / self.finished if self.finished else 0.0

    @property
    def server_errors(self) -> int:
        """Answers with a 5xx status, every endpoint (each try counts, retried or not)."""
        return sum(
            count
            for outcomes in self.requests.values()
            for outcome, count in outcomes.items()
            if outcome.startswith("5") and outcome.isdigit()
        )

    @property
    def request_total(self) -> int:
        return sum(sum(outcomes.values()) for outcomes in self.requests.values())

    def endpoint_rows(self) -> dict[str, dict[str, Any]]:
        """Per endpoint (Locust's table): requests, answers by class, transport errors, retries."""
        rows = {}
        for endpoint in sorted(self.requests, key=endpoint_order):
            outcomes = self.requests[endpoint]
            statuses = {o: n for o, n in outcomes.items() if o.isdigit()}
            rows[endpoint] = {
                "requests": sum(outcomes.values()),
                "ok": sum(n for o, n in outcomes.items() if is_ok(o)),
                "client_errors": sum(n for o, n in statuses.items() if o.startswith("4")),
                "server_errors": sum(n for o, n in statuses.items() if o.startswith("5")),
                "transport_errors": sum(n for o, n in outcomes.items() if not o.isdigit())
                - outcomes.get("connected", 0),
                "retries": self.retries[endpoint],
                "outcomes": dict(outcomes.most_common()),
            }
        return rows

    def failures(self) -> list[dict[str, Any]]:
        """Every outcome that was neither a success nor an answer the sale gives on purpose
        (see EXPECTED_ANSWERS), by endpoint, most frequent first."""
        found = [
            {"endpoint": endpoint, "outcome": outcome, "count": count}
            for endpoint, outcomes in self.requests.items()
            for outcome, count in outcomes.items()
            if not is_ok(outcome) and (endpoint, outcome) not in EXPECTED_ANSWERS
        ]
        return sorted(found, key=lambda row: -int(row["count"]))

    def series(self) -> list[dict[str, Any]]:
        """The time series for charts: one row per interval, gaps filled with empty rows."""
        if not self.intervals:
            return []
        rows = []
        for key in range(min(self.intervals), max(self.intervals) + 1):
            interval = self.intervals.get(key) or Interval()
            rows.append(
                {
                    "t_s": round(key * self.interval_s, 3),
                    "arrivals": interval.arrivals,
                    "outcomes": {o: interval.outcomes[o] for o in OUTCOMES if interval.outcomes[o]},
                    "e2e_ms": summarize(interval.corrected),
                    "e2e_ms_uncorrected": summarize(interval.uncorrected),
                    "phases_ms": {
                        name: summarize(histogram)
                        for name, histogram in sorted(interval.phases.items())
                    },
                    "server_errors": interval.server_errors,
                    "retries": interval.retries,
                }
            )
        return rows

    # -- merging and serialising -----------------------------------------------------------

    def merge(self, other: RunStats) -> RunStats:
        """Add another process's stats to these (same interval width and run clock)."""
        if other.interval_s != self.interval_s:
            raise ValueError("cannot merge stats with different interval widths")
        for mine, theirs in (
            (self.corrected, other.corrected),
            (self.uncorrected, other.uncorrected),
            (self.by_outcome, other.by_outcome),
        ):
            for name, histogram in theirs.items():
                mine[name].add(histogram)
        self.schedule_lag.add(other.schedule_lag)
        self.loop_lag.add(other.loop_lag)
        for stage, histogram in other.loop_lag_by_stage.items():
            self.loop_lag_by_stage[stage].add(histogram)
        self.release_lag.add(other.release_lag)
        self.outcomes.update(other.outcomes)
        self.decline_codes.update(other.decline_codes)
        self.errors.update(other.errors)
        self.cards.update(other.cards)
        for key, theirs_interval in other.intervals.items():
            interval = self.intervals.setdefault(key, Interval())
            interval.arrivals += theirs_interval.arrivals
            interval.outcomes.update(theirs_interval.outcomes)
            interval.corrected.add(theirs_interval.corrected)
            interval.uncorrected.add(theirs_interval.uncorrected)
            for name, histogram in theirs_interval.phases.items():
                interval.phase(name).add(histogram)
            interval.server_errors += theirs_interval.server_errors
            interval.retries += theirs_interval.retries
        self.clamped += other.clamped
        self.fallbacks += other.fallbacks
        self.disconnects += other.disconnects
        self.integrity_problems.extend(other.integrity_problems)
        self.arrivals += other.arrivals
        self.socket_drops.update(other.socket_drops)
        self.client_log.update(other.client_log)
        for endpoint, outcomes in other.requests.items():
            self.requests.setdefault(endpoint, Counter()).update(outcomes)
        self.retries.update(other.retries)
        self.room.update(other.room)
        self.queue_spans.extend(other.queue_spans)
        return self

    def to_dict(self) -> dict[str, Any]:
        """Everything, histograms HDR-encoded (base64 compressed), as plain JSON data."""
        return {
            "interval_s": self.interval_s,
            "corrected": {k: encode(h) for k, h in self.corrected.items()},
            "uncorrected": {k: encode(h) for k, h in self.uncorrected.items()},
            "by_outcome": {k: encode(h) for k, h in self.by_outcome.items()},
            "schedule_lag": encode(self.schedule_lag),
            "loop_lag": encode(self.loop_lag),
            "loop_lag_by_stage": {k: encode(h) for k, h in self.loop_lag_by_stage.items()},
            "release_lag": encode(self.release_lag),
            "outcomes": dict(self.outcomes),
            "decline_codes": dict(self.decline_codes),
            "errors": dict(self.errors),
            "cards": dict(self.cards),
            "intervals": {
                str(key): {
                    "arrivals": i.arrivals,
                    "outcomes": dict(i.outcomes),
                    "corrected": encode(i.corrected),
                    "uncorrected": encode(i.uncorrected),
                    "phases": {name: encode(h) for name, h in i.phases.items()},
                    "server_errors": i.server_errors,
                    "retries": i.retries,
                }
                for key, i in sorted(self.intervals.items())
            },
            "clamped": self.clamped,
            "fallbacks": self.fallbacks,
            "disconnects": self.disconnects,
            "integrity_problems": list(self.integrity_problems),
            "arrivals": self.arrivals,
            "socket_drops": dict(self.socket_drops),
            "client_log": dict(self.client_log),
            "requests": {endpoint: dict(outcomes) for endpoint, outcomes in self.requests.items()},
            "retries": dict(self.retries),
            "room": dict(self.room),
            "queue_spans": [list(span) for span in self.queue_spans],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunStats:
        stats = cls(interval_s=float(data["interval_s"]))
        # Update in place: a report written before a phase or outcome existed still loads.
        stats.corrected.update({k: decode(v) for k, v in data["corrected"].items()})
        stats.uncorrected.update({k: decode(v) for k, v in data["uncorrected"].items()})
        stats.by_outcome.update({k: decode(v) for k, v in data["by_outcome"].items()})
        stats.schedule_lag = decode(data["schedule_lag"])
        stats.loop_lag = decode(data["loop_lag"])
        # Reports written before stages and release lag existed still load.
        for stage, text in data.get("loop_lag_by_stage", {}).items():
            stats.loop_lag_by_stage[stage] = decode(text)
        if "release_lag" in data:
            stats.release_lag = decode(data["release_lag"])
        stats.outcomes = Counter(data["outcomes"])
        stats.decline_codes = Counter(data["decline_codes"])
        stats.errors = Counter(data["errors"])
        stats.cards = Counter(data["cards"])
        stats.intervals = {
            int(key): Interval(
                arrivals=i["arrivals"],
                outcomes=Counter(i["outcomes"]),
                corrected=decode(i["corrected"]),
                uncorrected=decode(i["uncorrected"]),
                phases={name: decode(text) for name, text in i.get("phases", {}).items()},
                server_errors=i.get("server_errors", 0),
                retries=i.get("retries", 0),
            )
            for key, i in data["intervals"].items()
        }
        stats.clamped = data["clamped"]
        stats.fallbacks = data["fallbacks"]
        stats.disconnects = data["disconnects"]
        stats.integrity_problems = list(data["integrity_problems"])
        stats.arrivals = data["arrivals"]
        stats.socket_drops = Counter(data.get("socket_drops", {}))
        stats.client_log = Counter(data.get("client_log", {}))
        stats.requests = {e: Counter(o) for e, o in data.get("requests", {}).items()}
        stats.retries = Counter(data.get("retries", {}))
        stats.room = Counter(data.get("room", {}))
        stats.queue_spans = [
            (float(arrived), float(left), bool(admitted))
            for arrived, left, admitted in data.get("queue_spans", [])
        ]
        return stats


ENDPOINTS = ("session", "tokenize", "connect", "submit", "authenticate", "order_check")
# The per-endpoint figures (endpoint_rows' keys) and their column titles, in table order.
ENDPOINT_COLUMNS = (
    ("requests", "requests"),
    ("ok", "2xx/3xx"),
    ("client_errors", "4xx"),
    ("server_errors", "5xx"),
    ("transport_errors", "transport errors"),
    ("retries", "retries"),
)
# Answers that are the sale working, not failing: a card Stripe declines at tokenization (402
# card_error) and a submit after the last unit (409 sold_out). They stay in the 4xx counts.
EXPECTED_ANSWERS = {("tokenize", "402"), ("submit", "409")}


def endpoint_order(name: str) -> tuple[int, str]:
    """The journey's order (session first), then endpoints this list does not know, by name."""
    return (ENDPOINTS.index(name) if name in ENDPOINTS else len(ENDPOINTS), name)


def is_ok(outcome: str) -> bool:
    """A 2xx or 3xx answer, or a socket the server accepted."""
    return outcome == "connected" or (outcome.isdigit() and outcome[0] in "23")


def summarize(histogram: HdrHistogram) -> dict[str, float | int]:
    """p50/p90/p99/p999/max in milliseconds (µs precision) and the sample count."""
    count = histogram.get_total_count()
    if not count:
        return {name: 0.0 for name in PERCENTILES} | {"max": 0.0, "count": 0}
    values = histogram.get_percentile_to_value_dict(list(PERCENTILES.values()))
    summary: dict[str, float | int] = {
        name: values[pct] / 1000 for name, pct in PERCENTILES.items()
    }
    # No mean: hdrh computes it by walking every bucket (~25 ms), too slow for 4 frames a second.
    summary["max"] = histogram.get_max_value() / 1000
    summary["count"] = count
    return summary


def percentile_curve(histogram: HdrHistogram, ticks_per_half: int = 5) -> list[tuple[float, float]]:
    """(percentile, ms) points of the classic HDR percentile-distribution plot."""
    if not histogram.get_total_count():
        return []
    points = []
    for item in histogram.get_percentile_iterator(ticks_per_half):
        points.append(
            (
                item.percentile_level_iterated_to,
                histogram.get_highest_equivalent_value(item.value_iterated_to) / 1000,
            )
        )
        if item.percentile_level_iterated_to >= 99.999:
            break
    return points


# -- SLOs ------------------------------------------------------------------------------------

LATENCY_STATS = (*PERCENTILES, "max")
_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "==": operator.eq,
    "<": operator.lt,
    ">": operator.gt,
}
_SLO = re.compile(r"^\s*([a-z0-9_]+)\.([a-z0-9_]+)\s*(<=|>=|==|<|>)\s*(.+?)\s*$")
COUNTERS = ("customers", "fallback", "integrity", "clamped")
# Counted per request, every endpoint: a count, or a ratio of all requests.
REQUEST_COUNTERS = ("server_errors", "retries")
# Without --slo, a run is held to these (--no-default-slos drops them): a load run whose
# customers fail is never a green build.
DEFAULT_SLOS = ("error.ratio<0.1%", "timeout.ratio<0.1%")


@dataclass(frozen=True)
class Slo:
    """One objective, e.g. `e2e.p99<2s`; latencies in ms, ratios as fractions."""

    text: str
    metric: str
    stat: str
    op: str
    threshold: float
    default: bool = False  # applied because no --slo was given

    @property
    def unit(self) -> str:
        if self.stat == "ratio":
            return "ratio"
        return "ms" if self.stat in LATENCY_STATS else "count"


NOT_MEASURED = "none measured"


def format_actual(unit: str, actual: float | None) -> str:
    """An SLO's measured value as its gate is written: 0.0500%, 10805.2ms, 3."""
    if actual is None:
        return NOT_MEASURED
    if unit == "ratio":
        return f"{actual:.4%}"
    return f"{actual:g}ms" if unit == "ms" else f"{actual:g}"


def parse_slo(text: str) -> Slo:
    """Parse `metric.stat OP value`; unknown metrics or stats are usage errors."""
    match = _SLO.match(text)
    if not match:
        raise ConfigError(
            f"--slo {text!r} must look like 'e2e.p99<2s', 'timeout.ratio<0.1%' "
            "or 'succeeded.count>=500'"
        )
    metric, stat, op, value = match.groups()
    if metric in PHASES:
        allowed: tuple[str, ...] = (*LATENCY_STATS, "count")
    elif metric in OUTCOMES:
        allowed = ("count", "ratio")
    elif metric in COUNTERS:
        allowed = ("count",)
    elif metric in REQUEST_COUNTERS:
        allowed = ("count", "ratio")
    else:
        known = ", ".join((*PHASES, *OUTCOMES, *COUNTERS, *REQUEST_COUNTERS))
        raise ConfigError(f"--slo {text!r}: unknown metric {metric!r}; known: {known}")
    if stat not in allowed:
        raise ConfigError(
            f"--slo {text!r}: {metric} has no {stat!r}; use one of {', '.join(allowed)}"
        )
    threshold = _threshold(text, stat, value)
    return Slo(text.strip(), metric, stat, op, threshold)


def _threshold(text: str, stat: str, value: str) -> float:
    value = value.strip()
    if stat in LATENCY_STATS:
        try:
            return parse_duration(value, "--slo") * 1000
        except ConfigError as error:
            raise ConfigError(
                f"--slo {text!r}: {value!r} is not a time like 2s or 250ms ({error})"
            ) from None
    if stat == "ratio":
        try:
            if value.endswith("%"):
                return float(value[:-1]) / 100
            return float(value)
        except ValueError:
            raise ConfigError(f"--slo {text!r}: {value!r} is not a ratio like 0.1%") from None
    try:
        return float(int(value))
    except ValueError:
        raise ConfigError(f"--slo {text!r}: {value!r} is not a whole count") from None


@dataclass(frozen=True)
class SloResult:
    """An objective against the run. A latency of a phase no customer went through (the
    waiting room's checkout in a sale without one) has no value: actual None, not met."""

    slo: Slo
    actual: float | None
    passed: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "slo": self.slo.text,
            "metric": f"{self.slo.metric}.{self.slo.stat}",
            "unit": self.slo.unit,
            "threshold": self.slo.threshold,
            "actual": self.actual,
            "passed": self.passed,
            "default": self.slo.default,
        }


def slo_actual(slo: Slo, stats: RunStats) -> float | None:
    """The measured value an SLO is judged on (corrected latencies: what customers felt);
    None for a latency of a phase nobody went through."""
    if slo.metric in PHASES:
        summary = stats.phase_summary(slo.metric)
        if slo.stat != "count" and not summary["count"]:
            return None
        return float(summary[slo.stat])
    if slo.metric in OUTCOMES:
        if slo.stat == "ratio":
            return stats.ratio(slo.metric)
        return float(stats.outcomes[slo.metric])
    if slo.metric in REQUEST_COUNTERS:
        count = (
            stats.server_errors if slo.metric == "server_errors" else sum(stats.retries.values())
        )
        if slo.stat == "ratio":
            total = stats.request_total
            return count / total if total else 0.0
        return float(count)
    return float(
        {
            "customers": stats.finished,
            "fallback": stats.fallbacks,
            "integrity": len(stats.integrity_problems),
            "clamped": stats.clamped,
        }[slo.metric]
    )


# Whatever else happens, these only grow: once past a `<`, `<=` or `==` bound they stay past.
GROWING = (*OUTCOMES, *REQUEST_COUNTERS, *COUNTERS)


def cannot_pass(result: SloResult, stats: RunStats, planned: int | None) -> bool:
    """Whether an SLO failing now must still fail at the end of the run, whatever follows.

    Counts and maxima only grow; a ratio of customers is decided once even the best case (every
    planned customer still to come succeeds) fails it. Percentiles are judged at the end only.
    """
    slo = result.slo
    if result.passed or slo.op not in ("<", "<=", "=="):
        return False
    if slo.stat == "count" and slo.metric in GROWING:
        return True
    if slo.stat == "max":
        return True
    if slo.stat == "ratio" and slo.metric in OUTCOMES and planned and slo.op != "==":
        best = stats.outcomes[slo.metric] / planned
        return not _OPS[slo.op](best, slo.threshold)
    return False


def evaluate(slos: Iterable[Slo], stats: RunStats) -> list[SloResult]:
    results = []
    for slo in slos:
        actual = slo_actual(slo, stats)
        met = actual is not None and _OPS[slo.op](actual, slo.threshold)
        results.append(SloResult(slo, actual, met))
    return results

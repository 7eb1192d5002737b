"""The run report: one typed LoadReport, JSON with fixed keys for machines, an offline HTML page."""

from __future__ import annotations

import html
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from flashsale.loadgen.stats import (
    OUTCOMES,
    PHASES,
    RunStats,
    SloResult,
    percentile_curve,
    summarize,
)

REPORT_VERSION = 1


@dataclass
class RunInfo:
    """What the runner knows about the run besides the measurements."""

    url: str
    model: str
    schedule: str
    started_at: float  # unix time
    elapsed_s: float
    planned_customers: int | None
    target_per_s: float | None
    achieved_per_s: float
    cpu_percent: float
    max_schedule_lag_ms: float
    max_dispatch_lag_ms: float
    loop_lag_p99_ms: float
    loop_lag_max_ms: float
    valid: bool
    invalid_reasons: list[str] = field(default_factory=list)
    interrupted: bool = False
    cancelled: int = 0
    cards_spec: str = ""
    tokenize: str = "raw"
    timeout_s: float = 0.0
    max_in_flight: int | None = None
    doors_open: dict[str, Any] | None = None
    system: dict[str, Any] | None = None
    cpu_ms_per_customer: float | None = None
    peak_sockets: int = 0
    open_files_limit: int = 0
    loop_lag_by_stage_ms: dict[str, Any] = field(default_factory=dict)
    release_lag_ms: dict[str, Any] | None = None
    processes: list[dict[str, Any]] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    aborted: str | None = None  # --abort-on-fail stopped the run: why


@dataclass
class GeneratorView:
    """How the generator itself fared: if `valid` is false, the other numbers are not the
    system's and `invalid_reasons` says why."""

    cpu_percent: float
    max_schedule_lag_ms: float
    max_dispatch_lag_ms: float
    schedule_lag_ms: dict[str, Any]
    loop_lag_p99_ms: float
    loop_lag_max_ms: float
    cpu_ms_per_customer: float | None
    peak_sockets: int
    open_files_limit: int
    loop_lag_by_stage_ms: dict[str, Any]
    release_lag_ms: dict[str, Any] | None
    processes: list[dict[str, Any]]
    lost: list[str]
    valid: bool
    invalid_reasons: list[str]


@dataclass
class SloView:
    passed: bool
    results: list[dict[str, Any]]

    @property
    def failed(self) -> list[str]:
        return [result["slo"] for result in self.results if not result["passed"]]


@dataclass
class LoadReport:
    """One load run's results: what `--report` writes as JSON and what a rehearsal reads.

    The JSON keys issue 4 names are stable; as_dict() and from_dict() keep them.
    """

    customers: int
    outcomes: dict[str, int]
    decline_codes: dict[str, int]
    latency_ms: dict[str, dict[str, Any]]
    latency_ms_uncorrected: dict[str, dict[str, Any]]
    latency_ms_by_outcome: dict[str, dict[str, Any]]
    rate: dict[str, float | None]
    generator: GeneratorView
    slo: SloView
    errors: dict[str, int]
    cards: dict[str, int]
    fallbacks: int
    disconnects: int
    socket_drops: dict[str, int]
    socket_client_log: dict[str, int]
    integrity_problems: list[str]
    clamped_to_1us: int
    run: RunInfo
    series: list[dict[str, Any]]
    histograms: dict[str, Any]
    # Every exchange customers made, per endpoint (Locust's table) and each failure with its
    # count; a retried request counts every try.
    requests: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)
    server_errors: int = 0
    retries: int = 0
    version: int = REPORT_VERSION

    def as_dict(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        for name in ("generator", "slo", "run"):
            data[name] = asdict(data[name])
        return {"version": data.pop("version"), **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoadReport:
        fields = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        fields["generator"] = GeneratorView(**data["generator"])
        fields["slo"] = SloView(**data["slo"])
        fields["run"] = RunInfo(**data["run"])
        return cls(**fields)

    @classmethod
    def load(cls, path: Path) -> LoadReport:
        return cls.from_dict(json.loads(path.read_text()))

    def stats(self) -> RunStats:
        """The run's measurements back from its encoded histograms."""
        return RunStats.from_dict(self.histograms)

    @property
    def told(self) -> int:
        """Customers who got a final answer on an order they placed."""
        return sum(self.outcomes[outcome] for outcome in ("succeeded", "declined", "failed"))


def build_report(stats: RunStats, run: RunInfo, slo_results: list[SloResult]) -> LoadReport:
    """The run's report from its merged measurements, what the coordinator knows, the SLOs."""
    generator = GeneratorView(
        cpu_percent=round(run.cpu_percent, 1),
        max_schedule_lag_ms=round(run.max_schedule_lag_ms, 3),
        max_dispatch_lag_ms=round(run.max_dispatch_lag_ms, 3),
        schedule_lag_ms=summarize(stats.schedule_lag),
        loop_lag_p99_ms=round(run.loop_lag_p99_ms, 3),
        loop_lag_max_ms=round(run.loop_lag_max_ms, 3),
        cpu_ms_per_customer=None
        if run.cpu_ms_per_customer is None
        else round(run.cpu_ms_per_customer, 3),
        peak_sockets=run.peak_sockets,
        open_files_limit=run.open_files_limit,
        loop_lag_by_stage_ms=run.loop_lag_by_stage_ms,
        release_lag_ms=run.release_lag_ms,
        processes=run.processes,
        lost=run.lost,
        valid=run.valid,
        invalid_reasons=run.invalid_reasons,
    )
    return LoadReport(
        customers=stats.finished,
        outcomes={outcome: stats.outcomes[outcome] for outcome in OUTCOMES},
        decline_codes=dict(stats.decline_codes.most_common()),
        latency_ms={phase: stats.phase_summary(phase) for phase in PHASES},
        latency_ms_uncorrected={
            phase: stats.phase_summary(phase, corrected=False) for phase in PHASES
        },
        latency_ms_by_outcome={
            outcome: stats.outcome_summary(outcome)
            for outcome in OUTCOMES
            if stats.outcomes[outcome]
        },
        rate={
            "target_per_s": None if run.target_per_s is None else round(run.target_per_s, 3),
            "achieved_per_s": round(run.achieved_per_s, 3),
        },
        generator=generator,
        slo=SloView(
            passed=all(result.passed for result in slo_results),
            results=[result.as_dict() for result in slo_results],
        ),
        errors=dict(stats.errors.most_common()),
        cards=dict(stats.cards),
        fallbacks=stats.fallbacks,
        disconnects=stats.disconnects,
        socket_drops=dict(stats.socket_drops.most_common()),
        socket_client_log=dict(stats.client_log.most_common()),
        integrity_problems=list(stats.integrity_problems),
        clamped_to_1us=stats.clamped,
        run=run,
        series=stats.series(),
        histograms=stats.to_dict(),
        requests=stats.endpoint_rows(),
        failures=stats.failures(),
        server_errors=stats.server_errors,
        retries=sum(stats.retries.values()),
    )


def write_json(report: LoadReport, path: Path) -> None:
    path.write_text(json.dumps(report.as_dict(), indent=2, sort_keys=False) + "\n")


# -- HTML -------------------------------------------------------------------------------------

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2"]
OUTCOME_COLORS = {
    "succeeded": "#2ca02c",
    "declined": "#ff7f0e",
    "sold_out": "#17becf",
    "failed": "#d62728",
    "timeout": "#7f0000",
    "disconnected": "#9467bd",
    "error": "#000000",
}
WIDTH, HEIGHT, PAD = 720, 300, 50


def _axis(x_ticks: list[tuple[float, str]], y_max: float, y_label: str, x_label: str) -> list[str]:
    inner_w, inner_h = WIDTH - 2 * PAD, HEIGHT - 2 * PAD
    parts = [
        f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - PAD}" y2="{HEIGHT - PAD}" '
        'stroke="#333"/>',
        f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{HEIGHT - PAD}" stroke="#333"/>',
        f'<text x="{WIDTH / 2}" y="{HEIGHT - 10}" text-anchor="middle">'
        f"{html.escape(x_label)}</text>",
        f'<text x="14" y="{HEIGHT / 2}" transform="rotate(-90 14 {HEIGHT / 2})" '
        f'text-anchor="middle">{html.escape(y_label)}</text>',
    ]
    for fraction, label in x_ticks:
        x = PAD + fraction * inner_w
        parts.append(
            f'<text x="{x:.1f}" y="{HEIGHT - PAD + 16}" text-anchor="middle" '
            f'font-size="11">{html.escape(label)}</text>'
        )
    for i in range(5):
        value = y_max * i / 4
        y = HEIGHT - PAD - inner_h * i / 4
        parts.append(
            f'<line x1="{PAD}" y1="{y:.1f}" x2="{WIDTH - PAD}" y2="{y:.1f}" stroke="#eee"/>'
            f'<text x="{PAD - 4}" y="{y + 4:.1f}" text-anchor="end" font-size="11">'
            f"{value:.4g}</text>"
        )
    return parts


def _legend(names: list[tuple[str, str]]) -> str:
    items = []
    for i, (name, color) in enumerate(names):
        x = PAD + 10 + i * 110
        items.append(
            f'<rect x="{x}" y="12" width="12" height="12" fill="{color}"/>'
            f'<text x="{x + 16}" y="22" font-size="12">{html.escape(name)}</text>'
        )
    return "".join(items)


def _svg(body: list[str], title: str) -> str:
    return (
        f"<figure><figcaption>{html.escape(title)}</figcaption>"
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif">{"".join(body)}</svg></figure>'
    )


def line_chart(
    lines: list[tuple[str, list[tuple[float, float]]]],
    title: str,
    x_label: str,
    y_label: str,
    x_ticks: list[tuple[float, str]] | None = None,
    x_range: tuple[float, float] | None = None,
) -> str:
    """A plain SVG line chart; x values are mapped linearly onto x_range."""
    points = [p for _, series in lines for p in series]
    if not points:
        return _svg([f'<text x="{PAD}" y="{HEIGHT / 2}">no data</text>'], title)
    x_lo, x_hi = x_range or (min(p[0] for p in points), max(p[0] for p in points))
    x_hi = x_hi if x_hi > x_lo else x_lo + 1
    y_max = max(p[1] for p in points) * 1.05 or 1.0
    inner_w, inner_h = WIDTH - 2 * PAD, HEIGHT - 2 * PAD
    if x_ticks is None:
        x_ticks = [(i / 4, f"{x_lo + (x_hi - x_lo) * i / 4:.4g}") for i in range(5)]
    body = _axis(x_ticks, y_max, y_label, x_label)
    legend = []
    for i, (name, series) in enumerate(lines):
        color = COLORS[i % len(COLORS)]
        legend.append((name, color))
        coords = " ".join(
            f"{PAD + (x - x_lo) / (x_hi - x_lo) * inner_w:.1f},"
            f"{HEIGHT - PAD - y / y_max * inner_h:.1f}"
            for x, y in series
        )
        body.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{coords}"/>')
    body.append(_legend(legend))
    return _svg(body, title)


def latency_over_time(series: list[dict[str, Any]]) -> str:
    rows = [r for r in series if r["e2e_ms"]["count"]]
    return line_chart(
        [
            ("p50", [(r["t_s"], r["e2e_ms"]["p50"]) for r in rows]),
            ("p99", [(r["t_s"], r["e2e_ms"]["p99"]) for r in rows]),
            ("max", [(r["t_s"], r["e2e_ms"]["max"]) for r in rows]),
            ("p99 uncorrected", [(r["t_s"], r["e2e_ms_uncorrected"]["p99"]) for r in rows]),
        ],
        "End-to-end latency over time (corrected unless noted)",
        "seconds into the run (by completion)",
        "ms",
    )


def percentile_distribution(stats: RunStats) -> str:
    """The HDR plot: x is 1/(1-percentile) on a log scale, so the tail gets the room."""
    lines = []
    top = 0.0
    for phase in PHASES:
        curve = percentile_curve(stats.corrected[phase])
        if not curve:
            continue
        points = [(math.log10(1 / max(1e-5, 1 - p / 100)), ms) for p, ms in curve]
        top = max(top, points[-1][0])
        lines.append((phase, points))
    top = max(top, 3.0)
    ticks = [
        (d / top, label)
        for d, label in ((0, "0%"), (1, "90%"), (2, "99%"), (3, "99.9%"), (4, "99.99%"))
        if d <= top
    ]
    return line_chart(
        lines,
        "Percentile distribution per phase (corrected)",
        "percentile",
        "ms",
        x_ticks=ticks,
        x_range=(0, top),
    )


def outcomes_over_time(series: list[dict[str, Any]]) -> str:
    if not series:
        return _svg([f'<text x="{PAD}" y="{HEIGHT / 2}">no data</text>'], "Outcomes over time")
    totals = [sum(row["outcomes"].values()) for row in series]
    y_max = max(max(totals), 1) * 1.05
    inner_w, inner_h = WIDTH - 2 * PAD, HEIGHT - 2 * PAD
    bar_w = inner_w / len(series)
    step = max(1, len(series) // 5)
    ticks = [(i / len(series), f"{series[i]['t_s']:g}") for i in range(0, len(series), step)]
    body = _axis(ticks, y_max, "customers finished", "seconds into the run")
    for i, row in enumerate(series):
        y = HEIGHT - PAD
        for outcome in OUTCOMES:
            count = row["outcomes"].get(outcome, 0)
            if not count:
                continue
            h = count / y_max * inner_h
            y -= h
            body.append(
                f'<rect x="{PAD + i * bar_w:.1f}" y="{y:.1f}" width="{max(bar_w - 1, 1):.1f}" '
                f'height="{h:.1f}" fill="{OUTCOME_COLORS[outcome]}">'
                f"<title>{row['t_s']:g}s {outcome}: {count}</title></rect>"
            )
    body.append(_legend([(o, OUTCOME_COLORS[o]) for o in OUTCOMES]))
    return _svg(body, "Outcomes over time (per interval, stacked)")


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(loaded: LoadReport, stats: RunStats) -> str:
    """One self-contained page: inline CSS and SVG, no scripts, no network."""
    report = loaded.as_dict()
    run = report["run"]
    generator = report["generator"]
    latency_rows = []
    for phase in PHASES:
        c, u = report["latency_ms"][phase], report["latency_ms_uncorrected"][phase]
        latency_rows.append(
            [phase, c["count"], c["p50"], c["p90"], c["p99"], c["p999"], c["max"], u["p99"]]
        )
    slo_rows = [
        [r["slo"], r["actual"], "PASS" if r["passed"] else "FAIL"] for r in report["slo"]["results"]
    ]
    validity = (
        "valid" if generator["valid"] else "INVALID: " + "; ".join(generator["invalid_reasons"])
    )
    summary = _table(
        ["what", "value"],
        [
            ["target", run["url"]],
            ["model", run["schedule"]],
            ["customers finished", report["customers"]],
            ["elapsed", f"{run['elapsed_s']:.1f} s"],
            [
                "rate target / achieved",
                f"{report['rate']['target_per_s']} / {report['rate']['achieved_per_s']} per s",
            ],
            ["generator CPU", f"{generator['cpu_percent']}%"],
            ["max schedule lag", f"{generator['max_schedule_lag_ms']} ms"],
            ["run", validity + (" (interrupted)" if run["interrupted"] else "")],
        ],
    )
    outcome_rows = [[o, n] for o, n in report["outcomes"].items()] + [
        [f"declined: {code}", n] for code, n in report["decline_codes"].items()
    ]
    request_rows = [
        [name, r["requests"], r["ok"], r["client_errors"], r["server_errors"]]
        + [r["transport_errors"], r["retries"]]
        for name, r in report["requests"].items()
    ]
    failure_rows = [[f["endpoint"], f["outcome"], f["count"]] for f in report["failures"]]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>flashsale loadgen report</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
figure {{ margin: 1.5em 0; }} figcaption {{ font-weight: bold; }}
</style></head><body>
<h1>flashsale loadgen report</h1>
{summary}
<h2>Outcomes</h2>
{_table(["outcome", "customers"], outcome_rows)}
<h2>Requests per endpoint ({report["server_errors"]} server 5xx, {report["retries"]} retries)</h2>
{
        _table(
            ["endpoint", "requests", "2xx/3xx", "4xx", "5xx", "transport errors", "retries"],
            request_rows,
        )
    }
<h2>Failures</h2>
{_table(["endpoint", "outcome", "count"], failure_rows) if failure_rows else "<p>none</p>"}
<h2>Latency (ms, corrected from scheduled arrival)</h2>
{_table(["phase", "count", "p50", "p90", "p99", "p99.9", "max", "p99 uncorrected"], latency_rows)}
<h2>SLOs</h2>
{_table(["slo", "actual", "result"], slo_rows) if slo_rows else "<p>none given</p>"}
<h2>Charts</h2>
{latency_over_time(report["series"])}
{percentile_distribution(stats)}
{outcomes_over_time(report["series"])}
</body></html>
"""


def write_html(report: LoadReport, stats: RunStats, path: Path) -> None:
    path.write_text(render_html(report, stats))

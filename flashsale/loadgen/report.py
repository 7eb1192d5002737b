"""The run report: one typed LoadReport, JSON with fixed keys for machines, an offline HTML page."""

from __future__ import annotations

import csv
import html
import io
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from flashsale import outputs
from flashsale.loadgen.stats import (
    AUTHENTICATE,
    ENDPOINT_COLUMNS,
    OUTCOMES,
    OVERTOOK,
    PHASES,
    ROOM_COUNTS,
    ROOM_PHASES,
    RunStats,
    SloResult,
    format_actual,
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
    tokenize: str = "auto"
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
        """Each failed gate with what was measured: `e2e.p99<9s (actual 10805.2ms)`."""
        return [
            f"{result['slo']} (actual {format_actual(result['unit'], result['actual'])})"
            for result in self.results
            if not result["passed"]
        ]


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
    # Once a second from the coordinator: customers arrived, in flight (by phase), sockets.
    timeline: list[dict[str, Any]] = field(default_factory=list)
    # What customers did in a waiting room (stats.ROOM_COUNTS); empty without one.
    room: dict[str, int] = field(default_factory=dict)
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
        room=room_counts(stats),
    )


def room_counts(stats: RunStats) -> dict[str, int]:
    """What customers did in the waiting room, and how many overtook an earlier arrival."""
    if not stats.room:
        return {}
    return {**{name: stats.room[name] for name in ROOM_COUNTS}, OVERTOOK: stats.overtakes()}


def write_csv(report: LoadReport, prefix: str) -> list[Path]:
    """Locust-style CSV files: per-endpoint requests, failures, and the time series."""
    written = []
    requests_columns = [key for key, _ in ENDPOINT_COLUMNS]
    files: dict[str, tuple[list[str], list[list[Any]]]] = {
        "requests": (
            ["endpoint", *requests_columns],
            [
                [name, *(row[key] for key in requests_columns)]
                for name, row in report.requests.items()
            ],
        ),
        "failures": (
            ["endpoint", "outcome", "count"],
            [[f["endpoint"], f["outcome"], f["count"]] for f in report.failures],
        ),
        "history": (
            ["t_s", "arrivals", *OUTCOMES, "e2e_p50_ms", "e2e_p99_ms", "server_errors", "retries"],
            [
                [row["t_s"], row["arrivals"], *(row["outcomes"].get(o, 0) for o in OUTCOMES)]
                + [row["e2e_ms"]["p50"], row["e2e_ms"]["p99"]]
                + [row.get("server_errors", 0), row.get("retries", 0)]
                for row in report.series
            ],
        ),
    }
    for name, (header, rows) in files.items():
        path = Path(f"{prefix}_{name}.csv")
        text = io.StringIO(newline="")
        writer = csv.writer(text)
        writer.writerow(header)
        writer.writerows(rows)
        outputs.write_text(path, text.getvalue(), newline="")
        written.append(path)
    return written


def write_json(report: LoadReport, path: Path) -> Path:
    outputs.write_text(path, json.dumps(report.as_dict(), indent=2, sort_keys=False) + "\n")
    return path


# -- HTML -------------------------------------------------------------------------------------

STATIC = Path(__file__).parent / "static"
# uPlot 1.6.32 (npm, MIT, static/uPlot.LICENSE) draws the charts: 51 KB of script inline, so a
# report opens offline and fetches nothing; static/report.js is the page's own chart code.
CHART_FILES = ("uPlot.min.css", "uPlot.iife.min.js", "report.js")
CHARTS = ("throughput", "active", "latency", "outcomes", "errors", "percentiles")
CSS = """
body { font-family: sans-serif; margin: 2em; color: #222; max-width: 1200px; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
td:first-child, th:first-child { text-align: left; }
th { background: #f4f4f4; }
.pass { color: #1a7f37; font-weight: bold; } .fail { color: #c62828; font-weight: bold; }
.verdict { font-size: 1.6em; margin: 0.2em 0 0.6em; }
.chart { margin: 1em 0 1.5em; min-height: 40px; } .chart.empty { color: #777; }
"""


def table(headers: list[str], rows: list[list[Any]], classes: list[str] | None = None) -> str:
    """An HTML table; `classes` gives each row's class (e.g. pass / fail)."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join(
        f'<tr class="{classes[i] if classes else ""}">'
        + "".join(f"<td>{html.escape(str(c))}</td>" for c in row)
        + "</tr>"
        for i, row in enumerate(rows)
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def section(title: str, content: str) -> str:
    return f"<section><h2>{html.escape(title)}</h2>{content}</section>"


def load_sections(loaded: LoadReport) -> list[str]:
    """The load run's part of a report: summary, outcomes, requests, failures, latency, SLOs,
    and the charts' places (report.js draws them)."""
    report = loaded.as_dict()
    run = report["run"]
    generator = report["generator"]
    validity = (
        "valid" if generator["valid"] else "INVALID: " + "; ".join(generator["invalid_reasons"])
    )
    stopped = " (interrupted)" if run["interrupted"] else ""
    if run.get("aborted"):
        stopped = f" (aborted: {run['aborted']})"
    summary = table(
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
            ["run", validity + stopped],
        ],
    )
    outcome_rows = [[o, n] for o, n in report["outcomes"].items()] + [
        [f"declined: {code}", n] for code, n in report["decline_codes"].items()
    ]
    request_rows = [
        [name, *(r[key] for key, _ in ENDPOINT_COLUMNS)] for name, r in report["requests"].items()
    ]
    failure_rows = [[f["endpoint"], f["outcome"], f["count"]] for f in report["failures"]]
    latency_rows = []
    for phase in shown_phases(report["latency_ms"]):
        c, u = report["latency_ms"][phase], report["latency_ms_uncorrected"][phase]
        latency_rows.append(
            [phase, c["count"], c["p50"], c["p90"], c["p99"], c["p999"], c["max"], u["p99"]]
        )
    results = report["slo"]["results"]
    slo_rows = [
        [
            r["slo"] + (" (default gate)" if r.get("default") else ""),
            format_actual(r["unit"], r["actual"]),
        ]
        + ["PASS" if r["passed"] else "FAIL"]
        for r in results
    ]
    slo_classes = ["pass" if r["passed"] else "fail" for r in results]
    charts = "".join(f'<div class="chart" id="chart-{name}"></div>' for name in CHARTS)
    toggle = '<label><input type="checkbox" id="latency-log"> latency on a log scale</label>'
    return [
        section("Load run", summary),
        section("Outcomes", table(["outcome", "customers"], outcome_rows)),
        section(
            f"Requests per endpoint ({report['server_errors']} server 5xx, "
            f"{report['retries']} retries)",
            table(["endpoint", *(title for _, title in ENDPOINT_COLUMNS)], request_rows),
        ),
        section(
            "Failures",
            table(["endpoint", "outcome", "count"], failure_rows)
            if failure_rows
            else "<p>none</p>",
        ),
        section(
            "Latency (ms, corrected from scheduled arrival)",
            table(
                ["phase", "count", "p50", "p90", "p99", "p99.9", "max", "p99 uncorrected"],
                latency_rows,
            ),
        ),
        section(
            "SLOs",
            table(["slo", "actual", "result"], slo_rows, slo_classes)
            if slo_rows
            else "<p>none</p>",
        ),
        section("Charts", toggle + charts),
    ]


def shown_phases(latency_ms: dict[str, dict[str, Any]]) -> list[str]:
    """The phases a report has, without the waiting room's and 3D Secure's when no customer
    went through them."""
    optional = (*ROOM_PHASES, AUTHENTICATE)
    return [
        phase
        for phase in PHASES
        if phase in latency_ms and (phase not in optional or latency_ms[phase].get("count"))
    ]


def chart_data(
    loaded: LoadReport, stats: RunStats, bands: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """What report.js draws: the time series, the timeline, HDR curves, and bands (faults)."""
    curves = {}
    for phase in PHASES:
        points = percentile_curve(stats.corrected[phase])
        if points:
            curves[phase] = [
                [round(math.log10(1 / max(1e-5, 1 - p / 100)), 4), ms] for p, ms in points
            ]
    return {
        "interval_s": stats.interval_s,
        "phases": list(PHASES),
        "outcomes": list(OUTCOMES),
        "series": loaded.series,
        "timeline": loaded.timeline,
        "curves": curves,
        "bands": bands or [],
    }


def page(title: str, sections: list[str], data: dict[str, Any]) -> str:
    """One self-contained page: inline CSS, uPlot and report.js, the data as JSON; no network."""
    assets = {name: (STATIC / name).read_text() for name in CHART_FILES}
    payload = json.dumps(data).replace("</", "<\\/")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{assets["uPlot.min.css"]}</style><style>{CSS}</style></head><body>
<h1>{html.escape(title)}</h1>
{"".join(sections)}
<script type="application/json" id="flashsale-report-data">{payload}</script>
<script>{assets["uPlot.iife.min.js"]}</script>
<script>{assets["report.js"]}</script>
</body></html>
"""


def render_html(loaded: LoadReport, stats: RunStats) -> str:
    """The load generator's own report page."""
    return page("flashsale loadgen report", load_sections(loaded), chart_data(loaded, stats))


def write_html(report: LoadReport, stats: RunStats, path: Path) -> Path:
    outputs.write_text(path, render_html(report, stats))
    return path

"""A run's result from its shards: merged numbers, whether the generator kept up, SLOs, exit code.

The one place that turns shard summaries into the run's result, whatever fleet played them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hdrh.histogram import HdrHistogram

from flashsale import outputs
from flashsale.errors import OutputError
from flashsale.loadgen.engine import Gauges, ShardSummary
from flashsale.loadgen.report import (
    LoadReport,
    RunInfo,
    build_report,
    write_csv,
    write_html,
    write_json,
)
from flashsale.loadgen.scenario import LoadConfig
from flashsale.loadgen.stats import RunStats, SloResult, evaluate, new_histogram, summarize

EXIT_OK, EXIT_SLO_FAILED, EXIT_USAGE, EXIT_INVALID = 0, 1, 2, 3
EXIT_OUTPUT = outputs.EXIT_OUTPUT  # a report could not be written: wins over the others


@dataclass
class ShardState:
    """What the coordinator knows of one shard: its merged numbers and how it is doing."""

    index: int
    kind: str
    stats: RunStats
    where: str = "?"
    hello: bool = False
    ready: bool = False
    done: bool = False
    lost: str | None = None
    last_seen: float = 0.0
    gauges: Gauges = field(default_factory=Gauges)
    summary: ShardSummary | None = None
    open_sent: bool = False

    @property
    def finished(self) -> bool:
        return self.done or self.lost is not None

    @property
    def name(self) -> str:
        return f"{self.kind} {self.index} ({self.where})"

    def row(self) -> dict[str, Any]:
        """One line of the generator processes table (dashboard and report)."""
        summary = self.summary
        status = "LOST" if self.lost else "done" if self.done else self.gauges.stage
        release = self.stats.release_lag
        return {
            "shard": self.index,
            "kind": self.kind,
            "where": self.where,
            "status": status,
            "arrived": self.gauges.arrived,
            "finished": self.stats.finished,
            "cpu_percent": round(summary.cpu_percent if summary else self.gauges.cpu_percent, 1),
            "loop_lag_p99_ms": float(summarize(self.stats.loop_lag)["p99"]),
            "loop_lag_ms_now": round(self.gauges.loop_lag_ms, 3),
            "max_schedule_lag_ms": round(self.gauges.max_schedule_lag_ms, 3),
            "release_lag_p99_ms": float(summarize(release)["p99"])
            if release.get_total_count()
            else None,
            "lost": self.lost,
        }


@dataclass
class Conclusion:
    report: LoadReport
    slo_results: list[SloResult]
    exit_code: int
    written: list[Path] = field(default_factory=list)
    # One line per report that could not be written (the run's figures are still printed).
    unwritten: list[str] = field(default_factory=list)


def conclude(
    config: LoadConfig,
    stats: RunStats,
    shards: list[ShardState],
    *,
    started_at: float,
    open_at_s: float | None,
    interrupted: bool,
    system: dict[str, Any] | None,
    aborted: str | None = None,
    timeline: list[dict[str, Any]] | None = None,
) -> Conclusion:
    """Judge the run, write the reports asked for, and pick the exit code."""
    summaries = [shard.summary for shard in shards if shard.summary]
    reasons: list[str] = []
    dispatch_lag = new_histogram()
    many = len(shards) > 1
    for shard in shards:
        if shard.lost is not None:
            reasons.append(f"{shard.name} lost: {shard.lost}; its customers are missing")
            continue
        if shard.summary is None:
            continue
        dispatch_lag.add(shard.summary.dispatch_lag)
        for reason in generator_reasons(
            config,
            cpu_percent=shard.summary.cpu_percent,
            dispatch_lag=shard.summary.dispatch_lag,
            stats=shard.stats,
        ):
            reasons.append(f"{shard.name}: {reason}" if many else reason)
    elapsed = max((s.elapsed_s for s in summaries), default=0.0)
    cpu_s = sum(s.cpu_s for s in summaries)
    loop_lag = summarize(stats.loop_lag)
    target, achieved = rates(config, stats, summaries, elapsed)
    kind = shards[0].kind if shards else "process"
    schedule = config.schedule.describe()
    info = RunInfo(
        url=config.url,
        model=config.schedule.model,
        schedule=f"{schedule}, {len(shards)} shards ({kind})" if many else schedule,
        started_at=started_at,
        elapsed_s=elapsed,
        planned_customers=config.schedule.customers,
        target_per_s=target,
        achieved_per_s=achieved,
        # The saturation figure is the busiest process's: one pinned core distorts its share.
        cpu_percent=max((s.cpu_percent for s in summaries), default=0.0),
        max_schedule_lag_ms=max((s.max_schedule_lag_ms for s in summaries), default=0.0),
        max_dispatch_lag_ms=float(summarize(dispatch_lag)["max"]),
        loop_lag_p99_ms=float(loop_lag["p99"]),
        loop_lag_max_ms=float(loop_lag["max"]),
        valid=not reasons,
        invalid_reasons=reasons,
        # Shards stop when told (Ctrl-C, or --abort-on-fail): the coordinator knows which.
        interrupted=interrupted,
        aborted=aborted,
        cancelled=sum(s.cancelled for s in summaries),
        cards_spec=config.cards.spec(),
        tokenize=config.tokenize,
        timeout_s=config.timeout_s,
        max_in_flight=config.max_in_flight,
        doors_open=doors_info(config, summaries, open_at_s),
        system=system,
        cpu_ms_per_customer=1000 * cpu_s / stats.finished if stats.finished else None,
        # Each process's own peak, added up: an upper bound of sockets open at once.
        peak_sockets=sum(s.peak_sockets for s in summaries),
        open_files_limit=min((s.open_files_limit for s in summaries), default=0),
        processes=[shard.row() for shard in shards] if many else [],
        lost=[f"{shard.name}: {shard.lost}" for shard in shards if shard.lost],
        **lag_views(stats),
    )
    slo_results = evaluate(config.slos, stats)
    report = build_report(stats, info, slo_results)
    report.timeline = list(timeline or [])
    written, unwritten = write_reports(config, report, stats)
    if unwritten:
        code = EXIT_OUTPUT
    elif reasons:
        code = EXIT_INVALID
    elif not all(result.passed for result in slo_results):
        code = EXIT_SLO_FAILED
    else:
        code = EXIT_OK
    return Conclusion(report, slo_results, code, written, unwritten)


def write_reports(
    config: LoadConfig, report: LoadReport, stats: RunStats
) -> tuple[list[Path], list[str]]:
    """Each report asked for, whole or not at all; one that fails does not stop the others."""
    jobs: list[Callable[[], list[Path]]] = []
    if (json_path := config.report_path) is not None:
        jobs.append(lambda: [write_json(report, json_path)])
    if (html_path := config.html_path) is not None:
        jobs.append(lambda: [write_html(report, stats, html_path)])
    if (prefix := config.csv_prefix) is not None:
        jobs.append(lambda: write_csv(report, prefix))
    written: list[Path] = []
    unwritten: list[str] = []
    for job in jobs:
        try:
            written += job()
        except OutputError as error:
            unwritten.append(str(error))
    return written, unwritten


def rates(
    config: LoadConfig, stats: RunStats, summaries: list[ShardSummary], elapsed: float
) -> tuple[float | None, float]:
    """Target vs achieved arrivals per second over the dispatch window, same formula."""
    schedule = config.schedule
    if schedule.rate is None:
        return None, stats.finished / elapsed if elapsed > 0 else 0.0
    firsts = [s.first_dispatch_s for s in summaries if s.first_dispatch_s is not None]
    lasts = [s.last_dispatch_s for s in summaries if s.last_dispatch_s is not None]
    last_offset = max((s.last_offset_s for s in summaries), default=0.0)
    spans = sum(s.arrived for s in summaries) - 1
    if spans <= 0 or not firsts:
        return schedule.rate.end_per_s, 0.0
    target = spans / last_offset if last_offset > 0 else schedule.rate.end_per_s
    window = max(lasts) - min(firsts)
    return target, spans / window if window > 0 else 0.0


def doors_info(
    config: LoadConfig, summaries: list[ShardSummary], open_at_s: float | None
) -> dict[str, Any] | None:
    if not config.schedule.doors_open:
        return None
    doors = [s.doors for s in summaries if s.doors]
    firsts = [d.first_submit_s for d in doors if d.first_submit_s is not None]
    lasts = [d.last_submit_s for d in doors if d.last_submit_s is not None]
    readies = [d.last_ready_at_s for d in doors if d.last_ready_at_s is not None]
    return {
        "ready": sum(d.ready for d in doors),
        "dropped_out": sum(d.dropped_out for d in doors),
        "opened_at_s": open_at_s,
        "last_ready_at_s": max(readies) if readies else None,
        "submits": sum(d.submits for d in doors),
        "submit_spread_ms": (max(lasts) - min(firsts)) * 1000 if firsts else None,
    }


def generator_reasons(
    config: LoadConfig, *, cpu_percent: float, dispatch_lag: HdrHistogram, stats: RunStats
) -> list[str]:
    """Why one generator process's numbers cannot be trusted (empty: they can).

    Lag is judged by what it distorts. Dispatch lag and event-loop lag while customers arrive
    (open and closed models, and doors-open's gathering) delay phases of milliseconds:
    --max-lag. From the doors opening on, every customer's clock started at the agreed
    instant and it is inside a submit -> result wait of seconds: the time this process takes
    to get each submit out (release lag) and its loop lag afterwards must stay under
    --max-release-lag (default: 10% of the median e2e latency they are added to, never less
    than --max-lag), so the generator's own share of every figure stays within that bound.
    """
    reasons = []
    if cpu_percent > config.max_cpu_percent:
        reasons.append(
            f"generator CPU {cpu_percent:.0f}% > {config.max_cpu_percent:.0f}%: it saturated"
        )
    limit_ms = config.max_lag_s * 1000
    dispatch = summarize(dispatch_lag)
    if config.schedule.concurrency is None and float(dispatch["p99"]) > limit_ms:
        reasons.append(
            f"generator started customers late: dispatch lag p99 {dispatch['p99']}ms > "
            f"{limit_ms:g}ms"
        )
    before = new_histogram()
    after = new_histogram()
    for stage, histogram in stats.loop_lag_by_stage.items():
        (after if stage in ("release", "results") else before).add(histogram)
    loop_p99 = float(summarize(before)["p99"])
    if loop_p99 > limit_ms:
        reasons.append(f"event-loop lag p99 {loop_p99}ms > {limit_ms:g}ms")
    if config.max_release_lag_s is not None:
        release_limit_ms = config.max_release_lag_s * 1000
        allowed = f"{release_limit_ms:g}ms"
    else:
        e2e_p50 = float(stats.phase_summary("e2e")["p50"])
        release_limit_ms = max(limit_ms, config.max_release_lag_ratio * e2e_p50)
        allowed = (
            f"{release_limit_ms:.0f}ms ({config.max_release_lag_ratio:.0%} of e2e p50 "
            f"{e2e_p50:.0f}ms, at least --max-lag)"
        )
    release = summarize(stats.release_lag)
    if release["count"] and float(release["p99"]) > release_limit_ms:
        reasons.append(
            f"doors-open release too slow: submits left {release['p99']}ms (p99) after the "
            f"doors opened > {allowed}"
        )
    after_p99 = float(summarize(after)["p99"])
    if after.get_total_count() and after_p99 > release_limit_ms:
        reasons.append(f"event-loop lag after the doors opened p99 {after_p99}ms > {allowed}")
    return reasons


def lag_views(stats: RunStats) -> dict[str, Any]:
    """Loop lag per stage and the release lag, for the report."""
    return {
        "loop_lag_by_stage_ms": {
            stage: summarize(histogram)
            for stage, histogram in stats.loop_lag_by_stage.items()
            if histogram.get_total_count()
        },
        "release_lag_ms": summarize(stats.release_lag)
        if stats.release_lag.get_total_count()
        else None,
    }

"""The live load-run dashboard: a pure render(Snapshot), plus a one-line form for CI logs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from flashsale.loadgen.stats import OUTCOMES, PHASES, RunStats

FUNNEL = ("session", "tokenize", "connect", "waiting", "submit", "result")
OUTCOME_STYLE = {
    "succeeded": "green",
    "declined": "yellow",
    "sold_out": "cyan",
    "failed": "red",
    "timeout": "red",
    "disconnected": "magenta",
    "error": "bold red",
}


@dataclass
class Snapshot:
    """Everything the dashboard shows at one instant; the runner builds it, render() draws it."""

    stats: RunStats
    elapsed_s: float
    model: str
    target_per_s: float | None
    achieved_per_s: float
    arrived: int
    planned: int | None
    in_flight: dict[str, int] = field(default_factory=dict)
    cpu_percent: float = 0.0
    loop_lag_ms: float = 0.0
    schedule_lag_ms: float = 0.0
    max_schedule_lag_ms: float = 0.0
    warnings: list[str] = field(default_factory=list)
    system: dict[str, object] | None = None
    stopping: bool = False
    processes: list[dict[str, Any]] = field(default_factory=list)  # one row per shard


def _ms(value: float) -> str:
    if value >= 10_000:
        return f"{value / 1000:.1f}s"
    if value >= 100:
        return f"{value:.0f}ms"
    return f"{value:.1f}ms" if value >= 1 else f"{value:.3f}ms"


def _header(snap: Snapshot) -> Table:
    grid = Table.grid(padding=(0, 2))
    for _ in range(4):
        grid.add_column()
    target = f"{snap.target_per_s:.0f}/s" if snap.target_per_s is not None else "closed"
    planned = f"/{snap.planned}" if snap.planned else ""
    lag_style = "red" if snap.warnings else "green"
    grid.add_row(
        Text.assemble(("elapsed ", "dim"), f"{snap.elapsed_s:6.1f}s"),
        Text.assemble(("rate ", "dim"), f"{snap.achieved_per_s:.0f}/s of {target}"),
        Text.assemble(("customers ", "dim"), f"{snap.arrived}{planned} started"),
        Text.assemble(("done ", "dim"), str(snap.stats.finished)),
    )
    grid.add_row(
        Text.assemble(("generator cpu ", "dim"), f"{snap.cpu_percent:.0f}%"),
        Text.assemble(("loop lag ", "dim"), _ms(snap.loop_lag_ms)),
        Text.assemble(
            ("schedule lag ", "dim"),
            (f"{_ms(snap.schedule_lag_ms)} (max {_ms(snap.max_schedule_lag_ms)})", lag_style),
        ),
        Text(snap.model, style="dim"),
    )
    return grid


def _funnel(snap: Snapshot) -> Table:
    table = Table(title="in flight", expand=True, show_edge=False)
    table.add_column("phase")
    table.add_column("customers", justify="right")
    for phase in FUNNEL:
        count = snap.in_flight.get(phase, 0)
        if phase == "waiting" and not count:
            continue
        table.add_row(phase, str(count))
    return table


def _outcomes(snap: Snapshot) -> Table:
    table = Table(title="outcomes", expand=True, show_edge=False)
    table.add_column("outcome")
    table.add_column("count", justify="right")
    table.add_column("share", justify="right")
    finished = snap.stats.finished or 1
    for outcome in OUTCOMES:
        count = snap.stats.outcomes[outcome]
        style = OUTCOME_STYLE[outcome] if count else "dim"
        table.add_row(Text(outcome, style=style), str(count), f"{100 * count / finished:.1f}%")
    for code, count in snap.stats.decline_codes.most_common(5):
        table.add_row(Text(f"  {code}", style="yellow dim"), str(count), "")
    return table


def _latency(snap: Snapshot) -> Table:
    table = Table(title="latency (corrected, from scheduled arrival)", expand=True, show_edge=False)
    table.add_column("phase")
    for name in ("p50", "p90", "p99", "p99.9", "max", "n"):
        table.add_column(name, justify="right")
    for phase in PHASES:
        summary = snap.stats.phase_summary(phase)
        if not summary["count"]:
            table.add_row(Text(phase, style="dim"), *["-"] * 5, "0")
            continue
        table.add_row(
            Text(phase, style="bold" if phase == "e2e" else ""),
            *(_ms(float(summary[key])) for key in ("p50", "p90", "p99", "p999", "max")),
            str(summary["count"]),
        )
    raw = snap.stats.phase_summary("e2e", corrected=False)
    if raw["count"]:
        table.add_row(
            Text("e2e raw", style="dim"),
            *(_ms(float(raw[key])) for key in ("p50", "p90", "p99", "p999", "max")),
            str(raw["count"]),
            style="dim",
        )
    return table


def _problems(snap: Snapshot) -> RenderableType | None:
    lines: list[Text] = [Text(w, style="bold red") for w in snap.warnings]
    stats = snap.stats
    if stats.server_errors or stats.retries:
        lines.append(
            Text(
                f"{stats.server_errors} server 5xx answers, {sum(stats.retries.values())} "
                "retries: " + requests_line(stats),
                style="bold red" if stats.server_errors else "yellow",
            )
        )
    for error, count in snap.stats.errors.most_common(5):
        lines.append(Text(f"{count:>6}  {error}", style="red"))
    for problem in snap.stats.integrity_problems[:3]:
        lines.append(Text(f"integrity: {problem}", style="bold red"))
    for reason, count in snap.stats.socket_drops.most_common(3):
        lines.append(Text(f"{count:>6}  sockets dropped: {reason}", style="magenta"))
    if snap.stats.fallbacks:
        lines.append(Text(f"{snap.stats.fallbacks} results fetched by GET /orders fallback"))
    if not lines:
        return None
    return Panel(Group(*lines), title="problems", border_style="red")


def _system(system: dict[str, object]) -> Table:
    table = Table(title="system", expand=True, show_edge=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    for name, value in system.items():
        table.add_row(name.replace("_", " "), str(value))
    return table


def _processes(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="generator processes", expand=True, show_edge=False)
    for name in ("#", "where", "status", "started", "done", "cpu", "loop lag p99", "release p99"):
        table.add_column(name, justify="left" if name in ("where", "status") else "right")
    for row in rows:
        lost = bool(row.get("lost"))
        release = row.get("release_lag_p99_ms")
        table.add_row(
            f"{row['kind']} {row['shard']}",
            str(row["where"]),
            Text(str(row["status"]), style="bold red" if lost else ""),
            str(row["arrived"]),
            str(row["finished"]),
            f"{row['cpu_percent']:.0f}%",
            _ms(float(row["loop_lag_p99_ms"])),
            "-" if release is None else _ms(float(release)),
            style="red" if lost else "",
        )
    return table


def render(snap: Snapshot) -> RenderableType:
    """Draw one frame; pure, so tests render it into a capture console."""
    middle = Table.grid(expand=True, padding=(0, 1))
    middle.add_column(ratio=1)
    middle.add_column(ratio=1)
    middle.add_column(ratio=1)
    middle.add_row(
        _funnel(snap), _outcomes(snap), _system(snap.system) if snap.system else Text("")
    )
    parts: list[RenderableType] = [_header(snap), middle, _latency(snap)]
    if snap.processes:
        parts.append(_processes(snap.processes))
    problems = _problems(snap)
    if problems is not None:
        parts.append(problems)
    title = "flashsale loadgen" + (" - stopping" if snap.stopping else "")
    return Panel(Group(*parts), title=title, border_style="blue")


def requests_line(stats: RunStats) -> str:
    """Each endpoint with trouble: its requests, 5xx, transport errors and retries."""
    parts = []
    for name, row in stats.endpoint_rows().items():
        trouble = [
            f"{row[key]} {label}"
            for key, label in (
                ("server_errors", "5xx"),
                ("transport_errors", "transport errors"),
                ("retries", "retries"),
            )
            if row[key]
        ]
        if trouble:
            parts.append(f"{name} {row['requests']} ({', '.join(trouble)})")
    return "; ".join(parts) or "none"


def status_line(snap: Snapshot) -> str:
    """The --no-dashboard form: one greppable line every few seconds."""
    e2e = snap.stats.phase_summary("e2e")
    outcomes = " ".join(f"{o}={snap.stats.outcomes[o]}" for o in OUTCOMES if snap.stats.outcomes[o])
    target = f"{snap.target_per_s:.0f}" if snap.target_per_s is not None else "closed"
    in_flight = sum(snap.in_flight.values())
    line = (
        f"[{snap.elapsed_s:6.1f}s] started={snap.arrived} done={snap.stats.finished} "
        f"in_flight={in_flight} rate={snap.achieved_per_s:.0f}/{target}/s "
        f"e2e p50={_ms(float(e2e['p50']))} p99={_ms(float(e2e['p99']))} "
        f"cpu={snap.cpu_percent:.0f}% lag={_ms(snap.schedule_lag_ms)} {outcomes} "
        f"5xx={snap.stats.server_errors} retries={sum(snap.stats.retries.values())}"
    )
    if snap.system:
        line += " " + " ".join(f"{k}={v}" for k, v in snap.system.items())
    for warning in snap.warnings:
        line += f" WARNING: {warning}"
    return line


def verdict_lines(
    console: Console,
    slo_results: list[Any],
    info: Any,
    report_paths: tuple[Any, ...],
    stats: RunStats | None = None,
) -> None:
    """The end-of-run lines (requests, SLOs, invalid-run reasons, reports, interruption)."""
    if stats is not None:
        console.print(
            f"requests: {stats.request_total}, server 5xx: {stats.server_errors}, retries: "
            f"{sum(stats.retries.values())}; with trouble: {requests_line(stats)}",
            highlight=False,
        )
    for result in slo_results:
        mark = "[green]PASS[/]" if result.passed else "[red]FAIL[/]"
        unit = {"ms": "ms", "ratio": "", "count": ""}[result.slo.unit]
        actual = (
            f"{result.actual:.4%}" if result.slo.unit == "ratio" else f"{result.actual:g}{unit}"
        )
        default = " (default gate)" if result.slo.default else ""
        console.print(f"SLO {result.slo.text}{default}: {mark} (actual {actual})")
    for reason in info.invalid_reasons:
        console.print(f"[bold red]INVALID RUN:[/] {reason}")
    for path in report_paths:
        if path is not None:
            console.print(f"report written to {path}")
    if info.interrupted:
        console.print(f"interrupted: {info.cancelled} customers in flight abandoned")

"""The live load-run dashboard: a pure render(Snapshot), plus a one-line form for CI logs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from flashsale.loadgen.stats import (
    ENDPOINT_COLUMNS,
    NOT_MEASURED,
    OUTCOMES,
    RunStats,
    format_actual,
)

FUNNEL = ("session", "tokenize", "connect", "waiting", "queue", "submit", "authenticate", "result")
# Shown only while someone is in them: the doors' wait, and the waiting room's line.
OPTIONAL_STAGES = ("waiting", "queue")
# Shown in the compact view only when they happened: customers leaving a waiting room's line.
OPTIONAL_OUTCOMES = ("abandoned",)
OUTCOME_STYLE = {
    "succeeded": "green",
    "declined": "yellow",
    "sold_out": "cyan",
    "failed": "red",
    "timeout": "red",
    "disconnected": "magenta",
    "abandoned": "yellow",
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
    slo_results: list[Any] = field(default_factory=list)  # each SLO judged on the run so far
    dispatching: bool = True  # arrivals still due (the target rate means something)


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
    planned = f"/{snap.planned}" if snap.planned else ""
    lag_style = "red" if snap.warnings else "green"
    grid.add_row(
        Text.assemble(("elapsed ", "dim"), f"{snap.elapsed_s:6.1f}s"),
        Text.assemble(("rate ", "dim"), rate_text(snap)),
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
        if phase in OPTIONAL_STAGES and not count:
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
    for phase in snap.stats.shown_phases():
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


def rate_text(snap: Snapshot) -> str:
    if snap.target_per_s is None:
        return f"{snap.achieved_per_s:.0f}/s (closed)"
    if not snap.dispatching:
        return "arrivals done"
    return f"{snap.achieved_per_s:.0f}/s of {snap.target_per_s:.0f}/s"


def _slos(results: list[Any]) -> Table:
    table = Table(title="SLOs (so far)", expand=True, show_edge=False)
    table.add_column("objective")
    table.add_column("now", justify="right")
    table.add_column("", justify="center")
    for result in results:
        table.add_row(slo_name(result), slo_value(result), _mark(result.passed))
    return table


def slo_name(result: Any) -> str:
    return result.slo.text + (" (default)" if result.slo.default else "")


def slo_value(result: Any) -> str:
    if result.actual is None:
        return NOT_MEASURED
    if result.slo.unit == "ratio":
        return f"{result.actual:.2%}"
    if result.slo.unit == "ms":
        return _ms(result.actual)
    return f"{result.actual:g}"


def _mark(passed: bool) -> Text:
    return Text("ok", style="green") if passed else Text("FAIL", style="bold red")


def _requests(stats: RunStats) -> Table:
    table = Table(
        title=f"requests ({stats.server_errors} server 5xx, {sum(stats.retries.values())} retries)",
        expand=True,
        show_edge=False,
    )
    table.add_column("endpoint")
    for _, title in ENDPOINT_COLUMNS:
        table.add_column(title, justify="right")
    for name, row in stats.endpoint_rows().items():
        trouble = row["server_errors"] or row["transport_errors"]
        cells = [str(row[key]) for key, _ in ENDPOINT_COLUMNS]
        table.add_row(name, *cells, style="red" if trouble else "")
    return table


# Below these, the compact layout: every figure on fewer lines, no name cut.
FULL_WIDTH, FULL_HEIGHT = 120, 46


def render(snap: Snapshot, size: tuple[int, int] | None = None) -> RenderableType:
    """Draw one frame for a terminal of `size` (width, height; None: the full layout); pure,
    so tests render it into a capture console of each size."""
    if size is not None and (size[0] < FULL_WIDTH or size[1] < FULL_HEIGHT):
        return render_compact(snap, size[0], size[1])
    middle = Table.grid(expand=True, padding=(0, 1))
    middle.add_column(ratio=1)
    middle.add_column(ratio=1)
    middle.add_column(ratio=1)
    middle.add_row(
        _funnel(snap), _outcomes(snap), _system(snap.system) if snap.system else Text("")
    )
    parts: list[RenderableType] = [_header(snap), middle, _latency(snap)]
    lower = Table.grid(expand=True, padding=(0, 1))
    lower.add_column(ratio=3)
    lower.add_column(ratio=2)
    lower.add_row(_requests(snap.stats), _slos(snap.slo_results) if snap.slo_results else "")
    parts.append(lower)
    if snap.processes:
        parts.append(_processes(snap.processes))
    problems = _problems(snap)
    if problems is not None:
        parts.append(problems)
    title = "flashsale loadgen" + (" - stopping" if snap.stopping else "")
    return Panel(Group(*parts), title=title, border_style="blue")


def render_compact(snap: Snapshot, width: int, height: int = 24) -> RenderableType:
    """The small-terminal form: labelled lines of items (an item is never cut, lines wrap
    between items) and one latency table; problems get the rows that are left."""
    stats = snap.stats
    inner = min(width, 160) - 4 - LABEL
    lines: list[RenderableType] = []

    def items(label: str, *cells: Text | str) -> None:
        texts = [Text(cell) if isinstance(cell, str) else cell for cell in cells]
        for index, packed in enumerate(pack(texts, inner)):
            lines.append(Text.assemble((f"{label if index == 0 else '':<{LABEL}}", "dim"), packed))

    planned = f"/{snap.planned}" if snap.planned else ""
    items(
        "run",
        f"{snap.elapsed_s:.1f}s",
        rate_text(snap),
        f"{snap.arrived}{planned} started",
        f"{stats.finished} done",
    )
    items(
        "generator",
        f"cpu {snap.cpu_percent:.0f}%",
        f"loop lag {_ms(snap.loop_lag_ms)}",
        Text(f"schedule lag {_ms(snap.schedule_lag_ms)}", "red" if snap.warnings else "green"),
    )
    # The stages someone is in: with the doors and the waiting room, all of them cost a line.
    busy = [f"{p} {snap.in_flight[p]}" for p in FUNNEL if snap.in_flight.get(p, 0)]
    items("in flight", *(busy or ["none"]))
    outcomes = Table.grid(padding=(0, 2))
    for _ in range(4):
        outcomes.add_column(no_wrap=True)
    cells = [
        Text(f"{o} {stats.outcomes[o]}", style=OUTCOME_STYLE[o] if stats.outcomes[o] else "dim")
        for o in OUTCOMES
        if stats.outcomes[o] or o not in OPTIONAL_OUTCOMES
    ]
    cells.append(Text(", ".join(f"{c} {n}" for c, n in stats.decline_codes.most_common(2))))
    for start in range(0, len(cells), 4):
        outcomes.add_row(*cells[start : start + 4])
    lines.append(outcomes)
    latency = Table(expand=False, show_edge=False, pad_edge=False, box=None, header_style="bold")
    latency.add_column("latency", min_width=LABEL - 2)
    for name in ("p50", "p90", "p99", "max", "n"):
        latency.add_column(name, justify="right", no_wrap=True)
    for phase in stats.shown_phases():
        summary = stats.phase_summary(phase)
        if summary["count"]:
            figures = [_ms(float(summary[key])) for key in ("p50", "p90", "p99", "max")]
        else:
            figures = ["-"] * 4
        latency.add_row(phase, *figures, str(summary["count"]))
    lines.append(latency)
    retries = sum(stats.retries.values())
    trouble = requests_line(stats) if stats.server_errors or retries else ""
    items(
        "requests",
        f"{stats.request_total}",
        Text(f"5xx {stats.server_errors}", "red" if stats.server_errors else ""),
        Text(f"retries {retries}", "yellow" if retries else ""),
        *([Text(trouble, "red")] if trouble else []),
    )
    if snap.system:
        items("system", *(f"{k} {v}" for k, v in snap.system.items()))
    if snap.slo_results:
        items(
            "SLOs",
            *(
                Text.assemble(
                    ("ok " if r.passed else "FAIL ", "green" if r.passed else "bold red"),
                    f"{r.slo.text} {slo_value(r)}",
                )
                for r in snap.slo_results
            ),
        )
    problems = [*snap.warnings, *(f"{n} x {e}" for e, n in stats.errors.most_common(3))]
    problems += [f"integrity: {p}" for p in stats.integrity_problems[:1]]
    if snap.processes:
        before = len(lines)
        items(
            "shards",
            *(
                Text(
                    f"{row['kind']} {row['shard']} {row['status']} {row['finished']} done "
                    f"cpu {row['cpu_percent']:.0f}%",
                    "bold red" if row.get("lost") else "",
                )
                for row in snap.processes
            ),
        )
        used = sum(part_height(part) for part in lines) + 2  # the panel's borders
        if problems and used >= height:
            # No line left for the problems: they matter more than each shard's figures.
            del lines[before:]
    used = sum(part_height(part) for part in lines) + 2
    room = max(1, height - used)
    shown = problems[:room]
    if len(shown) < len(problems):  # the last line that fits says how many more there are
        shown[-1] += f" (+{len(problems) - len(shown)} more)"
    for problem in shown:
        items("problem", Text(problem, "bold red"))
    title = f"flashsale loadgen: {snap.model}" + (" - stopping" if snap.stopping else "")
    return Panel(Group(*lines), title=title, border_style="blue", width=min(width, 160))


LABEL = 10  # the width of the compact layout's labels


def part_height(part: RenderableType) -> int:
    """Lines a compact part takes: one for a line, the rows (and header) of a table."""
    if isinstance(part, Table):
        return part.row_count + (1 if part.show_header else 0)
    return 1


def pack(cells: list[Text], width: int) -> list[Text]:
    """Cells joined by two spaces into lines of at most `width`; a cell is never cut (one too
    long for a line is its own line, cut at the edge with an ellipsis)."""
    lines: list[Text] = []
    for cell in cells:
        if lines and lines[-1].cell_len + 2 + cell.cell_len <= width:
            lines[-1].append("  ")
            lines[-1].append_text(cell)
        else:
            lines.append(cell.copy())
    for line in lines:
        line.no_wrap = True
        line.overflow = "ellipsis"
    return lines


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
    report_paths: Sequence[Any],
    stats: RunStats | None = None,
    *,
    unwritten: Sequence[str] = (),
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
        actual = format_actual(result.slo.unit, result.actual)
        default = " (default gate)" if result.slo.default else ""
        console.print(f"SLO {result.slo.text}{default}: {mark} (actual {actual})")
    for reason in info.invalid_reasons:
        console.print(f"[bold red]INVALID RUN:[/] {reason}")
    for path in report_paths:
        if path is not None:
            console.print(f"report written to {path}")
    for line in unwritten:
        console.print(f"[bold red]REPORT NOT WRITTEN:[/] {line}", highlight=False, soft_wrap=True)
    if info.interrupted:
        console.print(f"interrupted: {info.cancelled} customers in flight abandoned")
    if getattr(info, "aborted", None):
        console.print(
            f"[bold red]ABORTED:[/] {info.aborted} ({info.cancelled} customers in flight abandoned)"
        )

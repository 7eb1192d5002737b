"""Rich renderings of a reconciliation, a status snapshot and a rehearsal verdict (pure)."""

from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from flashsale.core import waiting_room
from flashsale.loadgen.report import LoadReport, shown_phases
from flashsale.loadgen.stats import ENDPOINT_COLUMNS
from flashsale.ops.counters import Counters, webhook_summary
from flashsale.ops.reconcile import Reconciliation
from flashsale.ops.rehearse import RehearsalResult, verdict_line
from flashsale.ops.status import Status


def _mark(passed: bool) -> Text:
    return Text("PASS", style="bold green") if passed else Text("FAIL", style="bold red")


def reconciliation_table(rec: Reconciliation) -> Table:
    table = Table(title=f"Reconciliation of {rec.sku}", show_header=True, header_style="bold")
    table.add_column("check")
    table.add_column("found", justify="right")
    table.add_column("", justify="center")
    for name, count in rec.discrepancies().items():
        table.add_row(name.replace("_", " "), str(count), _mark(count == 0))
    table.caption = (
        f"{rec.orders} orders ({_counts(rec.orders_by_state)}), "
        f"{rec.charges} charges ({_counts(rec.charges_by_status)}); "
        + rec.payment_intents_summary()
        + f"sold {rec.units_sold} of {rec.stock_initial if rec.stock_initial is not None else '?'}"
        f", {rec.stock_left} left"
        + (f", {rec.units_held} held by the waiting room" if rec.units_held else "")
        + (f" (sell-through {rec.sell_through:.1%})" if rec.sell_through is not None else "")
        + (
            f"; {rec.units_charged_without_order} more charged by orders Redis no longer has"
            if rec.units_charged_without_order
            else ""
        )
        + (
            "; waiting room: "
            + ", ".join(f"{name.replace('_', ' ')} {n}" for name, n in rec.room.items())
            if rec.room
            else ""
        )
    )
    return table


def reconciliation_details(rec: Reconciliation, limit: int = 10) -> RenderableType:
    """The ids behind each discrepancy, a few per kind, so an operator can look them up."""
    lines: list[str] = []
    listed: dict[str, Any] = {
        "orders without charge": rec.orders_without_charge,
        "charges without order": rec.charges_without_order,
        "orders charged twice": [
            f"{o}: {', '.join(c)}" for o, c in rec.orders_charged_twice.items()
        ],
        "succeeded order, charge not": rec.succeeded_order_charge_not_succeeded,
        "charge succeeded, order not": rec.charge_succeeded_order_not_succeeded,
        "amount mismatches": rec.amount_mismatches,
        "customers without a final result": rec.customers_without_final_result,
        "closed without Stripe's answer": rec.orders_closed_without_answer,
        "PaymentIntent left open": rec.payment_intents_left_open,
    }
    for name, ids in listed.items():
        for item in ids[:limit]:
            lines.append(f"{name}: {item}")
        if len(ids) > limit:
            lines.append(f"{name}: ... and {len(ids) - limit} more (use --json)")
    return Text("\n".join(lines)) if lines else Text("")


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if v) or "none"


def status_panel(status: Status) -> Panel:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    redis_line = (
        Text("reachable", style="green")
        if status.redis_ok
        else Text(f"UNREACHABLE: {status.redis_error}", style="bold red")
    )
    table.add_row("Redis", redis_line)
    table.add_row("Stripe", _stripe_mode(status.stripe_mode))
    table.add_row("queue depth", _unknown(status.queue_depth))
    table.add_row("unacknowledged", _unknown(status.unacked))
    workers = (
        Text(f"{len(status.workers)} alive: {', '.join(status.workers)}", style="green")
        if status.workers
        else Text("none answered ping", style="bold red")
    )
    table.add_row("workers", workers if status.redis_ok else Text("unknown"))
    table.add_row("orders", _counts(status.orders_by_state))
    stock = (
        f"{status.stock_left} of {status.stock_initial}"
        if status.stock_initial is not None
        else "no sale initialised"
    )
    table.add_row(f"stock {status.sku}", stock)
    table.add_row("sockets connected", _unknown(status.sockets_connected))
    return Panel(table, title="flashsale status", expand=False)


def _unknown(value: object) -> str:
    return "unknown" if value is None else str(value)


def _stripe_mode(mode: str) -> Text:
    styles = {"simulator": "cyan", "test": "yellow", "live": "bold red"}
    return Text(mode, style=styles.get(mode, ""))


def verdict_panel(result: RehearsalResult) -> Panel:
    """The end-of-rehearsal panel: checks, outcomes, latency and where the reports are."""
    checks = Table(show_header=True, header_style="bold", title="integrity and SLOs")
    checks.add_column("check")
    checks.add_column("detail")
    checks.add_column("", justify="center")
    for check in result.checks:
        checks.add_row(check.name, check.detail, _mark(check.passed))

    parts: list[RenderableType] = [checks]
    report = result.loadgen_report
    if report:
        # Name and count side by side, four to a row: whole names at 80 columns.
        outcomes = Table.grid(padding=(0, 3))
        for _ in range(4):
            outcomes.add_column(no_wrap=True)
        cells = [
            Text.assemble((f"{name} ", "bold"), f"{count:,}")
            for name, count in report.outcomes.items()
        ]
        for start in range(0, len(cells), 4):
            outcomes.add_row(*cells[start : start + 4])
        parts.append(Text("outcomes", style="italic"))
        parts.append(outcomes)
        latency = Table(title="latency (ms, from scheduled arrival)", header_style="bold")
        latency.add_column("phase")
        for column in ("p50", "p90", "p99", "p999", "max", "count"):
            latency.add_column(column, justify="right")
        for phase in shown_phases(report.latency_ms):
            row = report.latency_ms[phase]
            if row:
                latency.add_row(
                    phase,
                    *(_fmt(row.get(c)) for c in ("p50", "p90", "p99", "p999", "max", "count")),
                )
        parts.append(latency)
        parts.append(requests_table(report))
    room = room_line(report, result.reconciliation)
    if room is not None:
        parts.append(room)
    if result.counters is not None:
        parts.append(other_side(result.counters))
    rec = result.reconciliation
    if rec:
        parts.append(
            Text(
                f"{rec.orders} orders ({_counts(rec.orders_by_state)}); {rec.charges} charges "
                f"({_counts(rec.charges_by_status)}); "
                + rec.payment_intents_summary()
                + f"sold {rec.units_sold} of "
                f"{rec.stock_initial}, {rec.stock_left} left" + unsold_note(rec.stock_left, report)
            )
        )
    if result.unwritten:
        missing = result.unwritten
        parts.extend(Text(f"REPORT NOT WRITTEN: {line}", style="bold red") for line in missing)
    else:
        parts.append(
            Text(f"reports: {result.run_dir / 'report.json'}, {result.run_dir / 'report.html'}")
        )
    verdict = "PASSED" if result.passed else ("INTERRUPTED" if result.interrupted else "FAILED")
    style = "green" if result.passed else "red"
    first = Text(verdict_line(result), style=f"bold {style}")
    return Panel(
        Group(first, *parts), title=f"rehearsal {result.plan.name}: {verdict}", border_style=style
    )


def room_line(report: LoadReport | None, rec: Reconciliation | None) -> Text | None:
    """The waiting room in one line: what customers saw, and what the server's room did."""
    seen = report.room if report else {}
    done = rec.room if rec else {}
    if not seen and not done:
        return None
    customers = ", ".join(f"{name.replace('_', ' ')} {count:,}" for name, count in seen.items())
    server = ", ".join(
        f"{name.replace('_', ' ')} {done.get(name, 0):,}" for name in waiting_room.COUNTS
    )
    return Text(f"waiting room: customers {customers or '-'}; the room {server or '-'}")


def unsold_note(left: int | None, report: LoadReport | None) -> str:
    """Units left over while customers were turned away: lost sales, said out loud."""
    turned_away = report.outcomes.get("sold_out", 0) if report else 0
    if left and turned_away:
        return f" while {turned_away} customers were told sold out"
    return ""


def requests_table(report: LoadReport) -> Table:
    """Every request customers made, per endpoint, with what went wrong (a retry is shown)."""
    table = Table(
        title=f"requests ({report.server_errors} server 5xx, {report.retries} retries)",
        header_style="bold",
    )
    table.add_column("endpoint")
    for _, title in ENDPOINT_COLUMNS:
        table.add_column(title, justify="right")
    for name, row in report.requests.items():
        cells = [row[key] for key, _ in ENDPOINT_COLUMNS]
        styles = "red" if row["server_errors"] or row["transport_errors"] else ""
        table.add_row(name, *(f"{cell:,}" for cell in cells), style=styles)
    return table


def other_side(counters: Counters) -> Text:
    """What the server, the workers and Stripe counted themselves."""
    charges = counters.server_responses.get("POST /charges", {})
    stripe = counters.stripe
    limited = stripe.get("rate_limited", {}).get("total", 0) if stripe else "?"
    line = (
        f"server answered POST /charges {_counts(charges)}; Redis errors "
        f"{_counts(counters.server_redis_errors)}; workers retried Stripe "
        f"{counters.worker_stripe_retries} times; Stripe answered 429 {limited} times"
    )
    hooks = webhook_summary(stripe, counters.server_webhooks)
    if hooks:
        line += f"\n{hooks}"
    if counters.unavailable:
        line += f" (not read: {'; '.join(counters.unavailable)})"
    return Text(line)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}"
    return f"{value:,}"


def comparison_table(rows: list[tuple[str, str, str]]) -> Table:
    """`rehearse --compare-waiting-room`: each figure with the room and without it."""
    table = Table(title="The same sale, with and without the waiting room", title_justify="left")
    table.add_column("figure", style="bold")
    table.add_column("with the waiting room", overflow="fold")
    table.add_column("without it", overflow="fold")
    for name, on, off in rows:
        table.add_row(name, on, off)
    return table

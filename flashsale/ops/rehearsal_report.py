"""The rehearsal's report.html: the verdict and every check first, then the scenario, the
reconciliation, the faults, what the server, workers and Stripe counted, and the load run's
tables and charts (the load report's page, with the faults drawn on every time chart)."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flashsale import outputs
from flashsale.loadgen.report import chart_data, load_sections, page, section, table
from flashsale.ops.counters import webhook_summary

if TYPE_CHECKING:  # rehearse writes this report: at run time it imports us
    from flashsale.ops.rehearse import RehearsalResult


def render(result: RehearsalResult, document: dict[str, Any], verdict: str) -> str:
    """The page for one rehearsal; `document` is what report.json holds, `verdict` its first
    line (PASSED, or FAILED and the first reason)."""
    css_class = "pass" if result.passed else "fail"
    checks = table(
        ["check", "detail", "result"],
        [[c.name, c.detail, "PASS" if c.passed else "FAIL"] for c in result.checks],
        ["pass" if c.passed else "fail" for c in result.checks],
    )
    sections = [
        f'<p class="verdict {css_class}" id="verdict">{html.escape(verdict)}</p>',
        section("Checks", checks),
        section("Scenario and configuration", scenario_table(document)),
        section("Reconciliation", reconciliation(result)),
        section("Faults", faults(result)),
        section("What the server, the workers and Stripe counted", other_side(document)),
    ]
    load = result.loadgen_report
    if load is None:
        sections.append(section("Load run", "<p>the load run wrote no report</p>"))
        return page(f"flashsale rehearsal {result.plan.name}", sections, {"series": []})
    bands = [
        {
            "start": record.started_s,
            "end": record.ended_s if record.ended_s is not None else record.started_s,
            "label": record.fault,
        }
        for record in result.chaos
        if record.started_s is not None
    ]
    sections += load_sections(load)
    return page(
        f"flashsale rehearsal {result.plan.name}",
        sections,
        chart_data(load, load.stats(), bands),
    )


def write(result: RehearsalResult, document: dict[str, Any], verdict: str, path: Path) -> None:
    outputs.write_text(path, render(result, document, verdict))


def scenario_table(document: dict[str, Any]) -> str:
    rows: list[list[Any]] = [
        ["scenario", document["scenario"]],
        ["Stripe", document["stripe"]],
        ["Redis durable (AOF)", document["redis_durable"]],
    ]
    for name, values in document["plan"].items():
        for key, value in values.items():
            shown = json.dumps(value) if isinstance(value, list | dict) else value
            rows.append([f"{name}.{key}", shown])
    return table(["setting", "value"], rows)


def reconciliation(result: RehearsalResult) -> str:
    rec = result.reconciliation
    if rec is None:
        return "<p>not reconciled (the rehearsal did not finish)</p>"
    counts = table(
        ["check", "found"],
        [[name.replace("_", " "), count] for name, count in rec.discrepancies().items()],
        ["pass" if count == 0 else "fail" for count in rec.discrepancies().values()],
    )
    sold_out = result.loadgen_report.outcomes.get("sold_out", 0) if result.loadgen_report else 0
    summary = (
        f"{rec.orders} orders, {rec.charges} charges; "
        + rec.payment_intents_summary()
        + f"sold {rec.units_sold} of "
        f"{rec.stock_initial}, {rec.stock_left} left"
        + (f", {rec.units_held} held by the waiting room" if rec.units_held else "")
        + (f" while {sold_out} customers were told sold out" if rec.stock_left and sold_out else "")
        + (f"; sell-through {rec.sell_through:.1%}" if rec.sell_through is not None else "")
        + (
            "; waiting room: "
            + ", ".join(f"{name.replace('_', ' ')} {n:,}" for name, n in rec.room.items())
            if rec.room
            else ""
        )
    )
    return f"<p>{html.escape(summary)}</p>{counts}"


def faults(result: RehearsalResult) -> str:
    if not result.chaos:
        return "<p>none (no --chaos)</p>"
    rows = [
        [r.fault, r.started_s, r.ended_s, r.detail, r.error or ("skipped" if r.skipped else "")]
        for r in result.chaos
    ]
    return table(["fault", "started (s)", "ended (s)", "what happened", "problem"], rows)


def other_side(document: dict[str, Any]) -> str:
    counters = document.get("counters")
    if not counters:
        return "<p>not read</p>"
    responses = [
        [route, status, count]
        for route, statuses in sorted(counters["server_responses"].items())
        for status, count in sorted(statuses.items())
    ]
    stripe = counters.get("stripe") or {}
    figures = [
        ["Redis errors by kind", json.dumps(counters["server_redis_errors"]) or "none"],
        ["worker retries of Stripe calls", counters["worker_stripe_retries"]],
        ["Stripe 429 answers", (stripe.get("rate_limited") or {}).get("total", "?")],
        ["Stripe injected errors", stripe.get("injected_errors", "?")],
        ["Stripe dropped connections", stripe.get("dropped_connections", "?")],
        ["Stripe idempotent replays", stripe.get("idempotent_replays", "?")],
    ]
    hooks = webhook_summary(stripe, counters.get("server_webhooks") or {})
    if hooks:
        figures.append(["webhooks", hooks])
    if document.get("counters_not_comparable"):
        figures.append(["not compared with customers", document["counters_not_comparable"]])
    for problem in counters.get("unavailable", []):
        figures.append(["not read", problem])
    return table(["server route", "status", "answers"], responses) + table(
        ["figure", "value"], figures
    )

"""`rehearse --compare-waiting-room`: the same sale with the waiting room and without, side by side.

The room's worth is a difference: the same scenario, customers and stock, once admitted by
the room and once as the doors-open herd. Each runs as its own rehearsal (its own pipeline,
run directory and verdict: `room-on/`, `room-off/`); the figures that tell them apart are
put in one table, in `comparison.json` and in `comparison.html` beside them.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flashsale import outputs
from flashsale.errors import OutputError
from flashsale.loadgen.stats import OVERTOOK
from flashsale.ops.plan import RehearsalPlan
from flashsale.ops.rehearse import RehearsalResult, unsold_check, verdict_line

SIDES = ("room-on", "room-off")


@dataclass
class Comparison:
    on: RehearsalResult
    off: RehearsalResult
    unwritten: list[str]

    @property
    def exit_code(self) -> int:
        """The room's verdict: the herd without it is expected to fail, and is only shown."""
        return self.on.process_exit_code


def run_both(
    rehearse: Callable[[RehearsalPlan, Path], RehearsalResult],
    plan: RehearsalPlan,
    directory: Path,
    say: Callable[[str], None],
) -> Comparison:
    """Rehearse `plan` with the room on, then off (a run interrupted stops there)."""
    results: dict[str, RehearsalResult] = {}
    for side in SIDES:
        say(f"--compare-waiting-room: the sale with the room {side.removeprefix('room-')}")
        sided = plan.with_overrides(waiting_room={"enabled": side == "room-on"})
        results[side] = rehearse(sided, directory / side)
        if results[side].interrupted:
            results.setdefault("room-off", results[side])
            break
    comparison = Comparison(results["room-on"], results["room-off"], [])
    rows = figures(comparison)
    data = {"rows": [{"figure": name, "room_on": on, "room_off": off} for name, on, off in rows]}
    for name, text in (
        ("comparison.json", json.dumps(data, indent=2) + "\n"),
        ("comparison.html", page(rows)),
    ):
        try:
            outputs.write_text(directory / name, text)
        except OutputError as error:
            comparison.unwritten.append(str(error))
    return comparison


def figures(comparison: Comparison) -> list[tuple[str, str, str]]:
    """(figure, with the room, without it): what a payments engineer compares."""
    on, off = _side(comparison.on), _side(comparison.off)
    return [(name, on.get(name, "-"), off.get(name, "-")) for name in FIGURES]


FIGURES = (
    "verdict",
    "customers",
    "paid",
    "declined",
    "told sold out",
    "units sold / stock",
    "units unsold while customers were turned away",
    "server 5xx",
    "retries",
    "queue p50 / p99",
    "checkout p99 (admitted -> answer)",
    "submit p99",
    "e2e p50 / p99",
    "admitted ahead of an earlier arrival",
)


def _side(result: RehearsalResult) -> dict[str, str]:
    shown = {"verdict": verdict_line(result)}
    report, rec = result.loadgen_report, result.reconciliation
    if report is not None:
        outcomes, latency = report.outcomes, report.latency_ms
        shown.update(
            {
                "customers": f"{sum(outcomes.values()):,}",
                "paid": f"{outcomes.get('succeeded', 0):,}",
                "declined": f"{outcomes.get('declined', 0):,}",
                "told sold out": f"{outcomes.get('sold_out', 0):,}",
                "server 5xx": f"{report.server_errors:,}",
                "retries": f"{report.retries:,}",
                "queue p50 / p99": _pair(latency.get("queue", {})),
                "checkout p99 (admitted -> answer)": _ms(latency.get("checkout", {}).get("p99")),
                "submit p99": _ms(latency.get("submit", {}).get("p99")),
                "e2e p50 / p99": _pair(latency.get("e2e", {})),
            }
        )
        if OVERTOOK in report.room:
            shown["admitted ahead of an earlier arrival"] = str(report.room[OVERTOOK])
    if rec is not None:
        stock = "?" if rec.stock_initial is None else f"{rec.stock_initial:,}"
        shown["units sold / stock"] = f"{rec.units_sold:,} / {stock}"
        if report is not None:
            check = unsold_check(rec, report)
            shown["units unsold while customers were turned away"] = check.detail
    return shown


def _ms(value: float | None) -> str:
    if not value:
        return "-"
    return f"{value / 1000:.2f} s" if value >= 1000 else f"{value:.0f} ms"


def _pair(summary: dict[str, Any]) -> str:
    if not summary.get("count"):
        return "-"
    return f"{_ms(summary.get('p50'))} / {_ms(summary.get('p99'))}"


def page(rows: list[tuple[str, str, str]]) -> str:
    """comparison.html: the table, and links to each side's own report."""
    cells = "\n".join(
        f"<tr><th>{html.escape(name)}</th><td>{html.escape(on)}</td><td>{html.escape(off)}</td>"
        "</tr>"
        for name, on, off in rows
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>flashsale: with and without the waiting room</title>
<style>
body {{ font: 14px/1.45 system-ui, sans-serif; margin: 2rem; color: #1b1f24; }}
table {{ border-collapse: collapse; }}
th, td {{ border-bottom: 1px solid #d0d7de; padding: .4rem .9rem; text-align: left; }}
thead th {{ background: #f6f8fa; }}
tbody th {{ font-weight: 500; color: #57606a; }}
</style></head>
<body>
<h1>The same sale, with and without the waiting room</h1>
<p>Each side ran as its own rehearsal: <a href="room-on/report.html">with the room</a>,
<a href="room-off/report.html">without it</a> (the doors-open herd).</p>
<table>
<thead><tr><th>figure</th><th>with the waiting room</th><th>without it</th></tr></thead>
<tbody>
{cells}
</tbody>
</table>
</body></html>
"""

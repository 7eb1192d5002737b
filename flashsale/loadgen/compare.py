"""`flashsale report compare`: two loadgen reports side by side, with the change of each figure."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from flashsale.errors import ConfigError
from flashsale.loadgen.stats import OUTCOMES, PHASES

LATENCY_KEYS = ("p50", "p90", "p99", "p999", "max")
# For these a rise is bad news (latency, failures); for the rest (successes, rate) it is good.
HIGHER_IS_BETTER = {"succeeded", "achieved_per_s", "customers"}


def load_report(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except OSError as error:
        raise ConfigError(f"cannot read report {path}: {error.strerror}") from None
    except ValueError:
        raise ConfigError(f"{path} is not a JSON report") from None
    if not isinstance(data, dict) or "latency_ms" not in data or "outcomes" not in data:
        raise ConfigError(f"{path} is not a flashsale loadgen report (no latency_ms/outcomes)")
    return data


def _delta(name: str, base: float | None, new: float | None, whole: bool = False) -> Text:
    if base is None or new is None:
        return Text("-", style="dim")
    change = new - base
    if change == 0:
        return Text("=", style="dim")
    ratio = f" ({change / base:+.0%})" if base else ""
    better = (change > 0) == (name in HIGHER_IS_BETTER)
    shown = f"{change:+,.0f}" if whole else f"{change:+,.1f}"
    return Text(f"{shown}{ratio}", style="green" if better else "red")


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _fmt(value: float | None, whole: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if whole else f"{value:,.1f}"


def compare_view(base: dict[str, Any], new: dict[str, Any]) -> RenderableType:
    """Latency per phase, outcomes, rates and generator health: base, new, change."""
    latency = Table(title="latency ms (corrected)", show_edge=False)
    latency.add_column("phase")
    latency.add_column("stat")
    for column in ("base", "new", "change"):
        latency.add_column(column, justify="right")
    for phase in PHASES:
        for key in LATENCY_KEYS:
            b = _num(base["latency_ms"].get(phase, {}).get(key))
            n = _num(new["latency_ms"].get(phase, {}).get(key))
            if not b and not n:
                continue
            latency.add_row(phase, key, _fmt(b), _fmt(n), _delta(key, b, n))
    counts = Table(title="outcomes and rates", show_edge=False)
    counts.add_column("figure")
    for column in ("base", "new", "change"):
        counts.add_column(column, justify="right")
    rows: list[tuple[str, float | None, float | None]] = [
        ("customers", _num(base.get("customers")), _num(new.get("customers")))
    ]
    rows += [
        (o, _num(base["outcomes"].get(o)), _num(new["outcomes"].get(o)))
        for o in OUTCOMES
        if base["outcomes"].get(o) or new["outcomes"].get(o)
    ]
    for key in ("target_per_s", "achieved_per_s"):
        rows.append((key, _num(base.get("rate", {}).get(key)), _num(new.get("rate", {}).get(key))))
    for key in ("cpu_percent", "loop_lag_p99_ms", "cpu_ms_per_customer"):
        rows.append(
            (
                f"generator {key}",
                _num(base.get("generator", {}).get(key)),
                _num(new.get("generator", {}).get(key)),
            )
        )
    for name, b, n in rows:
        whole = name == "customers" or name in OUTCOMES  # counts of customers, not measures
        counts.add_row(name, _fmt(b, whole), _fmt(n, whole), _delta(name, b, n, whole))
    notes = []
    for label, report in (("base", base), ("new", new)):
        generator = report.get("generator", {})
        if not generator.get("valid", True):
            reasons = "; ".join(generator.get("invalid_reasons", []))
            notes.append(Text(f"{label} run is INVALID: {reasons}", style="bold red"))
    return Group(latency, counts, *notes)

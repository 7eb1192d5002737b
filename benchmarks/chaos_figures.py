"""Per-fault integrity and latency figures: a baseline rehearsal, then one rehearsal per fault.

Run from the repository root:

    .venv/bin/python benchmarks/chaos_figures.py              # baseline + every fault (~9 min)
    .venv/bin/python benchmarks/chaos_figures.py kill-worker@6s sim-429@6s:4s

Each row is one `flashsale rehearse` of the embedded chaos scenario (500 customers at 20/s,
stock 480, simulator latency 100 ms); the command that reproduces a row is printed under it.
Some faults need more than the spec (EXTRA): restart-redis with --redis-durable, and without
it (Redis loses the sale, the server restarted on it must open it net of Stripe's ledger),
failover-redis with --redis-sentinel, sim-stall with the workers' retry budget cut to ~9 s
(max_retries 1) so the stall outlasts it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any

from flashsale.ops.processes import flashsale_argv

FAULTS = [
    "kill-worker@6s",
    "restart-server@8s",
    "pause-server@8s:2s",
    "redis-listener@6s:3s",
    "sim-429@6s:4s",
    "sim-5xx@6s:2s",
    "sim-latency@6s:3s",
    "sim-drop@6s:4s",
    "restart-redis@8s",  # with --redis-durable
    "restart-redis@8s,restart-server@10s",  # without: the data is lost
    "failover-redis@8s",
    "sim-stall@6s:15s",
    "slow-clients@6s:15s",
]
# spec -> the rehearse flags it needs beyond --chaos; and scenario keys it changes.
EXTRA_FLAGS = {
    "restart-redis@8s": ["--redis-durable"],
    "failover-redis@8s": ["--redis-sentinel"],
}
PIPELINE_CHANGES = {"sim-stall@6s:15s": {"max_retries": 1}}
SCENARIO = Path(str(resources.files("flashsale.ops").joinpath("scenarios/chaos.toml")))
COLUMNS = (
    "fault",
    "exit",
    "customers",
    "orders",
    "charges",
    "dup",
    "lost",
    "oversold",
    "delivered",
    "fallbacks",
    "errors",
    "p99 e2e ms",
    "baseline p99",
)


def rehearse(spec: str | None, run_dir: Path) -> tuple[list[str], dict[str, Any]]:
    argv = [
        "rehearse",
        "--scenario",
        str(SCENARIO),
        "--run-dir",
        str(run_dir),
        "--no-dashboard",
    ]
    if spec:
        argv += ["--chaos", spec, *EXTRA_FLAGS.get(spec, [])]
    changes = PIPELINE_CHANGES.get(spec or "")
    if changes:
        variant = run_dir.with_suffix(".toml")
        text = SCENARIO.read_text()
        added = "".join(f"{key} = {value}\n" for key, value in changes.items())
        variant.write_text(text.replace("[pipeline]\n", "[pipeline]\n" + added, 1))
        argv[argv.index(str(SCENARIO))] = str(variant)
    subprocess.run(flashsale_argv(*argv), capture_output=True, timeout=600, check=False)
    return ["flashsale", *argv], json.loads((run_dir / "report.json").read_text())


def row(spec: str, report: dict[str, Any], baseline_p99: float | None) -> list[str]:
    rec = report["reconciliation"] or {}
    loadgen = report["loadgen"] or {}
    outcomes = loadgen.get("outcomes", {})
    orders = rec.get("orders", 0)
    told = outcomes.get("succeeded", 0) + outcomes.get("declined", 0) + outcomes.get("failed", 0)
    # Lost: an order never finished, a paid/declined order Stripe has no charge for, or a charge
    # no order explains.
    lost = (
        rec.get("orders_by_state", {}).get("pending", 0)
        + len(rec.get("orders_without_charge", []))
        + len(rec.get("charges_without_order", []))
    )
    p99 = loadgen.get("latency_ms", {}).get("e2e", {}).get("p99")
    return [
        spec,
        str(report["exit_code"]),
        str(loadgen.get("customers", "?")),
        str(orders),
        str(rec.get("charges", "?")),
        str(len(rec.get("orders_charged_twice", {}))),
        str(lost),
        str(rec.get("oversold", "?")),
        f"{100 * told / orders:.1f}%" if orders else "-",
        str(loadgen.get("fallbacks", "?")),
        str(sum(loadgen.get("errors", {}).values())),
        f"{p99:,.0f}" if p99 is not None else "-",
        f"{baseline_p99:,.0f}" if baseline_p99 is not None else "-",
    ]


def print_table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [list(COLUMNS), *rows]) for i in range(len(COLUMNS))]
    print("| " + " | ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")


def main(specs: list[str]) -> None:
    rows: list[list[str]] = []
    commands: list[str] = []
    with tempfile.TemporaryDirectory(prefix="flashsale-chaos-") as tmp:
        started = time.monotonic()
        command, base = rehearse(None, Path(tmp) / "baseline")
        baseline_p99 = (base["loadgen"] or {}).get("latency_ms", {}).get("e2e", {}).get("p99")
        rows.append(row("(none: baseline)", base, baseline_p99))
        commands.append(" ".join(command))
        for index, spec in enumerate(specs):
            command, report = rehearse(spec, Path(tmp) / f"fault{index}")
            extra = [
                *EXTRA_FLAGS.get(spec, []),
                *(f"{key}={value}" for key, value in PIPELINE_CHANGES.get(spec, {}).items()),
            ]
            label = f"{spec} ({' '.join(extra)})" if extra else spec
            rows.append(row(label, report, baseline_p99))
            commands.append(" ".join(command))
            print(f"done {spec} ({time.monotonic() - started:.0f}s)", file=sys.stderr)
    print_table(rows)
    print("\nreproduce a row (run dir aside):")
    for command in commands:
        print("  " + command.replace(tmp, "<tmp>"))


if __name__ == "__main__":
    if {"-h", "--help"} & set(sys.argv[1:]):
        print(__doc__)
        sys.exit(0)
    main(sys.argv[1:] or FAULTS)

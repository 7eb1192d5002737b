"""Load generator output: the dashboard rendered into a capture console, JSON and HTML reports."""

from __future__ import annotations

import io
import json
import re
import time
from pathlib import Path

import pytest
from rich.console import Console

from flashsale.loadgen.dashboard import OPTIONAL_OUTCOMES, Snapshot, render, status_line
from flashsale.loadgen.report import RunInfo, build_report, render_html, write_json
from flashsale.loadgen.stats import OUTCOMES, PHASES, Journey, RunStats, evaluate, parse_slo


def has_row(text: str, *cells: str) -> bool:
    """Cells in order on one table line, whatever the column separators."""
    return re.search(r"[\s│┃]+".join(re.escape(c) for c in cells), text) is not None


def sample_stats(room: bool = False, three_d_secure: bool = False) -> RunStats:
    """300 customers, a tenth declined; with `room`, each waited in a waiting room first; with
    `three_d_secure`, every other one authenticated."""
    stats = RunStats()
    for i in range(300):
        outcome = "declined" if i % 10 == 0 else "succeeded"
        journey = Journey(
            index=i,
            card="visa",
            scheduled=i * 0.01,
            started=i * 0.01 + 0.001,
            outcome=outcome,
            finished=i * 0.01 + 0.26,
            phases={
                "session": 0.003,
                "tokenize": 0.004,
                "connect": 0.005,
                "submit": 0.006,
                "result": 0.24,
            },
            decline_code="insufficient_funds" if outcome == "declined" else None,
        )
        if room:
            journey.phases.update(queue=1.5, checkout=0.25)
            journey.room.update(queued=1, position_updates=1)
        if three_d_secure and i % 2:
            journey.phases["authenticate"] = 0.9
        stats.record_arrival(journey.scheduled)
        stats.record(journey)
    stats.errors["session: http 503"] += 2
    return stats


def run_info(**changes: object) -> RunInfo:
    info = RunInfo(
        url="http://127.0.0.1:5000",
        model="open",
        schedule="open model, 100/s",
        started_at=time.time(),
        elapsed_s=3.2,
        planned_customers=300,
        target_per_s=100.0,
        achieved_per_s=99.5,
        cpu_percent=41.0,
        max_schedule_lag_ms=3.5,
        max_dispatch_lag_ms=2.0,
        loop_lag_p99_ms=1.2,
        loop_lag_max_ms=4.0,
        valid=True,
    )
    for key, value in changes.items():
        setattr(info, key, value)
    return info


def test_dashboard_renders_every_panel_into_a_capture_console() -> None:
    snap = Snapshot(
        stats=sample_stats(),
        elapsed_s=12.5,
        model="open model, 100/s",
        target_per_s=100,
        achieved_per_s=98,
        arrived=300,
        planned=1000,
        in_flight={"session": 3, "connect": 2, "result": 17},
        cpu_percent=37,
        loop_lag_ms=0.8,
        schedule_lag_ms=1.5,
        max_schedule_lag_ms=9.0,
        system={"celery_queue": 4, "stock_left": 120},
    )
    console = Console(file=io.StringIO(), width=140, record=True, color_system=None)
    console.print(render(snap))
    text = console.export_text()
    assert "flashsale loadgen" in text
    assert re.search(r"rate\s+98/s of 100/s", text)
    assert "300/1000 started" in text
    assert has_row(text, "result", "17")  # the funnel
    assert has_row(text, "succeeded", "270", "90.0%")
    assert has_row(text, "insufficient_funds", "30")
    assert has_row(text, "e2e", "260ms")  # corrected p50, from the histogram
    assert has_row(text, "e2e raw", "259ms")  # uncorrected: 1 ms less schedule lag
    assert has_row(text, "celery queue", "4") and has_row(text, "stock left", "120")
    assert "session: http 503" in text
    assert "generator cpu 37%" in text


def test_dashboard_shows_saturation_warnings_and_the_ci_line() -> None:
    snap = Snapshot(
        stats=sample_stats(),
        elapsed_s=5,
        model="open",
        target_per_s=500,
        achieved_per_s=220,
        arrived=300,
        planned=None,
        cpu_percent=99,
        schedule_lag_ms=850,
        max_schedule_lag_ms=1200,
        warnings=["generator saturated: schedule lag 850ms"],
    )
    console = Console(file=io.StringIO(), width=120, record=True, color_system=None)
    console.print(render(snap))
    assert "generator saturated" in console.export_text()
    line = status_line(snap)
    assert "started=300" in line and "succeeded=270" in line and "declined=30" in line
    assert "WARNING: generator saturated" in line and "\n" not in line


def test_json_report_has_the_keys_the_issue_names(tmp_path: Path) -> None:
    stats = sample_stats()
    results = evaluate([parse_slo("e2e.p99<2s"), parse_slo("succeeded.count>=500")], stats)
    report = build_report(stats, run_info(), results)
    path = tmp_path / "run.json"
    write_json(report, path)
    loaded = json.loads(path.read_text())
    for key in (
        "customers",
        "outcomes",
        "decline_codes",
        "latency_ms",
        "latency_ms_uncorrected",
        "rate",
        "generator",
        "slo",
        "histograms",
    ):
        assert key in loaded
    assert loaded["customers"] == 300
    assert set(loaded["outcomes"]) == set(OUTCOMES)
    assert loaded["outcomes"]["declined"] == 30
    assert loaded["decline_codes"] == {"insufficient_funds": 30}
    for phase in PHASES:
        assert set(loaded["latency_ms"][phase]) >= {"p50", "p90", "p99", "p999", "max", "count"}
    assert loaded["latency_ms"]["result"]["p50"] == pytest.approx(240.0, rel=1e-3)
    assert set(loaded["rate"]) == {"target_per_s", "achieved_per_s"}
    assert {"cpu_percent", "max_schedule_lag_ms", "valid"} <= set(loaded["generator"])
    assert loaded["slo"]["passed"] is False
    assert [r["passed"] for r in loaded["slo"]["results"]] == [True, False]
    # The encoded histograms carry the whole run: decoding gives the same percentiles back.
    again = RunStats.from_dict(loaded["histograms"])
    assert again.phase_summary("e2e") == stats.phase_summary("e2e")


def test_html_report_is_self_contained_with_its_charts() -> None:
    """Drawn by the vendored uPlot (tests/test_browser.py renders them in Chromium)."""
    stats = sample_stats()
    page = render_html(
        build_report(stats, run_info(valid=False, invalid_reasons=["cpu 99%"]), []), stats
    )
    assert page.startswith("<!doctype html>")
    for chart in ("throughput", "active", "latency", "outcomes", "errors", "percentiles"):
        assert f'id="chart-{chart}"' in page
    assert "uPlot" in page and 'id="flashsale-report-data"' in page
    assert "INVALID: cpu 99%" in page
    # Opens offline: nothing fetched from anywhere.
    assert not re.search(r"(src|href)=\"?https?:", page)
    assert "<script src" not in page


@pytest.mark.parametrize("three_d_secure", [False, True])
@pytest.mark.parametrize("size", [(80, 24), (120, 40), (160, 50)])
def test_dashboard_fits_each_terminal_with_every_name_whole(
    size: tuple[int, int], three_d_secure: bool
) -> None:
    width, height = size
    # The embedded default runs a waiting room; on PaymentIntents some customers authenticate.
    stats = sample_stats(room=True, three_d_secure=three_d_secure)
    snap = Snapshot(
        stats=stats,
        elapsed_s=12.5,
        model="doors-open (ready at 100/s), 2 processes",
        target_per_s=100,
        achieved_per_s=98,
        arrived=300,
        planned=2000,
        in_flight={"session": 3, "connect": 2, "waiting": 40, "queue": 25, "result": 17},
        cpu_percent=37,
        warnings=["process 1 CPU 95% (saturated?)"],
        system={"charges queued": 4, "results queued": 0, "stock left": 120, "sockets open": 61},
        processes=[
            {
                "kind": "process",
                "shard": i,
                "where": f"vm:{i}",
                "status": "run",
                "arrived": 150,
                "finished": 150,
                "cpu_percent": 37.0,
                "loop_lag_p99_ms": 1.0,
                "release_lag_p99_ms": None,
                "lost": None,
            }
            for i in range(2)
        ],
        # The embedded scenario's six objectives.
        slo_results=evaluate(
            [
                parse_slo(text)
                for text in (
                    "e2e.p99<9s",
                    "checkout.p99<2s",
                    "timeout.ratio<0.1%",
                    "error.ratio<0.1%",
                    "server_errors.count==0",
                    "retries.ratio<1%",
                )
            ],
            stats,
        ),
    )
    console = Console(
        file=io.StringIO(), width=width, height=height, record=True, color_system=None
    )
    console.print(render(snap, size))
    text = console.export_text()
    lines = text.rstrip("\n").splitlines()
    assert len(lines) <= height, f"{len(lines)} lines at {size}:\n{text}"
    assert max(len(line) for line in lines) <= width
    # The compact view leaves out an optional outcome that did not happen (no one abandoned).
    outcomes = [o for o in OUTCOMES if o not in OPTIONAL_OUTCOMES]
    gates = ("e2e.p99<9s", "checkout.p99<2s", "server_errors.count==0", "retries.ratio<1%")
    # Every phase these customers went through (an authenticate row only with 3D Secure).
    assert ("authenticate" in stats.shown_phases()) is three_d_secure
    for name in (*outcomes, *stats.shown_phases(), *gates):
        assert re.search(rf"(^|[\s│]){re.escape(name)}($|[\s│])", text), (name, size, text)
    assert "…" not in text, text
    assert "process 1 CPU 95%" in text


@pytest.mark.parametrize("size", [(80, 24), (160, 50)])
def test_dashboard_shows_customers_who_left_the_queue(size: tuple[int, int]) -> None:
    stats = sample_stats(room=True)
    for i in range(3):
        stats.record(
            Journey(index=300 + i, card="visa", scheduled=3.0, started=3.0, outcome="abandoned")
        )
    snap = Snapshot(
        stats=stats,
        elapsed_s=5.0,
        model="open",
        target_per_s=50,
        achieved_per_s=50,
        arrived=303,
        planned=303,
    )
    console = Console(file=io.StringIO(), width=size[0], height=size[1], record=True)
    console.print(render(snap, size))
    assert re.search(r"abandoned[\s│]+3\b", console.export_text())

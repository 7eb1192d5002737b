"""Every request counted per endpoint, retries never hidden, and default gates that fail a
failing run: checked against a real fault on the wire (a proxy shedding submits with 503)."""

from __future__ import annotations

import csv
import io
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fault_proxy import FaultProxy
from pipeline_fixtures import Pipeline
from rich.console import Console

from flashsale.loadgen import coordinator
from flashsale.loadgen.dashboard import Snapshot, render, status_line
from flashsale.loadgen.fleet.inprocess import InProcess
from flashsale.loadgen.report import render_html
from flashsale.loadgen.scenario import load_config
from flashsale.ops.processes import flashsale_argv, free_port

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def pipeline(pipeline_factory: Callable[..., Pipeline]) -> Pipeline:
    return pipeline_factory(server_flags=("--stock", "100000"))


def play(url: str, tmp_path: Path, **options: Any) -> coordinator.RunResult:
    config = load_config(
        {
            "url": url,
            "no_dashboard": True,
            "max_cpu": 101,
            "max_lag": "5s",
            "tokenize": "test-tokens",
            "cards": "visa",
            "report": str(tmp_path / "run.json"),
            **options,
        }
    )
    return coordinator.run(config, Console(file=io.StringIO()), InProcess())


def shed_submits(every: int) -> Callable[[str, str, int], bool]:
    """Answer 503 to the 1st, (every+1)th, ... POST /charges the proxy sees."""
    return lambda method, path, seen: (
        method == "POST" and path == "/charges" and (seen - 1) % every == 0
    )


def test_every_shed_submit_is_counted_and_retried(pipeline: Pipeline, tmp_path: Path) -> None:
    with FaultProxy(pipeline.server_url, shed_submits(3)) as proxy:
        result = play(proxy.url, tmp_path, customers=30, rate="30/s", csv=str(tmp_path / "run"))
    shed = proxy.shed["POST /charges"]
    assert shed >= 10  # a third of the submit attempts, retries included
    report = result.report
    submit = report.requests["submit"]
    assert submit["outcomes"]["503"] == shed and submit["server_errors"] == shed
    # Each shed submit was tried again, and the next try got through: nobody was lost.
    assert submit["retries"] == shed and submit["outcomes"]["202"] == 30
    assert submit["requests"] == proxy.seen["POST /charges"] == 30 + shed
    assert report.server_errors == shed and report.retries == shed
    assert report.failures[0] == {"endpoint": "submit", "outcome": "503", "count": shed}
    assert report.outcomes["succeeded"] == 30 and result.exit_code == 0
    assert report.requests["session"]["requests"] == 30 == report.requests["session"]["ok"]
    assert report.requests["connect"]["outcomes"] == {"connected": 30}
    # The same figures in the JSON, the HTML and on the dashboard.
    saved = json.loads((tmp_path / "run.json").read_text())
    assert saved["requests"]["submit"]["server_errors"] == shed and saved["retries"] == shed
    with (tmp_path / "run_requests.csv").open() as rows:
        by_endpoint = {row["endpoint"]: row for row in csv.DictReader(rows)}
    assert by_endpoint["submit"]["server_errors"] == str(shed)
    assert by_endpoint["submit"]["retries"] == str(shed)
    history = (tmp_path / "run_history.csv").read_text().splitlines()
    assert history[0].startswith("t_s,arrivals,succeeded") and len(history) >= 2
    page = render_html(report, result.stats)
    assert f"Requests per endpoint ({shed} server 5xx, {shed} retries)" in page
    snap = Snapshot(
        stats=result.stats,
        elapsed_s=1,
        model="open",
        target_per_s=30,
        achieved_per_s=30,
        arrived=30,
        planned=30,
    )
    console = Console(file=io.StringIO(), width=160, record=True, color_system=None)
    console.print(render(snap))
    assert f"{shed} server 5xx answers, {shed} retries" in console.export_text()
    assert f"5xx={shed} retries={shed}" in status_line(snap)


def test_customers_that_all_fail_fail_the_default_gates(pipeline: Pipeline, tmp_path: Path) -> None:
    """No --slo given: error.ratio<0.1% and timeout.ratio<0.1% still judge the run."""
    with FaultProxy(pipeline.server_url, shed_submits(1)) as proxy:
        result = play(proxy.url, tmp_path, customers=5, rate="10/s", timeout="2s")
    report = result.report
    assert result.exit_code == 1
    assert report.outcomes["error"] == 5
    assert {(r["slo"], r["default"], r["passed"]) for r in report.slo.results} == {
        ("error.ratio<0.1%", True, False),
        ("timeout.ratio<0.1%", True, True),
    }
    shed = proxy.shed["POST /charges"]
    # Every try was shed; each customer's last one was not tried again.
    assert report.requests["submit"]["outcomes"] == {"503": shed}
    assert report.requests["submit"]["retries"] == shed - 5


def test_no_default_slos_judges_nothing(pipeline: Pipeline, tmp_path: Path) -> None:
    with FaultProxy(pipeline.server_url, shed_submits(1)) as proxy:
        result = play(
            proxy.url, tmp_path, customers=3, rate="10/s", timeout="1s", no_default_slos=True
        )
    assert result.report.outcomes["error"] == 3  # every customer failed, and nobody judged it
    assert result.report.slo.results == [] and result.exit_code == 0


@pytest.mark.parametrize("target", ["nothing", "simulator"])
def test_a_target_that_is_not_a_flashsale_server_is_refused_at_preflight(
    pipeline: Pipeline, target: str
) -> None:
    url = pipeline.sim_url if target == "simulator" else f"http://127.0.0.1:{free_port()}"
    done = subprocess.run(
        flashsale_argv("loadgen", "--url", url, "--customers", "10", "--no-dashboard"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    says = "is not a flashsale server" if target == "simulator" else "cannot reach"
    assert says in done.stderr and "Traceback" not in done.stderr


def test_abort_on_fail_stops_once_an_slo_is_lost(pipeline: Pipeline, tmp_path: Path) -> None:
    with FaultProxy(pipeline.server_url, shed_submits(1)) as proxy:
        result = play(
            proxy.url,
            tmp_path,
            customers=200,
            rate="20/s",
            timeout="1s",
            slo=("error.count<3",),
            abort_on_fail=True,
        )
    report = result.report
    assert result.exit_code == 1
    assert (report.run.aborted or "").startswith("SLO error.count<3 can no longer pass")
    assert report.run.interrupted is False
    assert 3 <= report.customers < 200  # stopped long before the 10 s the run would take
    saved = json.loads((tmp_path / "run.json").read_text())
    assert saved["run"]["aborted"].startswith("SLO error.count<3")

"""`flashsale rehearse` as a user runs it: a whole small sale, its report, and no orphans after."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from flashsale.core import orders, store
from flashsale.errors import ConfigError
from flashsale.loadgen.report import RunInfo, build_report
from flashsale.loadgen.stats import Journey, RunStats
from flashsale.ops.counters import Counters, read_metrics
from flashsale.ops.pipeline import WORKER_READY
from flashsale.ops.plan import as_flags, default_plan, parse_plan
from flashsale.ops.processes import flashsale_argv
from flashsale.ops.rehearse import Rehearsal, cross_check
from flashsale.ops.room_comparison import SIDES
from flashsale.settings import Settings

TINY = """
name = "tiny"
[sale]
stock = 20
[pipeline]
workers = 1
worker_concurrency = 8
[stripe_sim]
rate_limit = "off"
latency = "20ms"
[loadgen]
customers = {customers}
rate = "{rate}"
cards = "visa=80,insufficient_funds=20"
timeout = "30s"
max_lag = "2s"
max_cpu = 100
slo = ["timeout.ratio<1%", "error.ratio<1%"]
"""


def processes_of(run_dir: Path) -> list[int]:
    """PIDs of live processes that rehearse started for this run (marked in their environment)."""
    marker = f"FLASHSALE_RUN_DIR={run_dir}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().split()[2]
        except OSError:
            continue
        if marker in environ.split(b"\0") and state != "Z":
            found.append(int(entry.name))
    return found


def orders_placed(server_url: str) -> int:
    """Orders the sale holds, from the server's /metrics."""
    text = httpx.get(f"{server_url}/metrics", timeout=5).text
    return sum(int(float(n)) for n in re.findall(r"^flashsale_orders\{.*\} (\S+)$", text, re.M))


def scenario(tmp_path: Path, customers: int, rate: str) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY.format(customers=customers, rate=rate))
    return path


@pytest.mark.slow
def test_a_rehearsal_on_payment_intents_pays_through_them_and_hears_the_webhooks(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "run"
    done = subprocess.run(
        flashsale_argv(
            "rehearse",
            "--scenario",
            str(scenario(tmp_path, customers=40, rate="40/s")),
            "--run-dir",
            str(run_dir),
            "--no-dashboard",
            "--payments",
            "intents",
        ),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((run_dir / "report.json").read_text())
    orders = report["reconciliation"]["orders"]
    stripe_requests = report["counters"]["stripe"]["requests"]
    # Customers made PaymentMethods (Stripe.js-style; those told sold out too), the worker one
    # PaymentIntent per order.
    assert sum(stripe_requests["POST /v1/payment_methods"].values()) >= orders
    assert sum(stripe_requests["POST /v1/payment_intents"].values()) == orders
    assert "POST /v1/charges" not in stripe_requests and "POST /v1/tokens" not in stripe_requests
    # The endpoint subscribes to the events that end a PaymentIntent only: one per order,
    # delivered, signed and accepted (a refusal would be a 400 here).
    webhooks = report["counters"]["server_responses"]["POST /stripe/webhook"]
    assert webhooks == {"200": orders}
    assert report["counters"]["server_webhooks"].get("ignored", 0) == 0
    assert report["reconciliation"]["ok"] is True and report["passed"] is True
    # Reconcile matched every order to its PaymentIntent, none left open, in the sale's window.
    reconciliation = report["reconciliation"]
    assert reconciliation["payment_intents"] == orders
    assert reconciliation["payment_intents_left_open"] == []
    assert 0 < time.time() - reconciliation["since"] < 240  # from this rehearsal's start
    assert "PaymentIntents (" in done.stdout


def test_small_rehearsal_passes_and_reconciles(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    done = subprocess.run(
        flashsale_argv(
            "rehearse",
            "--scenario",
            str(scenario(tmp_path, customers=60, rate="60/s")),
            "--run-dir",
            str(run_dir),
            "--no-dashboard",
        ),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "PASSED" in done.stdout

    report = json.loads((run_dir / "report.json").read_text())
    rec = report["reconciliation"]
    outcomes = report["loadgen"]["outcomes"]
    assert report["passed"] is True
    assert rec["ok"] is True
    assert outcomes["succeeded"] == rec["orders_by_state"].get("succeeded", 0)
    assert outcomes["declined"] == rec["orders_by_state"].get("declined", 0)
    assert outcomes["succeeded"] + outcomes["declined"] + outcomes["failed"] == rec["orders"]
    assert outcomes["sold_out"] == 60 - rec["orders"]
    assert rec["units_sold"] <= 20
    assert rec["orders_charged_twice"] == {}
    assert rec["oversold"] == 0
    assert (run_dir / "report.html").read_text().lower().startswith("<!doctype html>")
    assert (run_dir / "logs" / "server.log").exists()
    assert processes_of(run_dir) == []
    # Every request is counted per endpoint, and the server's own count agrees with it.
    submit = report["loadgen"]["requests"]["submit"]
    assert submit["requests"] == 60 and submit["retries"] == 0
    server = report["counters"]["server_responses"]["POST /charges"]
    assert sum(server.values()) == 60
    checks = {check["name"]: check for check in report["checks"]}
    assert checks["customers' 5xx = the server's"]["passed"] is True


@pytest.mark.slow
def test_ctrl_c_mid_run_stops_every_child(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    output = tmp_path / "rehearse.out"
    with output.open("wb") as sink:
        # Its own process group, like a shell job: Ctrl-C reaches rehearse and loadgen together.
        process = subprocess.Popen(
            flashsale_argv(
                "rehearse",
                "--scenario",
                str(scenario(tmp_path, customers=400, rate="20/s")),
                "--run-dir",
                str(run_dir),
                "--no-dashboard",
            ),
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 90
        while b"workers:" not in output.read_bytes():
            assert process.poll() is None, output.read_text()
            assert time.monotonic() < deadline, output.read_text()
            time.sleep(0.1)
        server = re.search(r"server: (http://127\.0\.0\.1:\d+)", output.read_text())
        assert server, output.read_text()
        while not orders_placed(server.group(1)):  # mid-run: customers are paying
            assert process.poll() is None, output.read_text()
            assert time.monotonic() < deadline, output.read_text()
            time.sleep(0.1)
        assert len(processes_of(run_dir)) >= 4  # redis, sim, server, worker (+ loadgen)
        os.killpg(process.pid, signal.SIGINT)
        code = process.wait(timeout=90)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert code == 130, output.read_text()[-3000:]
    assert "INTERRUPTED" in output.read_text()
    assert json.loads((run_dir / "report.json").read_text())["interrupted"] is True
    assert processes_of(run_dir) == []


@pytest.mark.slow
def test_a_worker_that_dies_on_its_own_is_replaced_and_reported(tmp_path: Path) -> None:
    """Not a chaos fault: the worker just exits (here SIGKILL from outside). Rehearse starts
    another, which finishes the dead one's charges after the visibility timeout."""
    # Short redelivery, so the dead worker's unacknowledged charges come back within the run.
    text = TINY.format(customers=80, rate="10/s").replace(
        "worker_concurrency = 8\n",
        "worker_concurrency = 8\nvisibility_timeout = 8\nstripe_timeout = 2\n"
        "retry_backoff_max = 2\n",
    )
    lines: list[str] = []
    rehearsal = Rehearsal(
        Settings(),
        parse_plan(text, "tiny.toml"),
        tmp_path / "run",
        dashboard=False,
        say=lines.append,
    )
    killed: list[int] = []

    def paid_orders() -> int:
        client = store.connect(rehearsal.pipeline.redis_url)
        try:
            return orders.count_by_state(client)[orders.SUCCEEDED]
        finally:
            client.close()

    def kill_first_worker() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            workers = rehearsal.workers()
            if workers and WORKER_READY.search(workers[0].log_text()) and paid_orders() >= 5:
                # Customers are paying: the worker holds charges in flight.
                killed.append(workers[0].pid)
                os.killpg(workers[0].pid, signal.SIGKILL)
                return
            time.sleep(0.1)

    killer = threading.Thread(target=kill_first_worker, daemon=True)
    killer.start()
    result = rehearsal.run()
    killer.join(timeout=5)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert killed, lines
    (restart,) = report["worker_restarts"]
    assert (restart["worker"], restart["exit_code"]) == ("worker0", -signal.SIGKILL)
    assert restart["replacement"] == "worker1"
    assert any("worker0 exited unexpectedly" in line for line in lines)
    rec = report["reconciliation"]
    assert rec["ok"] and rec["orders_by_state"].get("pending", 0) == 0, rec
    assert result.reconciliation is not None
    assert processes_of(tmp_path / "run") == []


def test_default_scenario_is_a_real_flash_sale() -> None:
    plan = default_plan()
    assert plan.loadgen["customers"] >= 1000
    assert plan.loadgen["doors_open"] is True
    assert plan.sale["stock"] < plan.loadgen["customers"]
    assert plan.stripe_sim["rate_limit"] == "live"
    assert plan.room_on and "checkout.p99<2s" in plan.loadgen["slo"]  # the room's promise


def test_scenario_mistakes_name_the_key() -> None:
    with pytest.raises(ConfigError, match="stokc"):
        parse_plan("[sale]\nstokc = 3\n", "team.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        parse_plan("[sale\n", "team.toml")
    with pytest.raises(ConfigError, match="unknown key"):
        parse_plan("[loadgn]\ncustomers = 3\n", "team.toml")


def test_scenario_tables_become_flags() -> None:
    flags = as_flags({"doors_open": True, "poisson": False, "slo": ["a", "b"], "rate": "9/s"})
    assert flags == ["--doors-open", "--slo", "a", "--slo", "b", "--rate", "9/s"]


def test_bad_scenario_file_is_a_usage_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[pipeline]\nworkerz = 2\n")
    done = subprocess.run(
        flashsale_argv("rehearse", "--scenario", str(bad), "--run-dir", str(tmp_path / "r")),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "workerz" in done.stderr
    assert "Traceback" not in done.stderr


VALID = """
[loadgen]
customers = 10
rate = "10/s"
"""


@pytest.mark.parametrize(
    ("scenario_text", "after", "says"),
    [
        ("[loadgen]\ncustmers = 10\n", [], "unknown load option(s) --custmers"),
        ('[sale]\nstock = "lots"\n' + VALID, [], "[sale] stock must be a whole number"),
        ("[pipeline]\nworkers = 0\n" + VALID, [], "[pipeline] workers must be"),
        ("[pipeline]\nvisibility_timeout = 5\n" + VALID, [], "visibility timeout"),
        ('[stripe_sim]\nlatency = "200"\n' + VALID, [], "has no unit: write 200ms or 200s"),
        ('[stripe_sim]\nrate_limt = "live"\n' + VALID, [], "unknown key(s) in [stripe_sim]"),
        (VALID + "timeout = 60\n", [], "--timeout must be text"),
        (VALID + 'cards = "visa=x"\n', [], "whole number"),
        (VALID + 'url = "http://127.0.0.1:1"\n', [], "rehearse sets these itself"),
        ('[loadgen]\nrate = "10/s"\n', [], "bound the run"),
        (VALID, ["--", "--bogus"], "options after --: No such option '--bogus'"),
        (VALID, ["--", "--max-lag", "100"], "--max-lag '100' has no unit"),
        (VALID, ["--", "--rate", "fast"], "not a rate"),
        (VALID, ["--", "--customers", "0"], "--customers"),
        (VALID, ["--", "--url", "http://127.0.0.1:1"], "rehearse sets url itself"),
        (VALID, ["--compare-waiting-room", "--waiting-room", "on"], "drop --waiting-room"),
        ('[waiting_room]\nadmit_rate = "soon"\n' + VALID, [], "--admit-rate"),
    ],
)
def test_bad_scenarios_and_options_are_refused_before_anything_starts(
    tmp_path: Path, scenario_text: str, after: list[str], says: str
) -> None:
    """Exit 2, one line naming the key, nothing started, no run directory."""
    path = tmp_path / "team.toml"
    path.write_text(scenario_text)
    run_dir = tmp_path / "run"
    done = subprocess.run(
        flashsale_argv("rehearse", "--scenario", str(path), "--run-dir", str(run_dir), *after),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert says in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert "run directory" not in done.stdout  # rehearse says so first when it starts
    assert not run_dir.exists()


def test_a_5xx_the_server_did_not_count_fails_the_cross_check() -> None:
    """Customers were answered 503 twice on submit, the server's /metrics says once: something
    between them answered (a proxy, a load balancer), and the verdict says so."""
    stats = RunStats()
    stats.record(
        Journey(
            index=0,
            card="visa",
            scheduled=0.0,
            started=0.0,
            outcome="succeeded",
            finished=1.0,
            calls=Counter({("session", "200"): 1, ("submit", "503"): 2, ("submit", "202"): 1}),
            retries=Counter({"submit": 2}),
        )
    )
    info = RunInfo(
        url="http://127.0.0.1:1",
        model="open",
        schedule="open model, 1/s",
        started_at=0.0,
        elapsed_s=1.0,
        planned_customers=1,
        target_per_s=1.0,
        achieved_per_s=1.0,
        cpu_percent=1.0,
        max_schedule_lag_ms=0.0,
        max_dispatch_lag_ms=0.0,
        loop_lag_p99_ms=0.0,
        loop_lag_max_ms=0.0,
        valid=True,
    )
    report = build_report(stats, info, [])
    seen = Counters()
    read_metrics(
        "# TYPE flashsale_http_requests_total counter\n"
        'flashsale_http_requests_total{method="POST",route="/charges",status="503"} 1.0\n'
        'flashsale_http_requests_total{method="POST",route="/charges",status="202"} 1.0\n'
        'flashsale_http_requests_total{method="GET",route="/session",status="200"} 1.0\n',
        seen,
    )
    check = cross_check(report, seen, None)
    assert check.passed is False
    assert check.detail == "session: customers 0, server 0, submit: customers 2, server 1"
    assert cross_check(report, seen, "2 server processes").passed is True  # said, not judged


@pytest.mark.slow
def test_a_failed_gate_says_what_was_measured_on_the_first_line(tmp_path: Path) -> None:
    """A payments engineer reading FAILED needs the figure beside the gate, not only its name."""
    path = tmp_path / "strict.toml"
    text = TINY.format(customers=20, rate="40/s")
    path.write_text(
        text.replace('slo = ["timeout.ratio<1%", "error.ratio<1%"]', 'slo = ["e2e.p99<1ms"]')
    )
    run_dir = tmp_path / "run"
    done = subprocess.run(
        flashsale_argv(
            "rehearse", "--scenario", str(path), "--run-dir", str(run_dir), "--no-dashboard"
        ),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((run_dir / "report.json").read_text())
    (measured,) = [r["actual"] for r in report["loadgen"]["slo"]["results"]]
    assert measured > 1
    first_line = f"FAILED: SLOs met: e2e.p99<1ms (actual {measured:g}ms)"
    assert report["verdict"] == first_line
    assert first_line in done.stdout


@pytest.mark.slow
def test_compare_waiting_room_runs_the_sale_both_ways_side_by_side(tmp_path: Path) -> None:
    path = scenario(tmp_path, customers=60, rate="60/s")
    path.write_text(path.read_text() + '[waiting_room]\nadmit_rate = "auto"\n')
    run_dir = tmp_path / "run"
    done = subprocess.run(
        flashsale_argv(
            *("rehearse", "--scenario", str(path), "--run-dir", str(run_dir)),
            *("--no-dashboard", "--compare-waiting-room"),
        ),
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "with and without the waiting room" in done.stdout
    on, off = (json.loads((run_dir / side / "report.json").read_text()) for side in SIDES)
    assert on["passed"] is True
    assert on["loadgen"]["latency_ms"]["queue"]["count"] == 60  # every customer queued
    assert off["loadgen"]["latency_ms"]["queue"]["count"] == 0  # the herd: nobody did
    rows = {
        row["figure"]: row for row in json.loads((run_dir / "comparison.json").read_text())["rows"]
    }
    assert rows["paid"]["room_on"] == str(on["loadgen"]["outcomes"]["succeeded"])
    assert rows["paid"]["room_off"] == str(off["loadgen"]["outcomes"]["succeeded"])
    assert rows["verdict"]["room_on"].startswith("PASSED")
    assert rows["queue p50 / p99"]["room_off"] == "-"
    page = (run_dir / "comparison.html").read_text()
    assert 'href="room-on/report.html"' in page and 'href="room-off/report.html"' in page
    assert processes_of(run_dir) == []


def test_3d_secure_cards_are_refused_against_real_test_mode(tmp_path: Path) -> None:
    """Real Stripe shows its challenge in a browser only: a rehearsal on real test mode whose
    customers would answer the simulator's challenge is refused before anything starts."""
    path = tmp_path / "team.toml"
    path.write_text(VALID + 'cards = "visa=9,three_d_secure=1"\n')
    run_dir = tmp_path / "run"
    env = {
        **os.environ,
        "STRIPE_SECRET_KEY": "sk_test_flashsale_never_sent",
        "STRIPE_PUBLISHABLE_KEY": "pk_test_flashsale_never_sent",
        "STRIPE_API_BASE": "https://api.stripe.com",
    }
    done = subprocess.run(
        flashsale_argv(
            "rehearse", "--scenario", str(path), "--run-dir", str(run_dir), "--stripe", "test"
        ),
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "three_d_secure ask for 3D Secure" in done.stderr and "Traceback" not in done.stderr
    assert not run_dir.exists()

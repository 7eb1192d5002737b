"""`flashsale rehearse` as a user runs it: a whole small sale, its report, and no orphans after."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from flashsale.errors import ConfigError
from flashsale.ops.plan import as_flags, default_plan, parse_plan
from flashsale.ops.processes import flashsale_argv
from flashsale.ops.rehearse import WORKER_READY, Rehearsal
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


def scenario(tmp_path: Path, customers: int, rate: str) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY.format(customers=customers, rate=rate))
    return path


@pytest.mark.slow
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
        time.sleep(2)  # mid-run: customers are arriving
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

    def kill_first_worker() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            workers = rehearsal.workers()
            if workers and WORKER_READY.search(workers[0].log_text()):
                time.sleep(3)  # customers are paying
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

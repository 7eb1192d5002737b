"""loadgen across processes and Celery agents, Ctrl-C, and report compare, on the real pipeline."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from pipeline_fixtures import Pipeline

from flashsale.cli import cli
from flashsale.ops.processes import Child, flashsale_argv

pytestmark = pytest.mark.timeout(240)
QUIET = ["--no-dashboard", "--max-cpu", "101", "--max-lag", "5s", "--max-release-lag", "5s"]


@pytest.fixture(scope="module")
def pipeline(pipeline_factory: Callable[..., Pipeline]) -> Pipeline:
    return pipeline_factory(server_flags=("--stock", "100000"))


def loadgen(pipeline: Pipeline, report: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    argv = flashsale_argv("loadgen", "--url", pipeline.server_url, "--report", str(report))
    return subprocess.run(
        [*argv, *QUIET, *flags], capture_output=True, text=True, timeout=180, check=False
    )


def new_charges(pipeline: Pipeline, before: set[str]) -> Counter[str]:
    """Statuses of the simulator's charges made since `before` (every result was final)."""
    return Counter(c["status"] for c in pipeline.sim_charges() if c["id"] not in before)


def charge_ids(pipeline: Pipeline) -> set[str]:
    return {c["id"] for c in pipeline.sim_charges()}


def wait_for_charges(pipeline: Pipeline, before: set[str], count: int, process: Any) -> None:
    """Until the run has charged `count` customers: it is well under way."""
    deadline = time.monotonic() + 60
    while len(charge_ids(pipeline) - before) < count:
        assert process.poll() is None, "loadgen ended early"
        assert time.monotonic() < deadline, f"fewer than {count} charges within 60s"
        time.sleep(0.2)


@pytest.fixture
def agents(redis_url: str, tmp_path: Path) -> Iterator[list[Child]]:
    """Two `flashsale loadgen-agent` workers on the test's private Redis."""
    children = [
        Child(
            f"agent{i}",
            flashsale_argv("loadgen-agent", "--redis-url", redis_url, "--name", f"agent{i}"),
            tmp_path / f"agent{i}.log",
        ).start()
        for i in range(2)
    ]
    try:
        for child in children:
            child.wait_for(re.compile(r"agent\d@\S+ ready\."), timeout_s=60)
        yield children
    finally:
        for child in children:
            child.stop()


def test_two_processes_merge_into_one_report(pipeline: Pipeline, tmp_path: Path) -> None:
    report_path = tmp_path / "run.json"
    before = charge_ids(pipeline)
    done = loadgen(pipeline, report_path, "--processes", "2", "--customers", "100")
    done.check_returncode()
    report = json.loads(report_path.read_text())
    # Every customer played exactly once across the two shards, with the card mix exact.
    assert report["customers"] == 100
    assert report["outcomes"]["succeeded"] == 85 and report["outcomes"]["declined"] == 15
    assert report["latency_ms"]["e2e"]["count"] == 100
    processes = report["generator"]["processes"]
    assert [p["shard"] for p in processes] == [0, 1]
    assert sum(p["finished"] for p in processes) == 100
    assert all(p["finished"] == 50 and p["status"] == "done" for p in processes)
    assert all(p["cpu_percent"] > 0 and p["loop_lag_p99_ms"] > 0 for p in processes)
    assert len({p["where"] for p in processes}) == 2  # two processes, two pids
    assert report["generator"]["valid"] is True and report["generator"]["lost"] == []
    # Ground truth: the simulator charged 100 cards for this run, 85 of them successfully.
    assert new_charges(pipeline, before) == {"succeeded": 85, "failed": 15}
    assert "process 0" in done.stdout and "process 1" in done.stdout


def test_doors_open_across_processes_releases_together(pipeline: Pipeline, tmp_path: Path) -> None:
    report_path = tmp_path / "doors.json"
    done = loadgen(
        pipeline,
        report_path,
        *("--processes", "2", "--customers", "60", "--doors-open", "--rate", "100/s"),
        *("--cards", "visa", "--tokenize", "test-tokens"),
    )
    done.check_returncode()
    report = json.loads(report_path.read_text())
    doors = report["run"]["doors_open"]
    assert doors["ready"] == 60 and doors["submits"] == 60
    assert report["outcomes"]["succeeded"] == 60
    # Both processes opened at one agreed instant: the spread is the release, not 2 schedules.
    assert doors["submit_spread_ms"] < 1000
    assert report["generator"]["release_lag_ms"]["count"] == 60
    assert all(p["release_lag_p99_ms"] is not None for p in report["generator"]["processes"])


@pytest.mark.parametrize("processes", ["1", "2"])
def test_ctrl_c_stops_and_still_writes_the_report(
    pipeline: Pipeline, tmp_path: Path, processes: str
) -> None:
    """SIGINT to the whole process group, as a terminal's Ctrl-C sends it: the run stops,
    abandons customers in flight, writes its report and exits with the code of what it
    measured (0 here: valid, no SLOs)."""
    report_path = tmp_path / "stopped.json"
    argv = flashsale_argv("loadgen", "--url", pipeline.server_url, "--report", str(report_path))
    argv += [*QUIET, "--processes", processes, "--customers", "2000", "--rate", "20/s"]
    argv += ["--tokenize", "test-tokens"]
    before = charge_ids(pipeline)
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        wait_for_charges(pipeline, before, 20, process)
        os.killpg(process.pid, signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, output
    assert "interrupted" in output
    report = json.loads(report_path.read_text())
    assert report["run"]["interrupted"] is True
    assert 20 <= report["customers"] < 2000


def test_two_agents_play_one_run(
    pipeline: Pipeline, redis_url: str, agents: list[Child], tmp_path: Path
) -> None:
    report_path = tmp_path / "agents.json"
    before = charge_ids(pipeline)
    done = loadgen(
        pipeline,
        report_path,
        *("--agents", "2", "--agents-redis-url", redis_url, "--customers", "60"),
        *("--doors-open", "--rate", "60/s", "--cards", "visa=5,generic_decline=1"),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(report_path.read_text())
    assert report["customers"] == 60
    assert report["outcomes"]["succeeded"] == 50 and report["outcomes"]["declined"] == 10
    assert report["run"]["doors_open"]["submits"] == 60
    processes = report["generator"]["processes"]
    assert [p["kind"] for p in processes] == ["agent", "agent"]
    assert sorted(p["finished"] for p in processes) == [30, 30]
    assert new_charges(pipeline, before) == {"succeeded": 50, "failed": 10}


def test_a_lost_agent_is_reported_and_invalidates_the_run(
    pipeline: Pipeline, redis_url: str, agents: list[Child], tmp_path: Path
) -> None:
    report_path = tmp_path / "lost.json"
    argv = flashsale_argv("loadgen", "--url", pipeline.server_url, "--report", str(report_path))
    argv += [*QUIET, "--agents", "2", "--agents-redis-url", redis_url, "--lost-after", "3s"]
    argv += ["--customers", "100", "--rate", "10/s", "--tokenize", "test-tokens"]
    before = charge_ids(pipeline)
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for agent in agents:  # both agents have accepted and started playing
            agent.wait_for(re.compile(r"Task flashsale\.loadgen\.shard\[\S+\] received"))
        wait_for_charges(pipeline, before, 10, process)
        agents[1].signal(signal.SIGKILL)
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 3, output
    assert "LOST agent" in output
    report = json.loads(report_path.read_text())
    generator = report["generator"]
    assert generator["valid"] is False and len(generator["lost"]) == 1
    assert any("lost" in reason for reason in generator["invalid_reasons"])
    assert [p["status"] for p in generator["processes"]].count("LOST") == 1
    # The survivor played its whole half; the lost agent's customers are missing, not hidden.
    assert 50 <= report["customers"] < 100


def test_missing_agents_are_a_clear_setup_error(pipeline: Pipeline, redis_url: str) -> None:
    result = CliRunner().invoke(
        cli,
        ["loadgen", "--url", pipeline.server_url, "--customers", "5", "--no-dashboard"]
        + ["--agents", "2", "--agents-redis-url", redis_url, "--accept-timeout", "2s"],
    )
    assert result.exit_code == 2, result.output
    assert "only 0 of 2 agents accepted the run within 2s" in result.output
    assert "loadgen-agent" in result.output


def test_report_compare_shows_deltas(tmp_path: Path) -> None:
    def report(p99: float, succeeded: int) -> dict[str, Any]:
        latency = {"p50": 100.0, "p90": 150.0, "p99": p99, "p999": p99, "max": p99, "count": 9}
        return {
            "customers": 10,
            "outcomes": {"succeeded": succeeded, "declined": 10 - succeeded},
            "latency_ms": {"e2e": latency},
            "rate": {"target_per_s": 10.0, "achieved_per_s": 9.5},
            "generator": {"cpu_percent": 40.0, "valid": True},
        }

    base, new = tmp_path / "base.json", tmp_path / "new.json"
    base.write_text(json.dumps(report(200.0, 9)))
    new.write_text(json.dumps(report(300.0, 8)))
    result = CliRunner().invoke(cli, ["report", "compare", str(base), str(new)], terminal_width=120)
    assert result.exit_code == 0, result.output
    assert re.search(
        r"e2e\s+│\s+p99\s+│\s+200\.0\s+│\s+300\.0\s+│\s+\+100\.0 \(\+50%\)", result.output
    )
    # Counts of customers are whole numbers.
    assert re.search(r"succeeded\s+│\s+9\s+│\s+8\s+│\s+-1 \(-11%\)", result.output)
    broken = tmp_path / "broken.json"
    broken.write_text("{}")
    refused = CliRunner().invoke(cli, ["report", "compare", str(base), str(broken)])
    assert refused.exit_code == 2 and "not a flashsale loadgen report" in refused.output

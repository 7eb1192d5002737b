"""Benchmark `flashsale loadgen` against Locust playing the same journey on the same server.

Starts one private pipeline (redis-server, stripe-sim, `flashsale serve`, `flashsale worker`)
pinned to CPU 0 and runs each generator alone, pinned to CPU 1 (taskset -c 1), one after the
other against it:

1. cost: both at the same open rate (--rate) with zero simulator latency. Generator CPU ms per
   customer from /proc (utime + stime, every process of the generator), hence customers per
   second one core sustains (1000 / ms), and each tool's error rate at that rate. Reported twice:
   all in (the whole process, start-up included) and in steady state (the CPU rate between
   WARMUP_S after start and 1 s before arrivals end, over the run's customers per second), since
   a fixed start-up cost is not part of what a core sustains. (On two cores the pinned pipeline
   saturates before a generator core does, so capacity comes from CPU cost.)
2. latency: the simulator answers every charge 200 ms late (POST /_sim/config); both at
   --latency-rates. Each tool's reported time from the POST's answer to the result on the
   socket, against the truth kept by the pipeline itself (order created_at -> final updated_at
   in Redis, for the orders of that run) and the injected 200 ms.

Locust's scenario is benchmarks/peers/locustfile.py (FastHttpUser + locust.contrib.socketio).
Prints figures and the command that reproduces them. Never asserts.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import redis

from flashsale.core import orders
from flashsale.ops.pipeline import LocalPipeline
from flashsale.ops.processes import Child, flashsale_argv

HERE = Path(__file__).resolve().parent
PIPELINE_CPU, GENERATOR_CPU = "0", "1"
INJECTED_MS = 200.0
# Seconds after a generator starts before its steady-state CPU is measured.
WARMUP_S = 4.0


def pinned(cpu: str, argv: list[str]) -> list[str]:
    return ["taskset", "-c", cpu, *argv]


def steady_cpu_per_s(curve: list[tuple[float, float]], duration_s: float) -> float:
    """CPU seconds per second between start-up (imports, spawning) and the end of arrivals.

    The window is [WARMUP_S, duration - 1 s] after the process started: both tools have
    imported, spawned and reached their rate by then, and neither has begun stopping.
    """
    since, until = WARMUP_S, duration_s - 1.0
    inside = [(t, cpu) for t, cpu in curve if since <= t <= until]
    if len(inside) < 2:
        return float("nan")
    (t0, cpu0), (t1, cpu1) = inside[0], inside[-1]
    return (cpu1 - cpu0) / (t1 - t0)


def cpu_ms_per_customer(
    cpu_s: float, curve: list[tuple[float, float]], duration_s: float, customers: int
) -> dict[str, float]:
    """A run's generator CPU per customer: all in, and in steady state (see steady_cpu_per_s)."""
    per_customer = 1000 / max(1, customers)
    return {
        "cpu_ms": cpu_s * per_customer,
        "steady_cpu_ms": steady_cpu_per_s(curve, duration_s) * duration_s * per_customer,
    }


def run_flashsale(url: str, rate: float, duration_s: float, log_dir: Path, tag: str) -> dict:
    report_path = log_dir / f"flashsale-{tag}.json"
    child = Child(
        "loadgen",
        pinned(
            GENERATOR_CPU,
            flashsale_argv(
                "loadgen",
                "--url",
                url,
                "--rate",
                f"{rate:g}/s",
                "--duration",
                f"{duration_s:g}s",
                "--cards",
                "visa",
                "--tokenize",
                "raw",
                "--processes",
                "1",
                "--no-dashboard",
                "--report",
                str(report_path),
            ),
        ),
        log_dir / f"flashsale-{tag}.log",
    )
    cpu_s, curve = child.run_measured(duration_s + 90)
    report = json.loads(report_path.read_text())
    customers = report["customers"]
    failed = customers - report["outcomes"]["succeeded"]
    return {
        "tool": "flashsale",
        "customers": customers,
        "errors": failed,
        **cpu_ms_per_customer(cpu_s, curve, duration_s, customers),
        "tokenize_p50": report["latency_ms"]["tokenize"]["p50"],
        "tokenize_p99": report["latency_ms"]["tokenize"]["p99"],
        "result_p50": report["latency_ms"]["result"]["p50"],
        "result_p99": report["latency_ms"]["result"]["p99"],
        "achieved": report["rate"]["achieved_per_s"],
    }


def run_locust(url: str, rate: float, duration_s: float, log_dir: Path, tag: str) -> dict:
    prefix = log_dir / f"locust-{tag}"
    users = max(1, round(rate))  # each user paces itself to one journey per second
    child = Child(
        "locust",
        pinned(
            GENERATOR_CPU,
            [
                str(Path(sys.executable).with_name("locust")),
                "-f",
                str(HERE / "locustfile.py"),
                "--headless",
                "--host",
                url,
                "-u",
                str(users),
                "-r",
                str(users),
                "-t",
                f"{duration_s:g}s",
                "--csv",
                str(prefix),
                "--only-summary",
                "--stop-timeout",
                "30",
            ],
        ),
        log_dir / f"locust-{tag}.log",
        env={**os.environ, "FLASHSALE_PACE_S": "1"},
    )
    cpu_s, curve = child.run_measured(duration_s + 90)
    with open(f"{prefix}_stats.csv") as stats:
        rows = {row["Name"]: row for row in csv.DictReader(stats)}
    journeys = rows.get("journey", {})
    customers = int(journeys.get("Request Count", 0) or 0)
    errors = int(journeys.get("Failure Count", 0) or 0)
    errors += int(rows.get("GET /session", {}).get("Failure Count", 0) or 0)
    errors += int(rows.get("POST /charges", {}).get("Failure Count", 0) or 0)
    result = rows.get("result", {})
    tokens = rows.get("POST /v1/tokens", {})
    return {
        "tool": "locust",
        "customers": customers,
        "errors": errors,
        **cpu_ms_per_customer(cpu_s, curve, duration_s, customers),
        "tokenize_p50": float(tokens.get("50%", "nan") or "nan"),
        "tokenize_p99": float(tokens.get("99%", "nan") or "nan"),
        "result_p50": float(result.get("50%", "nan") or "nan"),
        "result_p99": float(result.get("99%", "nan") or "nan"),
        "achieved": customers / duration_s,
    }


KNOWN_TOOLS = {"flashsale": run_flashsale, "locust": run_locust}


def sim_answer_ms(sim_url: str, count: int = 50) -> float:
    """The simulator's own time for POST /v1/tokens (latency 0), median of sequential calls."""
    times = []
    with httpx.Client(timeout=10) as client:
        for _ in range(count):
            started = time.perf_counter()
            response = client.post(
                f"{sim_url}/v1/tokens",
                data={
                    "card[number]": "4242424242424242",
                    "card[exp_month]": "12",
                    "card[exp_year]": "2034",
                    "card[cvc]": "123",
                },
                headers={"Authorization": "Bearer pk_test_flashsale_simulator"},
            )
            response.raise_for_status()
            times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def truth(client: redis.Redis, since: float, until: float) -> tuple[float, float]:
    """p50 and p99 of created -> final for the orders placed in [since, until], in ms."""
    spans = sorted(
        (order.updated_at - order.created_at) * 1000
        for order in orders.iter_orders(client)
        if order.final and since <= order.created_at <= until
    )
    if not spans:
        return float("nan"), float("nan")
    return spans[len(spans) // 2], spans[min(len(spans) - 1, int(len(spans) * 0.99))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=40.0, help="customers/s for the cost runs")
    parser.add_argument(
        "--latency-rates", default="10,40", help="customers/s, latency runs ('' for none)"
    )
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per run")
    parser.add_argument("--runs", type=int, default=1, help="cost runs per tool (median)")
    parser.add_argument(
        "--tools",
        default="flashsale,locust",
        help="which generators to run, e.g. 'flashsale' alone to compare two generator versions",
    )
    args = parser.parse_args()
    wanted = [name for name in args.tools.split(",") if name]
    if not wanted or not set(wanted) <= KNOWN_TOOLS.keys():
        parser.error(f"--tools: choose from {', '.join(KNOWN_TOOLS)}")

    log_dir = Path(tempfile.mkdtemp(prefix="flashsale-bench-peers-"))
    pipeline = LocalPipeline(log_dir, prefix=("taskset", "-c", PIPELINE_CPU))
    try:
        redis_url = pipeline.start_redis()
        sim_url = pipeline.start_simulator()
        server = pipeline.start_server("--stock", "10000000", wait=False)
        worker = pipeline.start_worker("--concurrency", "64", wait=False)
        pipeline.wait_ready(server)
        pipeline.wait_ready(worker)
        url = pipeline.server_url
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        tools = {name: KNOWN_TOOLS[name] for name in wanted}

        cost: dict[str, list[dict]] = {name: [] for name in tools}
        for run in range(args.runs):
            for name, play in tools.items():
                row = play(url, args.rate, args.duration, log_dir, f"cost-{run}")
                cost[name].append(row)
                print(
                    f"cost run {run + 1} {name} at {args.rate:g}/s: {row['customers']} customers "
                    f"({row['achieved']:.1f}/s), errors {row['errors']}, generator "
                    f"{row['cpu_ms']:.2f} CPU ms/customer all in = {1000 / row['cpu_ms']:.0f} "
                    f"customers/s per core; steady state {row['steady_cpu_ms']:.2f} ms = "
                    f"{1000 / row['steady_cpu_ms']:.0f}/s",
                    flush=True,
                )

        sim_own_ms = sim_answer_ms(sim_url)
        httpx.post(f"{sim_url}/_sim/config", json={"latency": f"{INJECTED_MS:g}ms"}, timeout=10)
        latency: list[tuple[float, dict, tuple[float, float]]] = []
        for rate in (float(text) for text in args.latency_rates.split(",") if text):
            for name, play in tools.items():
                since = time.time()
                row = play(url, rate, args.duration, log_dir, f"latency-{rate:g}")
                real = truth(client, since, time.time())
                latency.append((rate, row, real))
                print(
                    f"latency {name} at {rate:g}/s: reports tokenize p50 "
                    f"{row['tokenize_p50']:.0f} ms p99 {row['tokenize_p99']:.0f} ms (truth "
                    f"{INJECTED_MS + sim_own_ms:.0f} ms); result p50 {row['result_p50']:.0f} ms "
                    f"p99 {row['result_p99']:.0f} ms; pipeline truth p50 {real[0]:.0f} ms p99 "
                    f"{real[1]:.0f} ms (injected {INJECTED_MS:.0f} ms); {row['customers']} "
                    f"customers, errors {row['errors']}, {row['cpu_ms']:.2f} CPU ms/customer",
                    flush=True,
                )
    finally:
        pipeline.stop()

    print()
    print(
        f"pipeline pinned to CPU {PIPELINE_CPU}, generators to CPU {GENERATOR_CPU}; logs {log_dir}"
    )
    errors = {name: sum(row["errors"] for row in rows) for name, rows in cost.items()}
    for key, label in (
        ("cpu_ms", "all in (start-up included)"),
        ("steady_cpu_ms", f"steady state ({WARMUP_S:g} s after start to 1 s before the end)"),
    ):
        per_core = {
            name: 1000 / statistics.median(row[key] for row in rows) for name, rows in cost.items()
        }
        figures = ", ".join(f"{name} {value:.0f}" for name, value in per_core.items())
        ratio = ""
        if {"flashsale", "locust"} <= per_core.keys():
            ratio = f" -> {per_core['flashsale'] / per_core['locust']:.2f}x"
        print(
            f"customers/s per generator core, {label}, from CPU cost at {args.rate:g}/s, median "
            f"of {args.runs}: {figures}{ratio}"
        )
    print("errors in the cost runs: " + ", ".join(f"{n} {e}" for n, e in errors.items()))
    known = INJECTED_MS + sim_own_ms
    if latency:
        print(
            f"known delay: the simulator answers /v1/tokens in {INJECTED_MS:.0f} ms injected + "
            f"{sim_own_ms:.1f} ms of its own (measured alone at latency 0) = {known:.0f} ms"
        )
    for rate, row, real in latency:
        off = (row["tokenize_p50"] - known) / known * 100
        off99 = (row["tokenize_p99"] - known) / known * 100
        off_result = (row["result_p50"] - real[0]) / real[0] * 100
        print(
            f"at {rate:g}/s {row['tool']:9s} tokenize p50 {row['tokenize_p50']:.0f} ms "
            f"({off:+.0f}% vs {known:.0f}), p99 {row['tokenize_p99']:.0f} ms ({off99:+.0f}%); "
            f"result p50 {row['result_p50']:.0f} ms vs pipeline's own {real[0]:.0f} ms "
            f"({off_result:+.0f}%), p99 {row['result_p99']:.0f} vs {real[1]:.0f} ms"
        )
    print("reproduce: .venv/bin/python benchmarks/peers/compare.py " + shlex.join(sys.argv[1:]))


if __name__ == "__main__":
    main()

"""Benchmark the load generator itself: customers one process holds connected, CPU per journey.

Starts a private pipeline (redis-server, stripe-sim, `flashsale serve`, `flashsale worker`) on
loopback, then measures with the real `flashsale.loadgen` runner:

1. held: a --doors-open run of N customers; every one loads the page, connects its websocket and
   joins its room, then waits for the doors. `peak_sockets` is how many were connected and
   waiting at once in this one generator process. Then all of them submit in the same instant,
   far beyond what one server process answers within the timeout: the outcomes of that burst
   (mostly 503s and timeouts) are printed but are not what this step measures.
2. cpu: open-model runs of full journeys (raw tokenization, charge, result on the socket); the
   generator's own CPU time divided by the customers it played.

Prints medians of --runs runs and the command that reproduces them. Never asserts.
"""

from __future__ import annotations

import argparse
import io
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from provenance import print_provenance
from rich.console import Console

from flashsale.loadgen.client import loop
from flashsale.loadgen.coordinator import Coordinator
from flashsale.loadgen.engine import raise_open_files_limit
from flashsale.loadgen.fleet.inprocess import InProcess
from flashsale.loadgen.report import LoadReport
from flashsale.loadgen.scenario import LoadConfig, build_schedule, parse_cards
from flashsale.ops.pipeline import LocalPipeline


def start_pipeline(directory: Path) -> LocalPipeline:
    """A private pipeline; children inherit our raised open-files limit."""
    pipeline = LocalPipeline(directory)
    pipeline.start_redis()
    pipeline.start_simulator()
    # Stock for every run: a sold-out journey is cheaper and would flatter the CPU figure.
    server = pipeline.start_server("--stock", "10000000", wait=False)
    worker = pipeline.start_worker("--concurrency", "16", wait=False)
    pipeline.wait_ready(server)
    pipeline.wait_ready(worker)
    return pipeline


def wait_healthy(url: str, timeout_s: float = 120.0) -> None:
    """The server is still closing the last run's 10,000 sockets: wait before the next."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)


def run_once(url: str, **flags: Any) -> LoadReport:
    wait_healthy(url)
    cards = flags.pop("cards", "visa")
    tokenize = flags.pop("tokenize", "test-tokens")
    timeout_s = flags.pop("timeout_s", 120.0)
    config = LoadConfig(
        url=url,
        schedule=build_schedule(**flags),
        cards=parse_cards(cards, tokenize),
        tokenize=tokenize,
        timeout_s=timeout_s,
        dashboard=False,
        max_cpu_percent=101,
        max_lag_s=60,
    )
    coordinator = Coordinator(config, InProcess(), Console(file=io.StringIO()))
    return loop.run(coordinator.run()).report  # the event loop `flashsale loadgen` runs on


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--held", type=int, default=10_000, help="customers to hold (doors-open)")
    parser.add_argument("--held-rate", default="400/s", help="arrival rate while getting ready")
    parser.add_argument("--cpu-customers", type=int, default=300)
    parser.add_argument("--cpu-rate", default="60/s")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--skip-held", action="store_true")
    args = parser.parse_args()

    nofile = raise_open_files_limit()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    print(f"open files limit: soft {soft}, hard {hard} (raised to {nofile})", flush=True)
    log_dir = Path(tempfile.mkdtemp(prefix="flashsale-bench-loadgen-"))
    pipeline = start_pipeline(log_dir)
    url = pipeline.server_url
    try:
        cpu_rows = []
        for run in range(args.runs):
            report = run_once(
                url,
                customers=args.cpu_customers,
                rate=args.cpu_rate,
                cards="visa=85,insufficient_funds=10,generic_decline=5",
                tokenize="raw",
            )
            gen = report.generator
            cpu_rows.append(gen.cpu_ms_per_customer)
            print(
                f"cpu run {run + 1}: {gen.cpu_ms_per_customer:.2f} ms CPU per journey, "
                f"generator {gen.cpu_percent:.0f}% of a core, outcomes "
                f"{ {k: v for k, v in report.outcomes.items() if v} }, "
                f"e2e p50 {report.latency_ms['e2e']['p50']:.1f} ms",
                flush=True,
            )
        held_rows = []
        if not args.skip_held:
            for run in range(args.runs):
                started = time.perf_counter()
                report = run_once(url, customers=args.held, doors_open=True, rate=args.held_rate)
                gen = report.generator
                doors = report.run.doors_open or {}
                held_rows.append(gen.peak_sockets)
                errors = dict(list(report.errors.items())[:3])
                print(
                    f"held run {run + 1}: {gen.peak_sockets} connected and waiting at once "
                    f"(ready {doors['ready']}, dropped {doors['dropped_out']}), "
                    f"ready after {doors['opened_at_s']:.1f}s, submit spread "
                    f"{doors['submit_spread_ms']:.0f} ms, outcomes "
                    f"{ {k: v for k, v in report.outcomes.items() if v} }, "
                    f"generator {gen.cpu_percent:.0f}% CPU, "
                    f"{gen.cpu_ms_per_customer:.2f} ms/customer, errors {errors}, "
                    f"wall {time.perf_counter() - started:.0f}s",
                    flush=True,
                )
    finally:
        pipeline.stop()
    print()
    print(f"median CPU per journey: {statistics.median(cpu_rows):.2f} ms ({args.runs} runs)")
    if held_rows:
        print(
            f"median customers held connected and waiting by one loadgen process: "
            f"{statistics.median(held_rows):.0f} of {args.held} ({args.runs} runs)"
        )
    print(f"logs: {log_dir}")
    print_provenance()


if __name__ == "__main__":
    main()

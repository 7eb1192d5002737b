"""Benchmark the waiting room's `--admit-rate auto`: how much of Stripe's limit does a sale use?

Starts a private pipeline (redis-server, stripe-sim with `--rate-limit L`, one `flashsale
serve` with the waiting room on, N `flashsale worker`s; stock for every customer) and runs
`flashsale loadgen` (a separate process): customers arrive at --arrive (far above L), queue,
are admitted, pay with a test token and hear their result. Once per admission mode (`auto`
and a fixed rate, alternating run by run), each on a fresh pipeline. Figures per run:
- charges/s while selling: charges the simulator created between the 5% and the 95% mark of
  the sale (its /_sim/stats, sampled every 0.25 s), and that as a share of L: the budget used;
- 429s the simulator answered, orders that ended failed, customers who did not pay;
- the admitted checkout p99 (admitted -> answer) and the queue p50 the customers saw;
- the admission rate the room was set to while selling (lowest and median): auto's choice.

Prints each run, the medians per mode, the load average and the command that reproduces
them. Never asserts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import redis
from provenance import fmt, print_provenance

from flashsale.core import keys, orders
from flashsale.ops.pipeline import LocalPipeline
from flashsale.ops.processes import Child, flashsale_argv

SKU = "BENCH-ROOM-BUDGET"


class ChargeSampler:
    """Every 0.25 s until stopped: (monotonic time, charges the simulator has created, the
    admission rate the room is set to)."""

    def __init__(self, sim_url: str, redis_url: str) -> None:
        self.http = httpx.Client(base_url=sim_url, timeout=5)
        self.redis = redis.Redis.from_url(redis_url, decode_responses=True)
        self.samples: list[tuple[float, int]] = []
        self.rates: list[float] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stopping.wait(0.25):
            with_charges = self.http.get("/_sim/stats").json()["charges"]["total"]
            self.samples.append((time.monotonic(), int(with_charges)))
            self.rates.append(float(self.redis.hget(keys.room_state(SKU), "rate") or 0))

    def __enter__(self) -> ChargeSampler:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopping.set()
        self.thread.join()
        self.http.close()
        self.redis.close()

    def selling_window(self) -> tuple[int, int] | None:
        """Indexes of the samples that first passed 5% and 95% of the charges."""
        total = self.samples[-1][1] if self.samples else 0
        if total < 20:
            return None
        start = next(i for i, s in enumerate(self.samples) if s[1] >= 0.05 * total)
        end = next(i for i, s in enumerate(self.samples) if s[1] >= 0.95 * total)
        return start, end

    def rate_while_selling(self) -> tuple[float, float] | None:
        """The lowest and the median admission rate the room was set to while selling."""
        window = self.selling_window()
        if window is None or window[1] <= window[0]:
            return None
        rates = self.rates[window[0] : window[1] + 1]
        return min(rates), statistics.median(rates)

    def selling_rate(self) -> float | None:
        """Charges per second between the samples that first passed 5% and 95% of the total."""
        total = self.samples[-1][1] if self.samples else 0
        if total < 20:
            return None
        start = next(s for s in self.samples if s[1] >= 0.05 * total)
        end = next(s for s in self.samples if s[1] >= 0.95 * total)
        return (end[1] - start[1]) / (end[0] - start[0]) if end[0] > start[0] else None


def run_sale(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="room-budget-") as tmp:
        directory = Path(tmp)
        with LocalPipeline(directory) as pipeline:
            pipeline.start_redis()
            sim_url = pipeline.start_simulator(
                *("--rate-limit", str(args.limit), "--latency", args.latency)
            )
            server = pipeline.start_server(
                *("--sku", SKU, "--stock", str(args.customers), "--ignore-ledger"),
                *("--waiting-room", "on", "--admit-rate", mode),
                wait=False,
            )
            workers = [
                pipeline.start_worker("--concurrency", str(args.concurrency), wait=False)
                for _ in range(args.workers)
            ]
            for child in (server, *workers):
                pipeline.wait_ready(child)
            report_path = directory / "loadgen.json"
            loadgen = Child(
                "loadgen",
                flashsale_argv(
                    *("loadgen", "--url", pipeline.server_url, "--customers", str(args.customers)),
                    *("--rate", args.arrive, "--cards", "visa", "--tokenize", "test-tokens"),
                    *("--timeout", "120s", "--no-dashboard", "--no-default-slos"),
                    *("--max-lag", "60s", "--max-cpu", "101", "--report", str(report_path)),
                ),
                pipeline.log_dir / "loadgen.log",
                env=pipeline.env,
            )
            with ChargeSampler(sim_url, pipeline.redis_url) as sampler:
                loadgen.run_measured(args.customers / args.limit * 3 + 120)
            report = json.loads(report_path.read_text())
            stats = httpx.get(f"{sim_url}/_sim/stats", timeout=5).json()
            client = redis.Redis.from_url(pipeline.redis_url, decode_responses=True)
            by_state = orders.count_by_state(client, SKU)
            client.close()
    selling = sampler.selling_rate()
    rates = sampler.rate_while_selling()
    outcomes = report["outcomes"]
    return {
        "mode": mode,
        "charges_per_s": selling,
        "budget_used": selling / args.limit if selling else None,
        "rate_limited": stats["rate_limited"]["total"],
        "failed_orders": by_state[orders.FAILED],
        "not_paid": sum(outcomes.values()) - outcomes.get("succeeded", 0),
        "checkout_p99_s": (report["latency_ms"]["checkout"].get("p99") or 0) / 1000,
        "queue_p50_s": (report["latency_ms"]["queue"].get("p50") or 0) / 1000,
        "room_rate_min": rates[0] if rates else None,
        "room_rate_median": rates[1] if rates else None,
    }


def describe(row: dict[str, Any]) -> str:
    return (
        f"{row['mode']:>7}  charges {fmt(row['charges_per_s'], '6.1f')}/s  "
        f"budget used {fmt(row['budget_used'], '.3f')}  429s {row['rate_limited']:g}  "
        f"failed {row['failed_orders']:g}  not paid {row['not_paid']:g}  "
        f"checkout p99 {row['checkout_p99_s']:.2f}s  queue p50 {row['queue_p50_s']:.1f}s  "
        f"room rate min {fmt(row['room_rate_min'], '.1f')}/s "
        f"median {fmt(row['room_rate_median'], '.1f')}/s"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1500)
    parser.add_argument("--limit", type=int, default=50, help="the simulator's --rate-limit")
    parser.add_argument("--latency", default="0", help="the simulator's --latency")
    parser.add_argument("--arrive", default="300/s", help="customers' arrival rate")
    parser.add_argument("--modes", default="auto,150/s", help="--admit-rate values, in turn")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    modes = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
    rows: list[dict[str, Any]] = []
    for run in range(args.runs):
        for mode in modes:
            row = run_sale(mode, args)
            rows.append(row)
            print(f"run {run + 1}: {describe(row)}", flush=True)
    print(f"\nmedians of {args.runs} runs, limit {args.limit}/s, {args.customers} customers:")
    for mode in modes:
        mine = [row for row in rows if row["mode"] == mode]
        median: dict[str, Any] = {"mode": mode}
        for key in mine[0]:
            if key == "mode":
                continue
            values = [row[key] for row in mine if row[key] is not None]
            median[key] = statistics.median(values) if values else None
        print(describe(median))
    print_provenance()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

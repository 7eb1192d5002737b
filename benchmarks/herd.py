"""Benchmark the doors-open herd: N customers submit at one instant; how fast does it drain?

Starts a private pipeline (redis-server, stripe-sim without latency or rate limit so Stripe is
not the bottleneck, `flashsale serve`, `flashsale worker`s; stock for every customer) and runs
`flashsale loadgen --doors-open` (a separate process, from this tree): every customer loads the
page, gets a card token and joins its room, then all submit at once. Figures per run:
- drain: results per second from the doors opening to the last result (the generator's
  corrected e2e latency starts at the doors-open instant, so its maximum is the time to the
  last result);
- 5xx and retries the customers saw; outcomes other than succeeded;
- server CPU (percent of one core) while the crowd gathered and while it drained;
- the most Redis clients connected (INFO clients, sampled every 0.2 s);
- the server's worst stall seen from outside: the slowest of /healthz probes every 0.1 s
  through the drain (a probe waits as long as the server's event loop is blocked).

--baseline TREE runs the same herd with the pipeline's processes importing flashsale from
another checkout (e.g. `git worktree add /tmp/base HEAD~1`), alternating with this tree run by
run, so before and after are measured on the same machine in one run. Prints each run, the
medians, the load average and the command that reproduces it. Never asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import redis
from probes import HealthProber
from provenance import fmt, print_provenance
from trees import generator_env, tree_env

from flashsale.ops.pipeline import LocalPipeline
from flashsale.ops.processes import Child, flashsale_argv


class Sampler:
    """Every 0.2 s until stopped: (unix time, server CPU seconds, Redis clients connected)."""

    def __init__(self, pipeline: LocalPipeline) -> None:
        self.pipeline = pipeline
        self.redis = redis.Redis.from_url(pipeline.redis_url)
        self.samples: list[tuple[float, float, int]] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stopping.wait(0.2):
            clients = int(self.redis.info("clients")["connected_clients"])
            self.samples.append((time.time(), self.pipeline.cpu_seconds()["server"], clients))

    def __enter__(self) -> Sampler:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopping.set()
        self.thread.join()

    def cpu_percent(self, start: float, end: float) -> float | None:
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2:
            return None
        (t0, cpu0, _), (t1, cpu1, _) = inside[0], inside[-1]
        return (cpu1 - cpu0) / (t1 - t0) * 100


def start_pipeline(directory: Path, customers: int, args: argparse.Namespace, tree: str | None):
    pipeline = LocalPipeline(directory, env=tree_env(tree))
    pipeline.start_redis()
    pipeline.start_simulator("--rate-limit", "off", "--latency", "0")
    # The payment path by environment: a baseline tree from before PaymentIntents has no
    # --payments flag (and pays with charges).
    pipeline.env["FLASHSALE_PAYMENTS"] = args.payments
    server = pipeline.start_server(
        *("--workers", str(args.server_workers), "--stock", str(customers)),
        wait=False,
        webhook=args.payments == "intents",
    )
    workers = [
        pipeline.start_worker("--concurrency", str(args.concurrency), wait=False)
        for _ in range(args.workers)
    ]
    for child in (server, *workers):
        pipeline.wait_ready(child)
    return pipeline


def run_herd(
    customers: int, args: argparse.Namespace, tree: str | None, tag: str
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="herd-") as tmp:
        directory = Path(tmp)
        with start_pipeline(directory, customers, args, tree) as pipeline:
            report_path = directory / "loadgen.json"
            # The generator is this tree's, whichever tree the pipeline runs.
            env = generator_env(pipeline.env)
            loadgen = Child(
                "loadgen",
                flashsale_argv(
                    *("loadgen", "--url", pipeline.server_url, "--customers", str(customers)),
                    *("--doors-open", "--rate", args.gather_rate, "--cards", "visa"),
                    *("--tokenize", "test-tokens", "--timeout", "60s", "--no-dashboard"),
                    *("--no-default-slos", "--max-release-lag", "60s", "--max-lag", "60s"),
                    *("--max-cpu", "101", "--report", str(report_path)),
                ),
                pipeline.log_dir / "loadgen.log",
                env=env,
            )
            with Sampler(pipeline) as sampler, HealthProber(pipeline.server_url) as prober:
                loadgen.run_measured(customers / 10 + 300)
            report = json.loads(report_path.read_text())
    run, outcomes = report["run"], report["outcomes"]
    opened = run["started_at"] + (run["doors_open"] or {}).get("opened_at_s", 0)
    e2e = report["latency_ms"]["e2e"]
    last_s = (e2e.get("max") or 0) / 1000
    results = sum(outcomes.values()) - outcomes.get("timeout", 0)
    return {
        "tree": tag,
        "customers": customers,
        "drain_per_s": results / last_s if last_s else None,
        "last_result_s": last_s,
        "e2e_p50_s": (e2e.get("p50") or 0) / 1000,
        "server_errors": report.get("server_errors", 0),
        "retries": report.get("retries", 0),
        "not_succeeded": {k: v for k, v in outcomes.items() if v and k != "succeeded"},
        "server_cpu_gather": sampler.cpu_percent(run["started_at"], opened),
        "server_cpu_drain": sampler.cpu_percent(opened, opened + last_s),
        "redis_clients_max": max((s[2] for s in sampler.samples), default=0),
        "worst_stall_s": prober.worst_after(opened),
    }


def imported_from(tree: str | None) -> str:
    """Where a pipeline process started with this tree's environment finds flashsale."""
    env = {**os.environ, **tree_env(tree)}
    code = "import flashsale; print(flashsale.__file__)"
    found = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return found.stdout.strip()


def describe(row: dict[str, Any]) -> str:
    return (
        f"{row['tree']:<9} {row['customers']:>6,} customers: drain {fmt(row['drain_per_s'], '.0f')}"
        f"/s, last result {row['last_result_s']:.1f} s (e2e p50 {row['e2e_p50_s']:.1f} s), "
        f"5xx {row['server_errors']}, retries {row['retries']}, "
        f"not succeeded {row['not_succeeded'] or 'none'}, server CPU gather "
        f"{fmt(row['server_cpu_gather'], '.0f')}% drain {fmt(row['server_cpu_drain'], '.0f')}%, "
        f"Redis clients max {row['redis_clients_max']}, worst /healthz "
        f"{fmt(row['worst_stall_s'], '.2f')} s"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--customers", default="2000,5000", help="herd sizes, comma-separated")
    parser.add_argument("--runs", type=int, default=1, help="runs per size and tree (median)")
    parser.add_argument("--gather-rate", default="200/s", help="arrivals while the crowd gathers")
    parser.add_argument("--server-workers", type=int, default=1, help="serve --workers")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--concurrency", type=int, default=32, help="worker --concurrency")
    parser.add_argument("--baseline", metavar="TREE", help="a checkout to compare against")
    parser.add_argument(
        "--payments",
        choices=["intents", "charges"],
        default="intents",
        help="serve --payments (intents: the simulator delivers each order's event to the server)",
    )
    args = parser.parse_args(argv)
    trees: list[tuple[str, str | None]] = [("this", None)]
    if args.baseline:
        trees.insert(0, ("baseline", str(Path(args.baseline).resolve())))
    for tag, tree in trees:
        print(f"{tag}: the pipeline imports {imported_from(tree)}")
    print(f"payments: {args.payments}", flush=True)
    rows: list[dict[str, Any]] = []
    for customers in (int(n) for n in args.customers.split(",")):
        for _ in range(args.runs):
            for tag, tree in trees:
                row = run_herd(customers, args, tree, tag)
                rows.append(row)
                print(describe(row), flush=True)
    if args.runs > 1:
        print(f"\nmedians of {args.runs} runs:")
        for customers in sorted({row["customers"] for row in rows}):
            for tag, _ in trees:
                mine = [r for r in rows if r["customers"] == customers and r["tree"] == tag]
                print(
                    f"{tag:<9} {customers:>6,} customers: drain "
                    f"{statistics.median(r['drain_per_s'] or 0 for r in mine):.0f}/s, last result "
                    f"{statistics.median(r['last_result_s'] for r in mine):.1f} s, 5xx "
                    f"{statistics.median(r['server_errors'] for r in mine):.0f}"
                )
    print_provenance()
    return 0


if __name__ == "__main__":
    sys.exit(main())

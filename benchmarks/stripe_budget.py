"""Benchmark the shared Stripe budget: charges/s against Stripe's limit during a burst of orders.

Starts a private redis-server, the simulator at live-mode limits (100 requests/s, answered 429
beyond) and N `flashsale worker` processes; then places a burst of orders exactly the way the
server's POST /charges does (reserve stock + store the order in one Lua script, enqueue
create_charge through Celery) and lets the workers drain them. Once with the shared Redis
budget (`--stripe-rate auto`: 99% of the simulator's limit) and once without (`off`), each on
a fresh database and simulator.

`--method pm_card_visa` places the orders with a PaymentMethod, so the workers pay each with one
confirmed PaymentIntent (POST /v1/payment_intents) instead of a charge.

Figures: charges per second while draining (succeeded orders / time from the first to the last
final order) as a share of the limit, 429s the simulator answered, failed orders, worker CPU ms
per order. Prints the command that reproduces them. Never asserts.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import redis
from celery import Celery
from provenance import print_provenance

from flashsale.core import inventory, jobs, orders
from flashsale.core.stripe_limits import endpoint_limit_of, parse_limit
from flashsale.ops.pipeline import LocalPipeline

SKU = "BENCH-BUDGET"


def place_burst(redis_url: str, customers: int, method: str) -> None:
    """What POST /charges does per customer, as fast as one process can: order, then enqueue."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    producer = Celery("bench-producer", set_as_current=False)
    producer.conf.update(broker_url=redis_url, task_serializer="json", task_ignore_result=True)
    inventory.init_stock(client, SKU, customers)
    with (
        producer.connection_for_write() as connection,
        producer.producer_or_acquire(producer.amqp.Producer(connection)) as publisher,
    ):
        for _ in range(customers):
            placed = orders.place_order(
                client,
                customer_id=str(uuid.uuid4()),
                token=method,
                sku=SKU,
                quantity=1,
                unit_price=4999,
                currency="usd",
            )
            producer.send_task(
                jobs.CREATE_CHARGE,
                args=[placed.order.order_id],
                queue=jobs.QUEUE,
                producer=publisher,
            )
    client.close()


def run_mode(pipeline: LocalPipeline, stripe_rate: str, args: argparse.Namespace) -> dict[str, Any]:
    """A fresh simulator and database, N workers with --stripe-rate, one burst, drained."""
    client = redis.Redis.from_url(pipeline.redis_url, decode_responses=True)
    client.flushdb()
    try:
        sim_url = pipeline.start_simulator(
            "--rate-limit", args.limit, "--endpoint-rate-limit", args.endpoint_limit
        )
        started = [
            pipeline.start_worker(
                *("--concurrency", str(args.concurrency), "--stripe-rate", stripe_rate),
                *("--loglevel", "WARNING", *args.worker_flag),
                wait=False,
            )
            for _ in range(args.workers)
        ]
        for worker in started:
            pipeline.wait_ready(worker)
        cpu_before = pipeline.cpu_seconds()["worker"]
        started_at = time.monotonic()
        place_burst(pipeline.redis_url, args.customers, args.method)
        placed_s = time.monotonic() - started_at
        deadline = started_at + args.timeout
        while time.monotonic() < deadline:
            counts = orders.count_by_state(client)
            if counts.get("pending", 0) == 0 and sum(counts.values()) >= args.customers:
                break
            time.sleep(0.5)
        drained_s = time.monotonic() - started_at
        cpu_s = pipeline.cpu_seconds()["worker"] - cpu_before
        finals = [order.updated_at for order in orders.iter_orders(client) if order.final]
        counts = orders.count_by_state(client)
        stats = httpx.get(f"{sim_url}/_sim/stats", timeout=10).json()
    finally:
        pipeline.stop_kind("worker")
        pipeline.stop_kind("stripe-sim")
        client.close()
    succeeded = counts.get("succeeded", 0)
    span = (max(finals) - min(finals)) if len(finals) > 1 else float("nan")
    # Orders finished per whole second, first and last (partial) seconds left out.
    per_second = Counter(int(stamp) for stamp in finals)
    whole = [per_second[second] for second in sorted(per_second)[1:-1]]
    return {
        "stripe_rate": stripe_rate,
        "placed_s": placed_s,
        "drained_s": drained_s,
        "counts": counts,
        "charges_per_s": succeeded / span if span else float("nan"),
        "steady_per_s": statistics.median(whole) if whole else float("nan"),
        "per_second": whole,
        "rate_limited": stats["rate_limited"]["total"],
        "requests": stats["requests_total"],
        "cpu_ms_per_order": cpu_s * 1000 / max(1, len(finals)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=5000, help="orders in the burst")
    parser.add_argument("--workers", type=int, default=2, help="flashsale worker processes")
    parser.add_argument("--concurrency", type=int, default=32, help="threads per worker")
    parser.add_argument("--limit", default="live", help="simulator --rate-limit (live = 100/s)")
    parser.add_argument(
        "--endpoint-limit",
        default="auto",
        help="simulator --endpoint-rate-limit (auto: Stripe's 25/s per endpoint with test/live)",
    )
    parser.add_argument("--modes", default="auto,off", help="--stripe-rate values to compare")
    parser.add_argument(
        "--method",
        default="tok_visa",
        help="what each order pays with: tok_visa (a charge) or pm_card_visa (a PaymentIntent)",
    )
    parser.add_argument("--runs", type=int, default=1, help="runs of each mode")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to drain, max")
    parser.add_argument(
        "--worker-flag", action="append", default=[], help="extra worker flag, e.g. --no-events"
    )
    args = parser.parse_args()

    # The limit that binds: the account's, or Stripe's per-endpoint one where lower (the
    # workers repeat one operation, POST /v1/charges or /v1/payment_intents).
    account = parse_limit(args.limit, "--limit")
    endpoint = endpoint_limit_of(args.limit, args.endpoint_limit)
    bounds = [bound for bound in (account, endpoint) if bound]
    limit = min(bounds) if bounds else None
    log_dir = Path(tempfile.mkdtemp(prefix="flashsale-bench-budget-"))
    pipeline = LocalPipeline(log_dir, env={"STRIPE_SECRET_KEY": "sk_test_bench_budget"})
    results: dict[str, list[dict[str, Any]]] = {}
    try:
        pipeline.start_redis()
        for run in range(args.runs):
            for mode in args.modes.split(","):
                result = run_mode(pipeline, mode, args)
                results.setdefault(mode, []).append(result)
                share = f" = {result['charges_per_s'] / limit:.3f} of the limit" if limit else ""
                print(
                    f"run {run + 1} --stripe-rate {mode}: {result['charges_per_s']:.1f} "
                    f"charges/s{share}; orders {result['counts']}; 429s {result['rate_limited']} "
                    f"of {result['requests']} requests; burst placed in {result['placed_s']:.1f}s, "
                    f"drained in {result['drained_s']:.1f}s; worker CPU "
                    f"{result['cpu_ms_per_order']:.2f} ms/order; per second: "
                    f"{result['per_second']} (median {result['steady_per_s']:g})",
                    flush=True,
                )
    finally:
        pipeline.stop()
    print()
    print(
        f"{args.customers} orders paid with {args.method}, {args.workers} workers x "
        f"{args.concurrency} threads, simulator --rate-limit {args.limit} --endpoint-rate-limit "
        f"{args.endpoint_limit}; logs {log_dir}"
    )
    for mode, rows in results.items():
        rate = statistics.median(row["charges_per_s"] for row in rows)
        failed = max(row["counts"].get("failed", 0) for row in rows)
        limited = statistics.median(row["rate_limited"] for row in rows)
        cpu = statistics.median(row["cpu_ms_per_order"] for row in rows)
        share = f" ({rate / limit:.3f} of the limit)" if limit else ""
        print(
            f"--stripe-rate {mode}: median {rate:.1f} charges/s{share}, failed orders (worst run) "
            f"{failed}, 429s {limited:.0f}, worker CPU {cpu:.2f} ms/order ({len(rows)} runs)"
        )
    print_provenance()


if __name__ == "__main__":
    main()

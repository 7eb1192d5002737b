"""Benchmark the worker's Stripe HTTP client: CPU per charge, stripe's RequestsClient vs ours.

Starts the simulator (no latency, no rate limit) and charges through `payments.charge_order`
(the worker's exact call) with three HTTP clients, in alternating rounds so all see the same
machine: stripe's own `RequestsClient`; the same on a session that skips requests' scan of the
environment (what flashsale used before); and flashsale's `Urllib3Client`. Tokens are made before
each round, outside the measurement. Figure: client-side CPU microseconds per charge
(process_time; the simulator is another process), median over rounds, and the ratios.
Prints the command that reproduces it. Never asserts.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import requests
import stripe

from flashsale.core import payments
from flashsale.core.orders import Order
from flashsale.ops.processes import Child, flashsale_argv
from flashsale.settings import SIM_PUBLISHABLE_KEY

SECRET_KEY = "sk_test_bench_client"


def quiet_session() -> requests.Session:
    """What flashsale used before Urllib3Client: requests without the per-request env scan."""
    session = requests.Session()
    session.trust_env = False
    return session


def make_tokens(sim_url: str, count: int) -> list[str]:
    card = {"card[number]": "4242424242424242", "card[exp_month]": "1", "card[exp_year]": "2040"}
    with httpx.Client(auth=(SIM_PUBLISHABLE_KEY, "")) as http:
        return [http.post(f"{sim_url}/v1/tokens", data=card).json()["id"] for _ in range(count)]


def cpu_us_per_charge(client: stripe.StripeClient, tokens: list[str]) -> float:
    orders = [
        Order(
            order_id=str(uuid.uuid4()),
            customer_id=str(uuid.uuid4()),
            sku="BENCH",
            quantity=1,
            amount=1000,
            currency="usd",
            token=token,
        )
        for token in tokens
    ]
    started = time.process_time()
    for order in orders:
        outcome = payments.charge_order(client, order)
        if outcome.status != "succeeded":
            raise SystemExit(f"a charge did not succeed: {outcome}")
    return (time.process_time() - started) * 1e6 / len(orders)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--charges", type=int, default=1000, help="charges per client per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    log = Path(tempfile.mkdtemp(prefix="flashsale-bench-client-")) / "stripe-sim.log"
    sim = Child(
        "sim",
        flashsale_argv("stripe-sim", "--port", "0", "--rate-limit", "off", "--latency", "0"),
        log,
    ).start()
    try:
        sim_url = sim.wait_listening()
        made: dict[str, Callable[[], stripe.HTTPClient]] = {
            "stripe RequestsClient": lambda: stripe.RequestsClient(timeout=30),
            "RequestsClient, no env scan": lambda: stripe.RequestsClient(
                timeout=30, session=quiet_session()
            ),
            "flashsale Urllib3Client": lambda: payments.Urllib3Client(sim_url, timeout=30),
        }
        clients = {
            name: stripe.StripeClient(
                SECRET_KEY,
                base_addresses={"api": sim_url},
                max_network_retries=0,
                http_client=build(),
            )
            for name, build in made.items()
        }
        figures: dict[str, list[float]] = {name: [] for name in clients}
        for client in clients.values():  # warm both: connections, imports, caches
            cpu_us_per_charge(client, make_tokens(sim_url, 20))
        for round_index in range(args.rounds):
            for name, client in clients.items():
                figure = cpu_us_per_charge(client, make_tokens(sim_url, args.charges))
                figures[name].append(figure)
                print(f"round {round_index + 1}: {name}: {figure:.0f} us CPU per charge")
    finally:
        sim.stop()
    medians = {name: statistics.median(values) for name, values in figures.items()}
    print()
    for name, value in medians.items():
        print(f"median {name}: {value:.0f} us CPU per charge")
    ours = medians["flashsale Urllib3Client"]
    for name, value in medians.items():
        if value != ours:
            print(f"ratio: {value / ours:.2f}x the CPU of Urllib3Client: {name}")
    print(f"reproduce: {sys.executable} benchmarks/stripe_client.py {' '.join(sys.argv[1:])}")


if __name__ == "__main__":
    main()

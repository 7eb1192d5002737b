"""Real fixtures: a private redis-server and the Stripe simulator, each on a free loopback port."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import stripe

# The serve + worker + sim fixtures (pipeline_factory, module_redis_url) live in their own file.
from pipeline_fixtures import module_redis_url, pipeline_factory  # noqa: F401

from flashsale.ops.processes import (
    Child,
    flashsale_argv,
    free_port,
    redis_server_argv,
    wait_for_redis,
)
from flashsale.settings import SIM_SECRET_KEY


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server of our own (never the machine's), nothing persisted; yields its base URL."""
    data_dir = tmp_path_factory.mktemp("redis")
    port = free_port()
    # Every pipeline test module takes a database of its own (pipeline_fixtures): Redis's
    # default of 16 ran out once there were more modules than that.
    argv = [*redis_server_argv(port, data_dir), "--databases", "256"]
    child = Child("redis-server", argv, data_dir / "redis.log").start()
    url = f"redis://127.0.0.1:{port}"
    try:
        wait_for_redis(f"{url}/0", child)
        yield url
    finally:
        child.stop()


@pytest.fixture
def redis_url(redis_server: str) -> Iterator[str]:
    """A clean database on our private Redis for one test (flushing is safe: we started it)."""
    url = f"{redis_server}/0"
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    yield url


def wait_until(probe: Callable[[], Any], what: str, timeout_s: float = 15.0) -> Any:
    """probe()'s first truthy answer, polled; an AssertionError naming `what` after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def pay_as_the_worker(
    client: stripe.StripeClient,
    order_id: str,
    method: str,
    amount: int,
    key: str | None = None,
) -> Any:
    """The PaymentIntent the worker makes for an order, for a test that plays the worker; a
    declined one is returned too (Stripe raises the decline, with the PaymentIntent in it)."""
    try:
        return client.v1.payment_intents.create(
            params={
                "amount": amount,
                "currency": "usd",
                "payment_method": method,
                "confirm": True,
                "metadata": {"order_id": order_id},
            },
            options={"idempotency_key": key} if key else {},
        )
    except stripe.CardError as error:
        return error.error.payment_intent  # type: ignore[union-attr]


def start_sim(log_dir: Path, *args: str) -> tuple[Child, str]:
    """Start `flashsale stripe-sim` on port 0; return the child and its base URL."""
    child = Child(
        "stripe-sim",
        flashsale_argv("stripe-sim", "--port", "0", *args),
        log_dir / "stripe-sim.log",
    ).start()
    try:
        return child, child.wait_listening()
    except BaseException:
        child.stop()
        raise


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One simulator per test module, for the tests that need no fresh ledger and no flags."""
    child, url = start_sim(tmp_path_factory.mktemp("sim"))
    try:
        yield url
    finally:
        child.stop()


@pytest.fixture(scope="module")
def client(sim: str) -> stripe.StripeClient:
    """The unmodified stripe library on the module's simulator, secret key, no retries."""
    return stripe.StripeClient(SIM_SECRET_KEY, base_addresses={"api": sim}, max_network_retries=0)


@pytest.fixture
def stripe_sim(tmp_path: Path) -> Iterator[str]:
    """A fresh simulator (empty ledger, no limits, no latency) for one test; yields its base URL."""
    child, url = start_sim(tmp_path)
    try:
        yield url
    finally:
        child.stop()


@pytest.fixture
def sim_factory(tmp_path: Path) -> Iterator[object]:
    """Start simulators with flags (`sim_factory('--rate-limit', 'test')`); all stopped after."""
    children: list[Child] = []

    def make(*args: str) -> str:
        child, url = start_sim(tmp_path / f"sim{len(children)}", *args)
        children.append(child)
        return url

    try:
        yield make
    finally:
        for child in children:
            child.stop()

"""Stripe accepts the requests but stalls past every retry: a timeout is an unknown outcome.

Before, the worker stored failed/stripe_unavailable after its last timeout, told the customer
and released the unit; then Stripe committed the queued charges: 5 of 5 customers charged and
told failed. Now the orders stay pending, their units held, until Stripe itself answers.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import pytest
from pipeline_fixtures import Pipeline

from flashsale.core import inventory, orders

pytestmark = pytest.mark.timeout(180)
# Every Stripe call gives up after 1 s, and only one retry: the stall outlasts the budget.
WORKER_FLAGS = ("--stripe-timeout", "1", "--max-retries", "1", "--retry-backoff-max", "1")
CUSTOMERS = 5


def test_a_stripe_stall_past_every_retry_charges_nobody_who_is_told_failed(
    pipeline_factory: Callable[..., Pipeline],
) -> None:
    pipeline = pipeline_factory(
        server_flags=("--stock", "20", "--sku", "STALL"), worker_flags=WORKER_FLAGS
    )
    simulator = next(child for child in pipeline.children if child.name == "stripe-sim")
    sessions = [pipeline.session() for _ in range(CUSTOMERS)]
    tokens = [pipeline.tokenize() for _ in sessions]
    simulator.signal(signal.SIGSTOP)  # accepts connections (the kernel does), answers nothing
    try:
        placed = [
            pipeline.charge(session, token).json()["order_id"]
            for session, token in zip(sessions, tokens, strict=True)
        ]
        assert pipeline.worker is not None
        deadline = time.monotonic() + 60
        while not all(
            f"order {order_id}: outcome unknown" in pipeline.worker.log_text()
            for order_id in placed
        ):
            assert time.monotonic() < deadline, pipeline.worker.log_text()[-3000:]
            time.sleep(0.1)
        # Every retry timed out: still pending, every unit still held.
        for session, order_id in zip(sessions, placed, strict=True):
            assert pipeline.order(session, order_id).json()["status"] == "pending"
        with pipeline.redis() as client:
            assert inventory.stock_left(client, "STALL") == 20 - CUSTOMERS
    finally:
        simulator.signal(signal.SIGCONT)
    finals = [
        pipeline.wait_final(session, order_id, timeout_s=60)
        for session, order_id in zip(sessions, placed, strict=True)
    ]
    # Stripe answered at last: every order is what Stripe committed, charged exactly once.
    assert [final["status"] for final in finals] == ["succeeded"] * CUSTOMERS
    for order_id, final in zip(placed, finals, strict=True):
        (charge,) = pipeline.sim_charges(order_id)
        assert charge["id"] == final["charge_id"] and charge["status"] == "succeeded"
    with pipeline.redis() as client:
        assert inventory.stock_left(client, "STALL") == 20 - CUSTOMERS
        assert all(orders.load_order(client, order_id).outcome_unknown for order_id in placed)

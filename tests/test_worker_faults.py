"""The worker under faults: killed mid-charge, Stripe erroring, Stripe refusing our key."""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest
from pipeline_fixtures import Pipeline, receive_results

from flashsale.core import inventory, orders
from flashsale.ops.processes import free_port

# Short timings so redelivery after a kill happens within seconds: the visibility timeout must
# still exceed the longest backoff plus the Stripe timeout (Settings.checked enforces it).
WORKER_FLAGS = (
    "--visibility-timeout",
    "6",
    "--stripe-timeout",
    "4",
    "--retry-backoff-max",
    "1",
    "--max-retries",
    "2",
)


@pytest.fixture(scope="module")
def pipeline(pipeline_factory: Any) -> Pipeline:
    return pipeline_factory(server_flags=("--stock", "10"), worker_flags=WORKER_FLAGS)


def wait_in_flight(pipeline: Pipeline, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pipeline.http.get(f"{pipeline.sim_url}/_sim/stats").json()["in_flight"] >= 1:
            return
        time.sleep(0.02)
    raise AssertionError("the charge never reached the simulator")


def test_worker_killed_mid_charge_and_restarted_charges_exactly_once(pipeline: Pipeline) -> None:
    session = pipeline.session()
    token = pipeline.tokenize()
    pipeline.sim_config(latency="1500ms")
    try:
        order_id = pipeline.charge(session, token).json()["order_id"]
        wait_in_flight(pipeline)
        assert pipeline.worker is not None
        pipeline.worker.signal(signal.SIGKILL)  # the whole group: no goodbye, no ack
        pipeline.worker.process.wait(timeout=10)  # type: ignore[union-attr]
        assert pipeline.order(session, order_id).json()["status"] == "pending"
        pipeline.start_worker(*WORKER_FLAGS)
        # Redelivered after the visibility timeout; the Idempotency-Key replays the first charge.
        final = pipeline.wait_final(session, order_id, timeout_s=30)
    finally:
        pipeline.sim_config(latency="0")
    assert final["status"] == "succeeded"
    charges = pipeline.sim_charges(order_id)
    assert len(charges) == 1 and charges[0]["id"] == final["charge_id"]
    with pipeline.redis() as client:
        assert orders.load_order(client, order_id).attempts >= 2  # it really ran twice


def test_stripe_5xx_leave_the_outcome_unknown_until_stripe_answers(pipeline: Pipeline) -> None:
    """A 500 from Stripe is indeterminate (docs.stripe.com/error-low-level): the charge may
    have been made. After the retries the order stays pending with its unit held, and the
    same idempotent request goes again until Stripe answers; then the customer hears it."""
    session = pipeline.session()
    token = pipeline.tokenize()
    stock_before = session["sale"]["stock_left"]
    errors_before = pipeline.http.get(f"{pipeline.sim_url}/_sim/stats").json()["injected_errors"]
    client = pipeline.connect(session)
    pipeline.sim_config(error_rate=1.0)
    assert pipeline.worker is not None
    try:
        order_id = pipeline.charge(session, token).json()["order_id"]
        deadline = time.monotonic() + 30
        while f"order {order_id}: outcome unknown" not in pipeline.worker.log_text():
            assert time.monotonic() < deadline, pipeline.worker.log_text()[-2000:]
            time.sleep(0.05)
        assert pipeline.order(session, order_id).json()["status"] == "pending"
        assert pipeline.session()["sale"]["stock_left"] == stock_before - 1  # still held
        retries = [line for line in pipeline.worker.log_text().splitlines() if order_id in line]
        assert [("retry 1 of 2" in line, "retry 2 of 2" in line) for line in retries[:2]] == [
            (True, False),
            (False, True),
        ], retries
    finally:
        pipeline.sim_config(error_rate=0.0)
    try:
        (result,) = receive_results(client, 1, timeout_s=30)
    finally:
        client.disconnect()
    assert (result["order_id"], result["status"]) == (order_id, "succeeded")
    stats = pipeline.http.get(f"{pipeline.sim_url}/_sim/stats").json()
    assert stats["injected_errors"] - errors_before >= 3  # the first try + --max-retries 2
    assert len(pipeline.sim_charges(order_id)) == 1
    with pipeline.redis() as redis_client:
        assert orders.load_order(redis_client, order_id).outcome_unknown


def test_charges_that_never_reached_stripe_fail_after_the_retries_and_release_stock(
    pipeline: Pipeline,
) -> None:
    """No connection to Stripe at all: nothing can have been charged, so after the retries
    the order fails as stripe_unavailable and gives its unit back."""
    assert pipeline.worker is not None
    pipeline.worker.stop()
    nowhere = f"http://127.0.0.1:{free_port()}"
    cut_off = pipeline.start_worker(*WORKER_FLAGS, env={"STRIPE_API_BASE": nowhere})
    session = pipeline.session()
    stock_before = session["sale"]["stock_left"]
    client = pipeline.connect(session)
    try:
        order_id = pipeline.charge(session, pipeline.tokenize()).json()["order_id"]
        (result,) = receive_results(client, 1, timeout_s=30)
        log = cut_off.log_text()
    finally:
        client.disconnect()
        cut_off.stop()
        pipeline.start_worker(*WORKER_FLAGS)
    assert result["order_id"] == order_id
    assert (result["status"], result["code"]) == ("failed", "stripe_unavailable")
    assert pipeline.sim_charges(order_id) == []
    retries = [line for line in log.splitlines() if order_id in line]
    assert [("retry 1 of 2" in line, "retry 2 of 2" in line) for line in retries[:2]] == [
        (True, False),
        (False, True),
    ], retries
    assert all("WARNING" in line for line in retries[:2]), retries
    assert pipeline.session()["sale"]["stock_left"] == stock_before
    with pipeline.redis() as redis_client:
        assert orders.load_order(redis_client, order_id).released
        assert inventory.stock_left(redis_client, "FLASH-001") == stock_before


def test_a_refused_secret_key_fails_fast_with_one_clear_log_line(pipeline: Pipeline) -> None:
    assert pipeline.worker is not None
    pipeline.worker.stop()
    bad = pipeline.start_worker(*WORKER_FLAGS, env={"STRIPE_SECRET_KEY": "sk_wrong_mode_key"})
    sessions = [pipeline.session() for _ in range(2)]
    try:
        ids = [pipeline.charge(s, pipeline.tokenize()).json()["order_id"] for s in sessions]
        finals = [
            pipeline.wait_final(s, i, timeout_s=10) for s, i in zip(sessions, ids, strict=True)
        ]
        log = bad.log_text()
    finally:
        bad.stop()
        pipeline.start_worker(*WORKER_FLAGS)
    assert [f["code"] for f in finals] == ["authentication_error"] * 2
    assert all(f["status"] == "failed" for f in finals)
    assert log.count("STRIPE AUTHENTICATION FAILED") == 1
    with pipeline.redis() as client:
        assert [orders.load_order(client, i).attempts for i in ids] == [1, 1]  # no retries

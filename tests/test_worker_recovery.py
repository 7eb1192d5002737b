"""The worker recovers what would otherwise wait forever: a stalled consumer exits (so its
supervisor restarts it) and orders placed but never queued are re-queued by the sweeper."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from pipeline_fixtures import Pipeline

from flashsale.core import jobs, keys, orders

WORKER_FLAGS = ("--visibility-timeout", "6", "--stripe-timeout", "2", "--retry-backoff-max", "1")


@pytest.fixture(scope="module")
def pipeline(pipeline_factory: Any) -> Pipeline:
    return pipeline_factory(server_flags=("--stock", "20"), worker_flags=WORKER_FLAGS)


@pytest.fixture(scope="module")
def producer(pipeline: Pipeline) -> Iterator[Celery]:
    """Sends create_charge the way the server does, by name."""
    app = Celery("recovery-producer", set_as_current=False)
    app.conf.update(broker_url=pipeline.redis_url, task_serializer="json", result_backend=None)
    yield app
    app.close()


def place(pipeline: Pipeline) -> str:
    """An order stored the way POST /charges stores one, but no task sent for it."""
    with pipeline.redis() as client:
        placement = orders.place_order(
            client,
            customer_id=pipeline.session()["customer_id"],
            token=pipeline.tokenize(),
            sku="FLASH-001",
            quantity=1,
            unit_price=4999,
            currency="usd",
        )
    return placement.order.order_id


def wait_final(pipeline: Pipeline, order_id: str, timeout_s: float = 30) -> orders.Order:
    deadline = time.monotonic() + timeout_s
    with pipeline.redis() as client:
        while time.monotonic() < deadline:
            order = orders.load_order(client, order_id)
            if order.final:
                return order
            time.sleep(0.1)
    raise AssertionError(f"order {order_id} still pending after {timeout_s}s")


def wait_in_flight(pipeline: Pipeline, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pipeline.http.get(f"{pipeline.sim_url}/_sim/stats").json()["in_flight"] >= 1:
            return
        time.sleep(0.02)
    raise AssertionError("no charge reached the simulator")


def test_a_stalled_consumer_exits_and_its_replacement_finishes_every_order(
    pipeline: Pipeline, producer: Celery
) -> None:
    """CLIENT PAUSE WRITE holds every write (BRPOP included) while reads still answer: tasks
    wait in the queue, nothing starts or ends. The watchdog must end the process (code 3)."""
    assert pipeline.worker is not None
    pipeline.worker.stop()
    stalled = pipeline.start_worker(
        *WORKER_FLAGS, "--concurrency", "1", "--stall-timeout", "8.5", "--sweep-after", "0"
    )
    ids = [place(pipeline) for _ in range(4)]
    pipeline.sim_config(latency="1s")
    admin = pipeline.redis()
    try:
        for order_id in ids:
            producer.send_task(jobs.CREATE_CHARGE, args=[order_id], queue=jobs.QUEUE)
        wait_in_flight(pipeline)
        admin.execute_command("CLIENT", "PAUSE", "25000", "WRITE")
        assert stalled.process is not None
        code = stalled.process.wait(timeout=25)
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
        admin.close()
        pipeline.sim_config(latency="0")
    log = stalled.log_text()
    assert code == 3, stalled.tail()
    assert log.count("CONSUMER STALLED") == 1
    assert f"tasks wait in {jobs.QUEUE}" in log
    # A fresh worker takes the queue; the charge cut off mid-flight returns after the
    # visibility timeout and its Idempotency-Key replays the charge Stripe already made.
    pipeline.start_worker(*WORKER_FLAGS)
    finals = [wait_final(pipeline, order_id) for order_id in ids]
    assert [order.status for order in finals] == ["succeeded"] * 4
    for order in finals:
        charges = pipeline.sim_charges(order.order_id)
        assert [charge["id"] for charge in charges] == [order.charge_id]


def test_busy_threads_are_not_a_stall(pipeline: Pipeline, producer: Celery) -> None:
    """Every thread in a slow Stripe call, a backlog waiting: charges still end, so no exit."""
    assert pipeline.worker is not None
    pipeline.worker.stop()
    busy = pipeline.start_worker(
        *WORKER_FLAGS, "--concurrency", "1", "--stall-timeout", "8.5", "--sweep-after", "0"
    )
    ids = [place(pipeline) for _ in range(6)]
    pipeline.sim_config(latency="1.5s")
    try:
        for order_id in ids:
            producer.send_task(jobs.CREATE_CHARGE, args=[order_id], queue=jobs.QUEUE)
        finals = [wait_final(pipeline, order_id) for order_id in ids]
    finally:
        pipeline.sim_config(latency="0")
    assert [order.status for order in finals] == ["succeeded"] * 6
    assert busy.alive() and "CONSUMER STALLED" not in busy.log_text()


def test_an_order_placed_but_never_queued_is_swept_and_charged_once(pipeline: Pipeline) -> None:
    """The server stored the order, then died (or Redis failed) before sending its task."""
    assert pipeline.worker is not None
    pipeline.worker.stop()
    sweeping = pipeline.start_worker(*WORKER_FLAGS, "--sweep-after", "1")
    order_id = place(pipeline)  # no create_charge sent
    final = wait_final(pipeline, order_id, timeout_s=20)
    assert final.status == "succeeded"
    assert [charge["id"] for charge in pipeline.sim_charges(order_id)] == [final.charge_id]
    time.sleep(1.5)  # a few more sweeps: a final order is never sent again
    log = sweeping.log_text()
    assert log.count(f"sweeper re-queued 1 orders pending for over 1s: {order_id}") == 1
    with pipeline.redis() as client:
        assert client.zscore(keys.pending_orders(), order_id) is None
        assert orders.load_order(client, order_id).attempts == 1

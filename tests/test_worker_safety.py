"""Worker safety: poison messages are logged once and dropped; a refused key stops charging."""

from __future__ import annotations

import time
import uuid
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
    """Sends tasks the way the server does, by name; pickle allowed so one test can try it."""
    app = Celery("poison-producer", set_as_current=False)
    app.conf.update(
        broker_url=pipeline.redis_url,
        task_serializer="json",
        accept_content=["json", "pickle"],
        result_backend=None,
    )
    yield app
    app.close()


def wait_drained(pipeline: Pipeline, timeout_s: float = 15) -> None:
    """The charge queue is empty and no message waits unacknowledged (kombu's unacked hash)."""
    deadline = time.monotonic() + timeout_s
    with pipeline.redis() as client:
        while time.monotonic() < deadline:
            if client.llen(jobs.QUEUE) == 0 and client.hlen("unacked") == 0:
                return
            time.sleep(0.1)
    raise AssertionError("the poison message is still queued or unacknowledged")


def wait_log(pipeline: Pipeline, text: str, timeout_s: float = 10, times: int = 1) -> str:
    """The worker log once text stands in it at least `times` times (tasks log a moment late)."""
    assert pipeline.worker is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        log = pipeline.worker.log_text()
        if log.count(text) >= times:
            return log
        time.sleep(0.1)
    raise AssertionError(f"no {times}x {text!r} in the worker log:\n{pipeline.worker.tail()}")


def settle(pipeline: Pipeline, text: str) -> None:
    """Drained, logged exactly once, and still once after a redelivery window passes."""
    wait_drained(pipeline)
    assert wait_log(pipeline, text).count(text) == 1
    time.sleep(2)
    assert pipeline.worker is not None and pipeline.worker.log_text().count(text) == 1


def test_charge_for_an_unknown_order_is_logged_and_dropped(
    pipeline: Pipeline, producer: Celery
) -> None:
    order_id = str(uuid.uuid4())
    producer.send_task(jobs.CREATE_CHARGE, args=[order_id], queue=jobs.QUEUE)
    settle(pipeline, f"order {order_id} does not exist; nothing to charge")
    assert pipeline.sim_charges(order_id) == []


@pytest.mark.parametrize(
    "stored",
    [
        {"order_id": "x", "status": "pending"},  # most fields missing
        {
            "order_id": "x",
            "customer_id": "c",
            "sku": "FLASH-001",
            "quantity": "many",  # not a number
            "amount": "4999",
            "currency": "usd",
            "status": "pending",
        },
    ],
)
def test_charge_for_a_corrupted_order_is_logged_and_dropped(
    pipeline: Pipeline, producer: Celery, stored: dict[str, str]
) -> None:
    order_id = str(uuid.uuid4())
    with pipeline.redis() as client:
        client.hset(keys.order(order_id), mapping=stored)
    producer.send_task(jobs.CREATE_CHARGE, args=[order_id], queue=jobs.QUEUE)
    settle(pipeline, f"dropping create_charge: order '{order_id}' is corrupted")
    assert pipeline.sim_charges(order_id) == []


def test_results_for_unknown_orders_or_impossible_outcomes_are_dropped(
    pipeline: Pipeline, producer: Celery
) -> None:
    unknown = str(uuid.uuid4())
    producer.send_task(
        jobs.PROCESS_RESPONSE, args=[unknown, {"status": "succeeded"}], queue=jobs.QUEUE
    )
    settle(pipeline, f"dropping process_response for order '{unknown}'")
    with pipeline.redis() as client:
        placed = orders.place_order(
            client,
            customer_id=str(uuid.uuid4()),
            token="tok_poison",
            sku="FLASH-001",
            quantity=1,
            unit_price=4999,
            currency="usd",
        ).order
    for outcome in ({"status": "exploded"}, {"charge_id": "ch_x"}):
        producer.send_task(jobs.PROCESS_RESPONSE, args=[placed.order_id, outcome], queue=jobs.QUEUE)
    wait_drained(pipeline)
    text = f"dropping process_response for order '{placed.order_id}'"
    assert wait_log(pipeline, text, times=2).count(text) == 2
    with pipeline.redis() as client:
        assert orders.load_order(client, placed.order_id).status == "pending"  # unchanged


def test_a_pickled_message_is_refused_unread(pipeline: Pipeline, producer: Celery) -> None:
    """Only JSON is accepted: a pickle (which would run code when loaded) is never unpickled."""
    producer.send_task(
        jobs.CREATE_CHARGE, args=[str(uuid.uuid4())], queue=jobs.QUEUE, serializer="pickle"
    )
    wait_drained(pipeline)
    log = wait_log(pipeline, "untrusted content")
    assert "pickle" in log


def test_after_stripe_refuses_the_key_the_worker_stops_calling_stripe(
    pipeline: Pipeline,
) -> None:
    """One refused call, one CRITICAL line; every later order fails at once without a call."""
    assert pipeline.worker is not None
    pipeline.worker.stop()
    bad = pipeline.start_worker(*WORKER_FLAGS, env={"STRIPE_SECRET_KEY": "sk_wrong_mode_key"})

    def refused_calls() -> int:
        stats = pipeline.http.get(f"{pipeline.sim_url}/_sim/stats").json()
        return int(stats["requests"].get("POST /v1/charges", {}).get("401", 0))

    before = refused_calls()
    try:
        sessions = [pipeline.session() for _ in range(4)]
        finals = []
        for session in sessions:  # one at a time: the first refusal must be seen by the rest
            order_id = pipeline.charge(session, pipeline.tokenize()).json()["order_id"]
            finals.append(pipeline.wait_final(session, order_id, timeout_s=10))
        log = bad.log_text()
    finally:
        bad.stop()
        pipeline.start_worker(*WORKER_FLAGS)
    assert [(f["status"], f["code"]) for f in finals] == [("failed", "authentication_error")] * 4
    assert refused_calls() - before == 1
    assert log.count("STRIPE AUTHENTICATION FAILED") == 1

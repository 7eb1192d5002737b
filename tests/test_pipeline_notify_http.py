"""`--notify http`: the worker delivers results through the server's signed /notify hop."""

from __future__ import annotations

import time
from typing import Any

import pytest
from pipeline_fixtures import Pipeline, fresh_database, receive_results

from flashsale.core import events
from flashsale.ops.processes import free_port

NOTIFY_200 = 'flashsale_http_requests_total{method="POST",route="/notify",status="200"}'


@pytest.fixture(scope="module")
def pipeline(pipeline_factory: Any) -> Pipeline:
    pipeline = pipeline_factory(server_flags=("--stock", "20"), with_worker=False)
    # The worker needs the server's URL, known only once the server has bound its port.
    pipeline.start_worker("--notify", "http", "--server-url", pipeline.server_url)
    return pipeline


def test_results_arrive_through_signed_notify(pipeline: Pipeline) -> None:
    session = pipeline.session()
    client = pipeline.connect(session)
    try:
        ok = pipeline.charge(session, pipeline.tokenize()).json()["order_id"]
        declined = pipeline.charge(session, pipeline.tokenize("4000000000009987")).json()[
            "order_id"
        ]
        results = {r["order_id"]: r for r in receive_results(client, 2)}
    finally:
        client.disconnect()
    assert results[ok]["status"] == events.SUCCEEDED
    assert results[declined]["status"] == events.DECLINED
    assert results[declined]["decline_code"] == "lost_card"
    # The server counts a request after its handler emitted the result: the count may trail it.
    deadline = time.monotonic() + 10
    while notified(pipeline) < 2:
        assert time.monotonic() < deadline, f"/notify answered 200 {notified(pipeline)} times"
        time.sleep(0.02)
    assert notified(pipeline) == 2


def notified(pipeline: Pipeline) -> float:
    """How many /notify calls the server has answered 200."""
    metrics = pipeline.http.get(f"{pipeline.server_url}/metrics").text
    for line in metrics.splitlines():
        if line.startswith(NOTIFY_200 + " "):
            return float(line.split()[-1])
    return 0.0


def test_worker_in_http_mode_still_replays_on_join(pipeline: Pipeline) -> None:
    session = pipeline.session()
    before = notified(pipeline)
    order_id = pipeline.charge(session, pipeline.tokenize()).json()["order_id"]
    assert pipeline.wait_final(session, order_id)["status"] == "succeeded"
    # The worker stores the outcome, then calls /notify: until that call is in, a socket joining
    # now could hear the live result before its JOINED (and the replay after it).
    deadline = time.monotonic() + 10
    while notified(pipeline) <= before:
        assert time.monotonic() < deadline, "the worker never called /notify"
        time.sleep(0.02)
    client = pipeline.connect(session)
    try:
        (result,) = receive_results(client, 1, timeout_s=5)
    finally:
        client.disconnect()
    assert result["order_id"] == order_id


def test_a_result_stored_but_not_delivered_is_retried_by_the_sub_task(
    pipeline_factory: Any, redis_server: str
) -> None:
    """create_charge stores Stripe's answer itself; when /notify cannot be reached it hands the
    delivery to the process_response sub-task, which retries until a server answers: the order
    is final at once, the customer told late, and Stripe charged once."""
    # A database of its own: the module's worker would take this pipeline's orders.
    pipeline = pipeline_factory(
        server_flags=("--stock", "5"), with_worker=False, redis_url=fresh_database(redis_server)
    )
    notify_port = free_port()  # nothing listens here until the second server starts
    pipeline.start_worker(
        *("--notify", "http", "--server-url", f"http://127.0.0.1:{notify_port}"),
        # Retries every 0.5-1 s for long enough that a second server starts in time on a
        # loaded machine (the sub-task's budget is its retries: /notify is one request).
        *("--retry-backoff-max", "1", "--max-retries", "60"),
    )
    session = pipeline.session()
    client = pipeline.connect(session)
    try:
        order_id = pipeline.charge(session, pipeline.tokenize()).json()["order_id"]
        final = pipeline.wait_final(session, order_id)
        assert final["status"] == events.SUCCEEDED, (final, pipeline.worker.tail())
        handed = f"order {order_id}: storing Stripe's answer failed"
        deadline = time.monotonic() + 10
        while handed not in pipeline.worker.log_text():
            assert time.monotonic() < deadline, pipeline.worker.tail()
            time.sleep(0.05)
        pipeline.local.start_server("--stock", "5", port=notify_port).wait_listening()
        (result,) = receive_results(client, 1, timeout_s=20)
    finally:
        client.disconnect()
    assert result["order_id"] == order_id and result["status"] == events.SUCCEEDED
    assert len(pipeline.sim_charges(order_id)) == 1

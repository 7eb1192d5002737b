"""End to end: sim + `flashsale serve` + `flashsale worker` + Socket.IO clients, all real."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from pipeline_fixtures import Pipeline, TaskEvents, receive_results

from flashsale.core import events, inventory

PRICE = 4999
DECLINE_CARDS = {
    # number: (code, decline_code) as Stripe documents its test cards
    "4000000000000002": ("card_declined", "generic_decline"),
    "4000000000009995": ("card_declined", "insufficient_funds"),
    "4000000000009987": ("card_declined", "lost_card"),
    "4000000000009979": ("card_declined", "stolen_card"),
    "4100000000000019": ("card_declined", "fraudulent"),
    "4000000000000069": ("expired_card", "expired_card"),
    "4000000000000127": ("incorrect_cvc", "incorrect_cvc"),
    "4000000000000119": ("processing_error", "processing_error"),
}


@pytest.fixture(scope="module")
def pipeline(pipeline_factory: Any) -> Pipeline:
    return pipeline_factory(server_flags=("--stock", "1000", "--price", str(PRICE)))


def test_success_card_reaches_the_room_and_get_order_agrees(pipeline: Pipeline) -> None:
    session = pipeline.session()
    assert session["sale"]["amount"] == PRICE and session["sale"]["stock_left"] > 0
    assert session["stripe_api_base"] == pipeline.sim_url
    client = pipeline.connect(session)
    with TaskEvents(pipeline.redis_url) as task_events:
        try:
            response = pipeline.charge(session, pipeline.tokenize("4242424242424242"), quantity=2)
            assert response.status_code == 202
            accepted = response.json()
            assert accepted["status"] == "pending" and uuid.UUID(accepted["order_id"])
            (result,) = receive_results(client, 1)
        finally:
            client.disconnect()
        # Steps 5-7, as Celery's task events (on by default) show them: create_charge ran,
        # charged and stored the result itself: one task per checkout, no process_response
        # sub-task (that one is for a storage hiccup). The room may hear the result a moment
        # before the worker reports the task done.
        charged = task_events.wait_for(
            lambda e: (
                e["type"] == "task-received"
                and e["name"] == "flashsale.create_charge"
                and accepted["order_id"] in e["args"]
            )
        )
        task_events.wait_for(
            lambda e: e["type"] == "task-succeeded" and e["uuid"] == charged["uuid"]
        )
        # A fence: a sub-task would have been queued before create_charge returned, and the
        # worker takes the results queue first, so it is received before a later order's
        # charge is done.
        later = pipeline.session()
        fence = pipeline.charge(later, pipeline.tokenize("4242424242424242")).json()["order_id"]
        fenced = task_events.wait_for(
            lambda e: (
                e["type"] == "task-received"
                and e["name"] == "flashsale.create_charge"
                and fence in e["args"]
            )
        )
        task_events.wait_for(
            lambda e: e["type"] == "task-succeeded" and e["uuid"] == fenced["uuid"]
        )
        spawned = [e for e in task_events.seen if e.get("parent_id") == charged["uuid"]]
        assert spawned == []
    assert result["order_id"] == accepted["order_id"]
    assert result["status"] == events.SUCCEEDED
    assert result["charge_id"].startswith("ch_")
    assert (result["amount"], result["currency"]) == (2 * PRICE, "usd")
    assert result["code"] is None and result["decline_code"] is None
    state = pipeline.order(session, accepted["order_id"]).json()
    assert state["status"] == "succeeded" and state["charge_id"] == result["charge_id"]
    assert state["quantity"] == 2 and "token" not in state
    (charge,) = pipeline.sim_charges(accepted["order_id"])
    assert charge["id"] == result["charge_id"] and charge["amount"] == 2 * PRICE


@pytest.mark.parametrize("number", sorted(DECLINE_CARDS))
def test_every_decline_card_reaches_the_room_with_its_codes(
    pipeline: Pipeline, number: str
) -> None:
    code, decline_code = DECLINE_CARDS[number]
    session = pipeline.session()
    stock_before = pipeline.session()["sale"]["stock_left"]
    client = pipeline.connect(session)
    try:
        response = pipeline.charge(session, pipeline.tokenize(number))
        assert response.status_code == 202
        (result,) = receive_results(client, 1)
    finally:
        client.disconnect()
    assert result["status"] == events.DECLINED
    assert (result["code"], result["decline_code"]) == (code, decline_code)
    assert result["message"]
    state = pipeline.order(session, result["order_id"]).json()
    assert (state["status"], state["code"], state["decline_code"]) == (
        "declined",
        code,
        decline_code,
    )
    # The declined unit went back on sale (other tests may run, but none here concurrently).
    assert pipeline.session()["sale"]["stock_left"] == stock_before


def test_result_finished_before_join_is_delivered_on_join(pipeline: Pipeline) -> None:
    session = pipeline.session()
    order_id = pipeline.charge(session, pipeline.tokenize()).json()["order_id"]
    final = pipeline.wait_final(session, order_id)
    client = pipeline.connect(session)
    try:
        (result,) = receive_results(client, 1, timeout_s=5)
    finally:
        client.disconnect()
    assert result["order_id"] == order_id and result["status"] == final["status"] == "succeeded"


def test_reconnect_after_the_result_delivers_it_again(pipeline: Pipeline) -> None:
    session = pipeline.session()
    client = pipeline.connect(session)
    try:
        order_id = pipeline.charge(session, pipeline.tokenize("4000000000009995")).json()[
            "order_id"
        ]
        (first,) = receive_results(client, 1)
    finally:
        client.disconnect()
    again = pipeline.connect(session)
    try:
        (second,) = receive_results(again, 1, timeout_s=5)
    finally:
        again.disconnect()
    assert first == second
    assert second["order_id"] == order_id and second["decline_code"] == "insufficient_funds"


def test_a_customer_only_hears_its_own_results(pipeline: Pipeline) -> None:
    alice, bob = pipeline.session(), pipeline.session()
    alice_socket, bob_socket = pipeline.connect(alice), pipeline.connect(bob)
    try:
        alice_order = pipeline.charge(alice, pipeline.tokenize()).json()["order_id"]
        (alice_result,) = receive_results(alice_socket, 1)
        bob_order = pipeline.charge(bob, pipeline.tokenize()).json()["order_id"]
        (bob_result,) = receive_results(bob_socket, 1)
    finally:
        alice_socket.disconnect()
        bob_socket.disconnect()
    assert alice_result["order_id"] == alice_order and bob_result["order_id"] == bob_order


def test_the_same_order_submitted_twice_charges_once(pipeline: Pipeline) -> None:
    session = pipeline.session()
    token = pipeline.tokenize()
    with ThreadPoolExecutor(max_workers=4) as executor:
        responses = list(executor.map(lambda _: pipeline.charge(session, token), range(4)))
    assert sorted(r.status_code for r in responses) == [200, 200, 200, 202]
    order_ids = {r.json()["order_id"] for r in responses}
    assert len(order_ids) == 1
    (order_id,) = order_ids
    assert pipeline.wait_final(session, order_id)["status"] == "succeeded"
    again = pipeline.charge(session, token)
    assert again.status_code == 200
    assert again.json() == {"order_id": order_id, "status": "succeeded"}
    assert len(pipeline.sim_charges(order_id)) == 1
    with pipeline.redis() as client:
        assert client.llen(f"flashsale:customer:{session['customer_id']}:orders") == 1


def test_sold_out_exactly_n_succeed_and_stock_never_goes_negative(pipeline: Pipeline) -> None:
    sku = "LIMITED-3"
    server = pipeline.add_server("--sku", sku, "--stock", "3", "--price", "1000")
    buyers = [pipeline.session(server) for _ in range(8)]
    tokens = [pipeline.tokenize() for _ in buyers]
    with ThreadPoolExecutor(max_workers=8) as executor:
        responses = list(
            executor.map(
                lambda pair: pipeline.charge(pair[0], pair[1], server),
                zip(buyers, tokens, strict=True),
            )
        )
    accepted = [(b, r) for b, r in zip(buyers, responses, strict=True) if r.status_code == 202]
    refused = [r for r in responses if r.status_code == 409]
    assert len(accepted) == 3 and len(refused) == 5
    assert all(r.json()["error"]["code"] == "sold_out" for r in refused)
    finals = [pipeline.wait_final(b, r.json()["order_id"]) for b, r in accepted]
    assert [f["status"] for f in finals] == ["succeeded"] * 3
    assert all(f["amount"] == 1000 and f["sku"] == sku for f in finals)
    with pipeline.redis() as client:
        assert inventory.stock_left(client, sku) == 0
    assert pipeline.session(server)["sale"]["stock_left"] == 0
    late = pipeline.session(server)
    assert pipeline.charge(late, pipeline.tokenize(), server).status_code == 409


def test_a_declined_order_gives_its_unit_back(pipeline: Pipeline) -> None:
    sku = "LAST-ONE"
    server = pipeline.add_server("--sku", sku, "--stock", "1")
    first = pipeline.session(server)
    order_id = pipeline.charge(first, pipeline.tokenize("4000000000000002"), server).json()[
        "order_id"
    ]
    assert pipeline.wait_final(first, order_id)["status"] == "declined"
    second = pipeline.session(server)
    assert second["sale"]["stock_left"] == 1
    response = pipeline.charge(second, pipeline.tokenize(), server)
    assert response.status_code == 202
    assert pipeline.wait_final(second, response.json()["order_id"])["status"] == "succeeded"
    assert pipeline.session(server)["sale"]["stock_left"] == 0


def test_metrics_count_orders_and_sockets(pipeline: Pipeline) -> None:
    session = pipeline.session()
    client = pipeline.connect(session)
    try:
        text = pipeline.http.get(f"{pipeline.server_url}/metrics").text
    finally:
        client.disconnect()
    assert "flashsale_sockets_connected 1.0" in text
    assert 'flashsale_orders{state="succeeded"}' in text
    assert 'flashsale_http_requests_total{method="GET",route="/session",status="200"}' in text
    assert 'flashsale_socket_emits_total{event="joined"}' in text
    health = pipeline.http.get(f"{pipeline.server_url}/healthz")
    assert health.status_code == 200 and health.json()["redis"] == "ok"
    # The disconnect reaches the server asynchronously: poll (bounded) until it is counted.
    for _ in range(100):
        text = pipeline.http.get(f"{pipeline.server_url}/metrics").text
        if "flashsale_sockets_connected 0.0" in text:
            break
        time.sleep(0.1)
    assert "flashsale_sockets_connected 0.0" in text

"""POST /stripe/webhook on the real server, fed by the real simulator's signed deliveries:
orders paid with PaymentIntents finished from Stripe's events alone (no worker answering), and
forged, stale, replayed or unsigned deliveries refused and counted."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import stripe
from conftest import pay_as_the_worker, wait_until
from pipeline_fixtures import Pipeline, receive_results

from flashsale.ops.processes import free_port

SECRET = "whsec_flashsale_webhook_test"
PRICE = 4999


@pytest.fixture(scope="module")
def pipeline(pipeline_factory: Any) -> Pipeline:
    """Server, simulator delivering every event to the server, and no worker: the orders below
    are paid at the simulator directly, as the worker would pay them, and only the webhook
    tells the server how they ended."""
    port = free_port()
    return pipeline_factory(
        server_flags=("--port", str(port), "--stock", "100", "--price", str(PRICE)),
        sim_flags=(
            "--webhook",
            f"http://127.0.0.1:{port}/stripe/webhook",
            "--webhook-secret",
            SECRET,
        ),
        with_worker=False,
        env={"STRIPE_WEBHOOK_SECRET": SECRET},
    )


def webhook_count(pipeline: Pipeline, outcome: str) -> float:
    text = httpx.get(f"{pipeline.server_url}/metrics").text
    line = f'flashsale_stripe_webhooks_total{{outcome="{outcome}"}} '
    found = [row for row in text.splitlines() if row.startswith(line)]
    return float(found[0].split()[-1]) if found else 0.0


def place(pipeline: Pipeline, method: str) -> tuple[dict[str, Any], str]:
    session = pipeline.session()
    answer = pipeline.charge(session, None, payment_method=method)
    assert answer.status_code == 202, answer.text
    return session, answer.json()["order_id"]


def stripe_client(pipeline: Pipeline) -> stripe.StripeClient:
    return stripe.StripeClient(
        pipeline.env["STRIPE_SECRET_KEY"], base_addresses={"api": pipeline.sim_url}
    )


def pay_at_stripe(pipeline: Pipeline, order_id: str, method: str) -> Any:
    """The PaymentIntent the worker would make for the order (the test plays the worker); a
    decline's payment_intent.payment_failed event says so to the server."""
    return pay_as_the_worker(stripe_client(pipeline), order_id, method, PRICE)


def signed(payload: bytes, secret: str = SECRET, at: int | None = None) -> dict[str, str]:
    """Stripe's scheme: HMAC-SHA256 of "t.payload" with the whsec_ secret."""
    stamp = int(time.time()) if at is None else at
    signature = hmac.new(
        secret.encode(), f"{stamp}.".encode() + payload, hashlib.sha256
    ).hexdigest()
    return {"Stripe-Signature": f"t={stamp},v1={signature}", "Content-Type": "application/json"}


def test_a_succeeded_event_pays_the_order_and_tells_the_room(pipeline: Pipeline) -> None:
    session, order_id = place(pipeline, "pm_card_visa")
    room = pipeline.connect(session)
    try:
        pay_at_stripe(pipeline, order_id, "pm_card_visa")
        (result,) = receive_results(room, 1)
    finally:
        room.disconnect()
    assert result["order_id"] == order_id and result["status"] == "succeeded"
    assert result["charge_id"].startswith("ch_")
    assert webhook_count(pipeline, "processed") >= 1


def test_a_payment_failed_event_declines_with_the_cards_codes(pipeline: Pipeline) -> None:
    stock = pipeline.session()["sale"]["stock_left"]
    session, order_id = place(pipeline, "pm_card_chargeDeclinedInsufficientFunds")
    pay_at_stripe(pipeline, order_id, "pm_card_chargeDeclinedInsufficientFunds")
    state = pipeline.wait_final(session, order_id)
    assert (state["status"], state["code"], state["decline_code"]) == (
        "declined",
        "card_declined",
        "insufficient_funds",
    )
    assert pipeline.session()["sale"]["stock_left"] == stock  # the unit went back on sale


@pytest.mark.parametrize(
    ("reason", "code"),
    [
        ("abandoned", "authentication_abandoned"),
        ("requested_by_customer", "payment_intent_canceled"),
    ],
)
def test_a_canceled_event_fails_the_order_with_the_code_the_worker_would_give(
    pipeline: Pipeline, reason: str, code: str
) -> None:
    """The worker's cancel and the webhook race to finish an abandoned 3D Secure order: both
    read the PaymentIntent the same way, so whichever wins tells the customer the same thing."""
    session, order_id = place(pipeline, "pm_card_threeDSecure2Required")
    intent = pay_at_stripe(pipeline, order_id, "pm_card_threeDSecure2Required")
    assert intent.status == "requires_action"
    stripe_client(pipeline).v1.payment_intents.cancel(
        intent.id, params={"cancellation_reason": reason}
    )
    state = pipeline.wait_final(session, order_id)
    assert (state["status"], state["code"]) == ("failed", code)


def test_forged_stale_replayed_and_unsigned_deliveries_change_nothing(
    pipeline: Pipeline,
) -> None:
    session, order_id = place(pipeline, "pm_card_visa")
    event = {
        "id": "evt_forged_1",
        "object": "event",
        "type": "payment_intent.succeeded",
        "data": {
            "object": {
                "id": "pi_forged",
                "object": "payment_intent",
                "status": "succeeded",
                "latest_charge": "ch_forged",
                "metadata": {"order_id": order_id},
            }
        },
    }
    payload = json.dumps(event).encode()
    url = f"{pipeline.server_url}/stripe/webhook"
    cases = {
        "bad_signature": signed(payload, secret="whsec_someone_else"),
        "stale_signature": signed(payload, at=int(time.time()) - 301),
        "missing_signature": {"Content-Type": "application/json"},
    }
    for outcome, headers in cases.items():
        before = webhook_count(pipeline, outcome)
        answer = httpx.post(url, content=payload, headers=headers)
        assert answer.status_code == 400 and answer.json()["error"]["code"] == outcome
        assert webhook_count(pipeline, outcome) == before + 1
    # Signed with the right secret, but not an event (no id, type, data.object): refused.
    for body in (b'{"id": "evt_x", "type": "payment_intent.succeeded"}', b"[1, 2]", b"{"):
        answer = httpx.post(url, content=body, headers=signed(body))
        assert answer.status_code == 400 and answer.json()["error"]["code"] == "bad_payload"
    assert pipeline.order(session, order_id).json()["status"] == "pending"
    # A genuine delivery, captured and sent again: counted, and it changes nothing. (200: the
    # same bytes are also what Stripe's duplicate of an event in the same second looks like.)
    genuine = signed(payload)
    first = httpx.post(url, content=payload, headers=genuine)
    assert first.status_code == 200 and first.json()["outcome"] == "processed"
    before = webhook_count(pipeline, "replayed_signature")
    again = httpx.post(url, content=payload, headers=genuine)
    assert again.status_code == 200 and again.json()["outcome"] == "replayed_signature"
    assert webhook_count(pipeline, "replayed_signature") == before + 1
    # Stripe's own redelivery (a fresh signature) of an event already applied: 200, no change.
    redelivered = httpx.post(url, content=payload, headers=signed(payload, at=int(time.time()) + 1))
    assert redelivered.status_code == 200 and redelivered.json()["outcome"] == "duplicate"
    assert pipeline.order(session, order_id).json()["charge_id"] == "ch_forged"


def test_an_event_for_an_unknown_order_is_answered_200(pipeline: Pipeline) -> None:
    event = {
        "id": "evt_unknown_order",
        "object": "event",
        "type": "payment_intent.succeeded",
        "data": {"object": {"id": "pi_x", "object": "payment_intent", "metadata": {}}},
    }
    payload = json.dumps(event).encode()
    answer = httpx.post(
        f"{pipeline.server_url}/stripe/webhook", content=payload, headers=signed(payload)
    )
    assert answer.status_code == 200 and answer.json()["outcome"] == "unknown_order"


def test_out_of_order_and_duplicated_events_change_nothing(pipeline: Pipeline) -> None:
    """The simulator duplicates every event and holds every other back 1 s: each order still
    ends once, as its PaymentIntent did."""
    for change in ({"webhook_duplicate_rate": 1.0}, {"webhook_out_of_order_rate": 0.5}):
        assert httpx.post(f"{pipeline.sim_url}/_sim/config", json=change).status_code == 200
    try:
        methods = ("pm_card_visa", "pm_card_chargeDeclined") * 3
        placed = [place(pipeline, method) for method in methods]
        for (_, order_id), method in zip(placed, methods, strict=True):
            pay_at_stripe(pipeline, order_id, method)
        finals = [pipeline.wait_final(session, order_id) for session, order_id in placed]
        assert [f["status"] for f in finals] == ["succeeded", "declined"] * 3
        wait_until(lambda: webhook_count(pipeline, "duplicate") >= 6, "the duplicates")
        for (session, order_id), final in zip(placed, finals, strict=True):
            assert pipeline.order(session, order_id).json() == final
    finally:
        httpx.post(
            f"{pipeline.sim_url}/_sim/config",
            json={"webhook_duplicate_rate": 0.0, "webhook_out_of_order_rate": 0.0},
        )


def test_one_event_delivered_many_times_at_once_is_taken_once(pipeline: Pipeline) -> None:
    """Twenty deliveries of one event at the same moment, each signed afresh (as Stripe's
    retries are): one finishes the order, the other nineteen are duplicates. Recording the
    event and finishing its order are one Redis step, so no two deliveries both take it."""
    pipeline.sim_config(webhook_drop_rate=1.0)  # the test delivers the event itself
    try:
        session, order_id = place(pipeline, "pm_card_visa")
        intent = pay_at_stripe(pipeline, order_id, "pm_card_visa")
    finally:
        pipeline.sim_config(webhook_drop_rate=0.0)
    listed = httpx.get(
        f"{pipeline.sim_url}/v1/events",
        params={"type": "payment_intent.succeeded", "limit": 100},
        auth=(pipeline.env["STRIPE_SECRET_KEY"], ""),
    )
    event = next(e for e in listed.json()["data"] if e["data"]["object"]["id"] == intent.id)
    payload = json.dumps(event).encode()
    before = {o: webhook_count(pipeline, o) for o in ("processed", "duplicate", "already_final")}
    now = int(time.time())
    all_connected = threading.Barrier(20)

    def deliver(age_s: int) -> str:
        with httpx.Client(base_url=pipeline.server_url, timeout=30) as client:
            client.get("/healthz")  # connected before the deliveries start together
            all_connected.wait()
            answer = client.post(
                "/stripe/webhook", content=payload, headers=signed(payload, at=now - age_s)
            )
        assert answer.status_code == 200, answer.text
        return str(answer.json()["outcome"])

    with ThreadPoolExecutor(max_workers=20) as pool:
        outcomes = sorted(pool.map(deliver, range(20)))
    assert outcomes == ["duplicate"] * 19 + ["processed"]
    assert pipeline.wait_final(session, order_id)["status"] == "succeeded"
    after = {o: webhook_count(pipeline, o) for o in before}
    assert {o: after[o] - before[o] for o in before} == {
        "processed": 1,
        "duplicate": 19,
        "already_final": 0,
    }

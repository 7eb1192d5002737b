"""3D Secure on PaymentIntents, end to end on the real simulator, server and worker: the room is
told to authenticate, the customer answers the simulator's challenge, Stripe's signed event
finishes the order; a lost event is repaired by the sweeper, an abandoned challenge gives the
unit back."""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

import httpx
import pytest
from conftest import wait_until
from pipeline_fixtures import Pipeline

from flashsale.core import events
from flashsale.ops.processes import flashsale_argv

PRICE = 4999
ABANDON_AFTER = "4s"


@pytest.fixture(scope="module")
def pipeline(pipeline_factory: Any) -> Pipeline:
    return pipeline_factory(
        server_flags=("--stock", "100", "--price", str(PRICE), "--payments", "intents"),
        # The sweeper looks again after 1 s; an unfinished challenge is abandoned after 4 s.
        worker_flags=("--sweep-after", "1", "--authentication-timeout", ABANDON_AFTER),
        webhook=True,
    )


def receive(
    client: Any, name: str, order_id: str | None = None, timeout_s: float = 20.0
) -> dict[str, Any]:
    """The next `name` event in the customer's room (of this order, when given)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            event = client.receive(timeout=max(0.1, deadline - time.monotonic()))
        except TimeoutError:
            break
        if event[0] == name and order_id in (None, event[1].get("order_id")):
            return dict(event[1])
    raise AssertionError(f"no {name} for order {order_id} within {timeout_s}s")


def order_with_action(pipeline: Pipeline, method: str) -> tuple[dict, Any, str, dict]:
    session = pipeline.session()
    room = pipeline.connect(session)
    answer = pipeline.charge(session, None, payment_method=method)
    assert answer.status_code == 202, answer.text
    order_id = answer.json()["order_id"]
    action = receive(room, events.ACTION_REQUIRED, order_id)
    assert action["client_secret"].startswith(action["payment_intent"] + "_secret_")
    assert pipeline.order(session, order_id).json()["status"] == "pending"
    return session, room, order_id, action


def answer_challenge(pipeline: Pipeline, action: dict, verdict: str) -> None:
    done = httpx.post(
        f"{pipeline.sim_url}/3d_secure/{action['payment_intent']}/{verdict}",
        data={"client_secret": action["client_secret"]},
        headers={"Accept": "application/json"},
    )
    assert done.status_code == 200, done.text


def test_a_3ds_card_authenticated_is_paid(pipeline: Pipeline) -> None:
    session, room, order_id, action = order_with_action(pipeline, "pm_card_threeDSecure2Required")
    try:
        answer_challenge(pipeline, action, "complete")
        result = receive(room, events.CHARGE_RESULT, order_id)
    finally:
        room.disconnect()
    assert result["status"] == "succeeded" and result["charge_id"].startswith("ch_")
    assert "action_secret" not in pipeline.order(session, order_id).json()


def test_a_failed_authentication_is_declined_and_the_unit_returns(pipeline: Pipeline) -> None:
    stock = pipeline.session()["sale"]["stock_left"]
    _, room, order_id, action = order_with_action(pipeline, "pm_card_threeDSecure2Required")
    try:
        answer_challenge(pipeline, action, "fail")
        result = receive(room, events.CHARGE_RESULT, order_id)
    finally:
        room.disconnect()
    assert (result["status"], result["code"]) == (
        "declined",
        "payment_intent_authentication_failure",
    )
    assert pipeline.session()["sale"]["stock_left"] == stock


def test_authenticated_then_declined_for_insufficient_funds(pipeline: Pipeline) -> None:
    method = "pm_card_authenticationRequiredChargeDeclinedInsufficientFunds"
    _, room, order_id, action = order_with_action(pipeline, method)
    try:
        answer_challenge(pipeline, action, "complete")
        result = receive(room, events.CHARGE_RESULT, order_id)
    finally:
        room.disconnect()
    assert (result["status"], result["decline_code"]) == ("declined", "insufficient_funds")


def test_a_rejoining_page_is_told_again_to_authenticate(pipeline: Pipeline) -> None:
    session, room, order_id, action = order_with_action(pipeline, "pm_card_threeDSecure2Required")
    room.disconnect()
    again = pipeline.connect(session)
    try:
        assert receive(again, events.ACTION_REQUIRED, order_id) == action
        answer_challenge(pipeline, action, "complete")
        assert receive(again, events.CHARGE_RESULT, order_id)["status"] == "succeeded"
    finally:
        again.disconnect()


def test_a_lost_webhook_is_repaired_by_the_sweeper(pipeline: Pipeline) -> None:
    config = f"{pipeline.sim_url}/_sim/config"
    assert httpx.post(config, json={"webhook_drop_rate": 1.0}).status_code == 200
    try:
        session, room, order_id, action = order_with_action(
            pipeline, "pm_card_threeDSecure2Required"
        )
        try:
            answer_challenge(pipeline, action, "complete")
            # No event reaches the server: the sweeper's next look at the PaymentIntent does.
            result = receive(room, events.CHARGE_RESULT, order_id)
        finally:
            room.disconnect()
    finally:
        httpx.post(config, json={"webhook_drop_rate": 0.0})
    assert result["status"] == "succeeded"


def test_an_abandoned_challenge_is_canceled_and_the_unit_returns(pipeline: Pipeline) -> None:
    stock = pipeline.session()["sale"]["stock_left"]
    session, room, order_id, action = order_with_action(pipeline, "pm_card_threeDSecure2Required")
    try:
        # Nobody answers the challenge: past the authentication timeout the worker cancels.
        result = receive(room, events.CHARGE_RESULT, order_id, timeout_s=30)
    finally:
        room.disconnect()
    assert (result["status"], result["code"]) == ("failed", "authentication_abandoned")
    intent = httpx.get(
        f"{pipeline.sim_url}/v1/payment_intents/{action['payment_intent']}",
        headers={"Authorization": f"Bearer {pipeline.env['STRIPE_SECRET_KEY']}"},
    ).json()
    assert (intent["status"], intent["cancellation_reason"]) == ("canceled", "abandoned")
    assert pipeline.session()["sale"]["stock_left"] == stock


def test_an_abandoned_challenge_in_the_waiting_room_admits_the_next_customer(
    pipeline: Pipeline,
) -> None:
    """One unit, two customers queued: the first is admitted, meets 3D Secure and closes the
    tab. The worker cancels the PaymentIntent after its authentication timeout, the unit comes
    back to the room, and the second customer is admitted and pays for it."""
    sku = f"ROOM-3DS-{time.monotonic_ns()}"
    url = pipeline.add_server(
        *("--sku", sku, "--stock", "1", "--ignore-ledger", "--payments", "intents"),
        *("--waiting-room", "on", "--retry-window", "1s", "--room-grace", "1s"),
    )
    first_session, second_session = pipeline.session(url), pipeline.session(url)
    first = pipeline.connect(first_session, url)
    second = pipeline.connect(second_session, url)
    try:
        admission = receive(first, events.ADMITTED)["admission_token"]
        answer = pipeline.charge(
            first_session,
            None,
            url,
            payment_method="pm_card_threeDSecure2Required",
            admission_token=admission,
        )
        assert answer.status_code == 202, answer.text
        order_id = answer.json()["order_id"]
        receive(first, events.ACTION_REQUIRED, order_id)
        first.disconnect()  # nobody will answer the challenge
        admitted = receive(second, events.ADMITTED, timeout_s=40)
        paid = pipeline.charge(
            second_session,
            None,
            url,
            payment_method="pm_card_visa",
            admission_token=admitted["admission_token"],
        )
        assert paid.status_code == 202, paid.text
        result = receive(second, events.CHARGE_RESULT, paid.json()["order_id"])
    finally:
        second.disconnect()
    assert result["status"] == "succeeded"
    abandoned = pipeline.order(first_session, order_id).json()
    assert (abandoned["status"], abandoned["code"]) == ("failed", "authentication_abandoned")


def run_loadgen(
    pipeline: Pipeline, tmp_path: Any, customers: int, cards: str
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """`flashsale loadgen` against the pipeline; its exit and its report."""
    report_path = tmp_path / "load.json"
    done = subprocess.run(
        flashsale_argv(
            "loadgen",
            *("--url", pipeline.server_url, "--customers", str(customers), "--rate", "20/s"),
            *("--cards", cards, "--no-dashboard"),
            *("--report", str(report_path), "--max-cpu", "101"),
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done, json.loads(report_path.read_text())


def test_loadgen_customers_authenticate_in_their_own_phase(pipeline: Pipeline, tmp_path) -> None:
    done, report = run_loadgen(pipeline, tmp_path, 20, "three_d_secure=1,visa=1")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert report["outcomes"]["succeeded"] == 20
    authenticate = report["latency_ms"]["authenticate"]
    assert authenticate["count"] == 10 and authenticate["p50"] > 0


def test_loadgen_customers_fail_abandon_or_are_declined_after_authenticating(
    pipeline: Pipeline, tmp_path
) -> None:
    """The card mix says what each 3D Secure customer does: fail the challenge (declined),
    leave the page (abandoned: the worker cancels the PaymentIntent after its authentication
    timeout and the unit goes back), or authenticate a card the issuer then declines."""
    stock = pipeline.session()["sale"]["stock_left"]
    cards = "three_d_secure_failed=1,three_d_secure_abandoned=1,three_d_secure_then_declined=1"
    done, report = run_loadgen(pipeline, tmp_path, 6, cards)
    outcomes = {k: v for k, v in report["outcomes"].items() if v}
    assert outcomes == {"declined": 4, "abandoned": 2}, done.stdout[-2000:]
    # Two failed challenges, two that passed and were declined; nobody answered the other two.
    assert report["latency_ms"]["authenticate"]["count"] == 4
    # The abandoned customers' PaymentIntents are canceled and their units return.
    wait_until(
        lambda: pipeline.session()["sale"]["stock_left"] == stock,
        what="the abandoned customers' units back on sale",
    )

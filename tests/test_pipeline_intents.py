"""Orders paid with a PaymentMethod: the worker confirms one PaymentIntent per order, on the real
simulator, server and worker (3D Secure: tests/test_pipeline_3ds.py)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from pipeline_fixtures import Pipeline, receive_results

from flashsale.core import events

PRICE = 4999
DECLINES = {
    # PaymentMethod alias: (code, decline_code), as Stripe documents its test cards
    "pm_card_chargeDeclined": ("card_declined", "generic_decline"),
    "pm_card_visa_chargeDeclinedInsufficientFunds": ("card_declined", "insufficient_funds"),
    "pm_card_chargeDeclinedLostCard": ("card_declined", "lost_card"),
    "pm_card_radarBlock": ("card_declined", "fraudulent"),
    "pm_card_chargeDeclinedExpiredCard": ("expired_card", "expired_card"),
    "pm_card_chargeDeclinedIncorrectCvc": ("incorrect_cvc", "incorrect_cvc"),
    "pm_card_visa_chargeDeclinedVelocityLimitExceeded": ("card_declined", "card_velocity_exceeded"),
}  # 3D Secure cards: tests/test_pipeline_3ds.py


@pytest.fixture(scope="module")
def pipeline(pipeline_factory: Any) -> Pipeline:
    return pipeline_factory(
        server_flags=("--stock", "1000", "--price", str(PRICE), "--payments", "intents")
    )


def pay(pipeline: Pipeline, method: str) -> tuple[dict[str, Any], dict[str, Any]]:
    session = pipeline.session()
    client = pipeline.connect(session)
    try:
        response = pipeline.charge(session, None, payment_method=method)
        assert response.status_code == 202, response.text
        (result,) = receive_results(client, 1)
    finally:
        client.disconnect()
    return session, result


def intents_of(pipeline: Pipeline, order_id: str) -> list[dict[str, Any]]:
    listed = httpx.get(
        f"{pipeline.sim_url}/v1/payment_intents",
        params={"limit": "100"},
        headers={"Authorization": f"Bearer {pipeline.env['STRIPE_SECRET_KEY']}"},
    ).json()["data"]
    return [i for i in listed if i["metadata"].get("order_id") == order_id]


def test_the_session_tells_clients_to_make_payment_methods(pipeline: Pipeline) -> None:
    assert pipeline.session()["payments"] == "intents"


def test_a_plain_card_is_paid_by_one_payment_intent(pipeline: Pipeline) -> None:
    session, result = pay(pipeline, "pm_card_visa")
    assert result["status"] == events.SUCCEEDED and result["charge_id"].startswith("ch_")
    (intent,) = intents_of(pipeline, result["order_id"])
    assert intent["status"] == "succeeded" and intent["amount"] == PRICE
    assert intent["latest_charge"] == result["charge_id"]
    assert intent["metadata"]["customer_id"] == session["customer_id"]
    (charge,) = pipeline.sim_charges(result["order_id"])
    assert charge["payment_intent"] == intent["id"]


@pytest.mark.parametrize("method", sorted(DECLINES))
def test_each_decline_family_reaches_the_room_with_its_codes(
    pipeline: Pipeline, method: str
) -> None:
    stock_before = pipeline.session()["sale"]["stock_left"]
    session, result = pay(pipeline, method)
    assert result["status"] == events.DECLINED
    assert (result["code"], result["decline_code"]) == DECLINES[method]
    assert result["message"]
    (intent,) = intents_of(pipeline, result["order_id"])
    assert intent["status"] == "requires_payment_method"
    assert intent["last_payment_error"]["decline_code"] == DECLINES[method][1]
    assert pipeline.session()["sale"]["stock_left"] == stock_before


def test_a_card_is_given_once_as_token_or_payment_method(pipeline: Pipeline) -> None:
    session = pipeline.session()
    both = pipeline.charge(session, "tok_visa", payment_method="pm_card_visa")
    assert both.status_code == 400 and "one of them" in both.json()["error"]["message"]
    neither = pipeline.charge(session, None)
    assert neither.status_code == 400 and neither.json()["error"]["code"] == "missing_field"
    forged = pipeline.charge(session, None, payment_method="tok_visa")
    assert forged.status_code == 400 and "pm_" in forged.json()["error"]["message"]

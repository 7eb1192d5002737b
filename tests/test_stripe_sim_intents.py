"""PaymentMethods and PaymentIntents in the simulator, driven by the real stripe library.

3D Secure challenges are answered over HTTP as the load generator answers them; the browser
path is in test_stripe_sim_browser.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import stripe
from conftest import start_sim

from flashsale.settings import SIM_PUBLISHABLE_KEY, SIM_SECRET_KEY

NEXT_YEAR = str(time.gmtime().tm_year + 1)
FIXTURES = Path(__file__).parent / "data" / "stripe_fixtures.json"

# pm_card alias -> (status after confirm, decline_code or None)
PLAIN = {
    "pm_card_visa": ("succeeded", None),
    "pm_card_mastercard": ("succeeded", None),
    "pm_card_amex_threeDSecureNotSupported": ("succeeded", None),
    "pm_card_threeDSecureOptional": ("succeeded", None),
    "pm_card_chargeDeclined": ("requires_payment_method", "generic_decline"),
    "pm_card_chargeDeclinedInsufficientFunds": ("requires_payment_method", "insufficient_funds"),
    "pm_card_chargeDeclinedFraudulent": ("requires_payment_method", "fraudulent"),
}
THREE_DS = (
    "pm_card_authenticationRequired",
    "pm_card_authenticationRequiredOnSetup",
    "pm_card_threeDSecure2Required",
    "pm_card_threeDSecureRequired",
)


def intent_params(method: str, order: str, **extra: object) -> dict[str, object]:
    return {
        "amount": 4999,
        "currency": "usd",
        "payment_method": method,
        "confirm": True,
        "metadata": {"order_id": order},
        **extra,
    }


def answer_challenge(sim: str, intent: stripe.PaymentIntent, verdict: str) -> dict:
    """Open the challenge the PaymentIntent points at and press one of its buttons."""
    action = intent.next_action
    assert action is not None
    url = (
        action.redirect_to_url.url
        if action.type == "redirect_to_url"
        else action.use_stripe_sdk["stripe_js"]
    )
    assert url.startswith(sim + "/3d_secure/")
    page = httpx.get(url)
    assert page.status_code == 200 and "Complete authentication" in page.text
    answered = httpx.post(
        f"{sim}/3d_secure/{intent.id}/{verdict}",
        data={"client_secret": intent.client_secret},
        headers={"Accept": "application/json"},
    )
    assert answered.status_code == 200, answered.text
    return answered.json()


@pytest.mark.parametrize("alias", sorted(PLAIN))
def test_a_payment_intent_confirmed_at_creation_ends_as_the_card_says(
    client: stripe.StripeClient, alias: str
) -> None:
    status, decline_code = PLAIN[alias]
    if decline_code is None:
        intent = client.v1.payment_intents.create(params=intent_params(alias, f"ok-{alias}"))
        assert intent.status == status == "succeeded"
        assert intent.amount_received == 4999
        charge = client.v1.charges.retrieve(intent.latest_charge)
        assert charge.paid and charge.payment_intent == intent.id
        assert charge.payment_method == intent.payment_method
        assert charge.metadata["order_id"] == f"ok-{alias}"
        return
    with pytest.raises(stripe.CardError) as caught:
        client.v1.payment_intents.create(params=intent_params(alias, f"no-{alias}"))
    error = caught.value.error
    assert error.decline_code == decline_code
    assert error.payment_intent is not None
    assert error.payment_intent["status"] == status
    assert error.payment_method["id"].startswith("pm_")
    intent = client.v1.payment_intents.retrieve(error.payment_intent["id"])
    assert intent.status == "requires_payment_method"
    assert intent.payment_method is None
    assert intent.last_payment_error.decline_code == decline_code
    failed = client.v1.charges.retrieve(intent.latest_charge)
    assert failed.status == "failed" and failed.payment_intent == intent.id


def test_a_declined_customer_pays_the_same_payment_intent_with_another_card(
    client: stripe.StripeClient,
) -> None:
    with pytest.raises(stripe.CardError) as caught:
        client.v1.payment_intents.create(
            params=intent_params("pm_card_chargeDeclinedInsufficientFunds", "retry-1")
        )
    intent_id = caught.value.error.payment_intent["id"]
    paid = client.v1.payment_intents.confirm(intent_id, params={"payment_method": "pm_card_visa"})
    assert paid.status == "succeeded"
    charges = client.v1.charges.list(params={"limit": 5}).data
    mine = [c for c in charges if c.payment_intent == intent_id]
    assert [c.status for c in mine] == ["succeeded", "failed"]  # newest first


@pytest.mark.parametrize("alias", THREE_DS)
def test_a_3ds_card_waits_for_the_challenge_and_pays_once_authenticated(
    sim: str, client: stripe.StripeClient, alias: str
) -> None:
    intent = client.v1.payment_intents.create(params=intent_params(alias, f"3ds-{alias}"))
    assert intent.status == "requires_action"
    assert intent.next_action.type == "use_stripe_sdk"
    assert intent.latest_charge is None
    answered = answer_challenge(sim, intent, "complete")
    assert answered["status"] == "succeeded"
    final = client.v1.payment_intents.retrieve(intent.id, params={"expand": ["latest_charge"]})
    assert final.status == "succeeded" and final.next_action is None
    three_ds = final.latest_charge.payment_method_details.card.three_d_secure
    assert three_ds.result == "authenticated"


def test_a_failed_challenge_returns_the_intent_to_requires_payment_method(
    sim: str, client: stripe.StripeClient
) -> None:
    intent = client.v1.payment_intents.create(
        params=intent_params("pm_card_authenticationRequired", "3ds-fail")
    )
    answered = answer_challenge(sim, intent, "fail")
    assert answered["status"] == "requires_payment_method"
    final = client.v1.payment_intents.retrieve(intent.id)
    assert final.last_payment_error.code == "payment_intent_authentication_failure"
    assert final.payment_method is None and final.latest_charge is None
    # Answering again changes nothing: the challenge is over.
    again = httpx.post(
        f"{sim}/3d_secure/{intent.id}/complete",
        data={"client_secret": intent.client_secret},
        headers={"Accept": "application/json"},
    )
    assert again.json()["status"] == "requires_payment_method"


def test_3178_authenticates_then_declines_with_insufficient_funds(
    sim: str, client: stripe.StripeClient
) -> None:
    intent = client.v1.payment_intents.create(
        params=intent_params(
            "pm_card_authenticationRequiredChargeDeclinedInsufficientFunds", "3178"
        )
    )
    assert intent.status == "requires_action"
    answered = answer_challenge(sim, intent, "complete")
    assert answered["status"] == "requires_payment_method"
    assert answered["last_payment_error"]["decline_code"] == "insufficient_funds"
    final = client.v1.payment_intents.retrieve(intent.id, params={"expand": ["latest_charge"]})
    assert final.latest_charge.status == "failed"
    assert final.latest_charge.payment_method_details.card.three_d_secure.result == (
        "authenticated"
    )


def test_a_redirect_challenge_sends_the_customer_back_with_stripes_params(
    sim: str, client: stripe.StripeClient
) -> None:
    intent = client.v1.payment_intents.create(
        params=intent_params(
            "pm_card_threeDSecure2Required", "redirect", return_url="http://127.0.0.1:1/done"
        )
    )
    assert intent.next_action.type == "redirect_to_url"
    assert intent.next_action.redirect_to_url.return_url == "http://127.0.0.1:1/done"
    back = httpx.post(
        f"{sim}/3d_secure/{intent.id}/complete", data={"client_secret": intent.client_secret}
    )
    assert back.status_code == 303
    location = back.headers["Location"]
    assert location.startswith("http://127.0.0.1:1/done?payment_intent=" + intent.id)
    assert "redirect_status=succeeded" in location


def test_off_session_on_a_3ds_card_is_declined_authentication_required(
    client: stripe.StripeClient,
) -> None:
    with pytest.raises(stripe.CardError) as caught:
        client.v1.payment_intents.create(
            params=intent_params("pm_card_authenticationRequired", "off", off_session=True)
        )
    assert caught.value.error.decline_code == "authentication_required"


def test_the_charges_api_declines_a_card_that_demands_3ds(sim: str) -> None:
    token = httpx.post(
        f"{sim}/v1/tokens",
        data={
            "card[number]": "4000002760003184",
            "card[exp_month]": "12",
            "card[exp_year]": NEXT_YEAR,
            "card[cvc]": "123",
        },
        headers={"Authorization": f"Bearer {SIM_PUBLISHABLE_KEY}"},
    ).json()
    charge = httpx.post(
        f"{sim}/v1/charges",
        data={"amount": "4999", "currency": "usd", "source": token["id"]},
        headers={"Authorization": f"Bearer {SIM_SECRET_KEY}"},
    )
    assert charge.status_code == 402
    assert charge.json()["error"]["decline_code"] == "authentication_required"


def test_create_then_confirm_then_manual_capture(sim: str, client: stripe.StripeClient) -> None:
    intent = client.v1.payment_intents.create(
        params={"amount": 2000, "currency": "usd", "capture_method": "manual"}
    )
    assert intent.status == "requires_payment_method"
    assert intent.client_secret.startswith(intent.id + "_secret_")
    browser = stripe.StripeClient(SIM_PUBLISHABLE_KEY, base_addresses={"api": sim})
    method = browser.v1.payment_methods.create(
        params={
            "type": "card",
            "card": {"number": "4242424242424242", "exp_month": 12, "exp_year": NEXT_YEAR},
        }
    )
    assert method.card.last4 == "4242" and method.card.brand == "visa"
    assert client.v1.payment_methods.retrieve(method.id).id == method.id
    confirmed = client.v1.payment_intents.confirm(intent.id, params={"payment_method": method.id})
    assert confirmed.status == "requires_capture" and confirmed.amount_capturable == 2000
    captured = client.v1.payment_intents.capture(intent.id)
    assert captured.status == "succeeded" and captured.amount_received == 2000
    assert client.v1.charges.retrieve(captured.latest_charge).captured is True
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.payment_intents.capture(intent.id)
    assert caught.value.code == "payment_intent_unexpected_state"


def test_cancel_and_the_states_that_refuse_it(client: stripe.StripeClient) -> None:
    intent = client.v1.payment_intents.create(
        params=intent_params("pm_card_authenticationRequired", "abandoned")
    )
    canceled = client.v1.payment_intents.cancel(
        intent.id, params={"cancellation_reason": "abandoned"}
    )
    assert canceled.status == "canceled" and canceled.cancellation_reason == "abandoned"
    assert canceled.next_action is None and canceled.canceled_at
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.payment_intents.confirm(intent.id, params={"payment_method": "pm_card_visa"})
    paid = client.v1.payment_intents.create(params=intent_params("pm_card_visa", "paid"))
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.payment_intents.cancel(paid.id)
    assert "status of succeeded" in str(caught.value)


def test_an_idempotent_confirmation_replays_what_the_first_call_saw(
    client: stripe.StripeClient,
) -> None:
    params = intent_params("pm_card_authenticationRequired", "idem")
    first = client.v1.payment_intents.create(
        params=params, options={"idempotency_key": "order-idem-attempt-1"}
    )
    assert first.status == "requires_action"
    client.v1.payment_intents.cancel(first.id)
    again = client.v1.payment_intents.create(
        params=params, options={"idempotency_key": "order-idem-attempt-1"}
    )
    assert again.id == first.id and again.status == "requires_action"
    assert again.last_response.headers["Idempotent-Replayed"] == "true"


def test_bad_requests_are_refused_like_stripe(sim: str, client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.payment_intents.create(params=intent_params("pm_card_nonsense", "x"))
    assert caught.value.code == "resource_missing"
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.payment_intents.create(
            params={"amount": 2000, "currency": "usd", "expand": ["customer"]}
        )
    assert "cannot be expanded" in str(caught.value)
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.payment_intents.create(
            params={"amount": 2000, "currency": "usd", "confirm": True}
        )
    assert caught.value.code == "payment_intent_unexpected_state"
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.payment_intents.create(params={"amount": 20, "currency": "usd"})
    assert caught.value.code == "amount_too_small"
    forged = httpx.post(
        f"{sim}/3d_secure/pi_nope/complete",
        data={"client_secret": "pi_nope_secret_x"},
        headers={"Accept": "application/json"},
    )
    assert forged.status_code == 404


def test_a_publishable_key_needs_the_client_secret(sim: str, client: stripe.StripeClient) -> None:
    intent = client.v1.payment_intents.create(params={"amount": 2000, "currency": "usd"})
    public = {"Authorization": f"Bearer {SIM_PUBLISHABLE_KEY}"}
    blind = httpx.get(f"{sim}/v1/payment_intents/{intent.id}", headers=public)
    assert blind.status_code == 404
    seen = httpx.get(
        f"{sim}/v1/payment_intents/{intent.id}",
        params={"client_secret": intent.client_secret},
        headers=public,
    )
    assert seen.status_code == 200 and seen.json()["id"] == intent.id
    with pytest.raises(stripe.AuthenticationError):
        stripe.StripeClient(
            SIM_PUBLISHABLE_KEY, base_addresses={"api": sim}
        ).v1.payment_intents.create(params={"amount": 2000, "currency": "usd"})


def test_payment_intents_page_newest_first(client: stripe.StripeClient) -> None:
    made = [
        client.v1.payment_intents.create(params={"amount": 1000 + n, "currency": "usd"}).id
        for n in range(5)
    ]
    page = client.v1.payment_intents.list(params={"limit": 3})
    assert [p.id for p in page.data] == made[::-1][:3] and page.has_more
    rest = client.v1.payment_intents.list(params={"limit": 2, "starting_after": made[2]})
    assert [p.id for p in rest.data] == [made[1], made[0]]


def same_shape(kind: str, theirs: dict, ours: dict) -> list[str]:
    """What our object lacks of Stripe's example: top-level keys, and nested object kinds."""
    problems = [f"{kind} lacks {key}" for key in sorted(set(theirs) - set(ours))]
    for key, value in theirs.items():
        kind_of = value.get("object") if isinstance(value, dict) else None
        mine = ours.get(key)
        if isinstance(kind_of, str) and isinstance(mine, dict) and mine.get("object") != kind_of:
            problems.append(f"{kind}.{key} is {ours[key].get('object')}, not {value['object']}")
    return problems


def test_objects_have_the_keys_of_stripes_own_examples(
    sim: str, client: stripe.StripeClient
) -> None:
    """Every top-level key and nested object kind of Stripe's example objects is answered."""
    examples = json.loads(FIXTURES.read_text())
    intent = client.v1.payment_intents.create(params=intent_params("pm_card_visa", "shape"))
    method = client.v1.payment_methods.retrieve(intent.payment_method)
    refund = client.v1.refunds.create(params={"charge": intent.latest_charge, "amount": 100})
    # Stripe's example shows the expandable refunds list; since 2022-11-15 it is asked for.
    charge = client.v1.charges.retrieve(intent.latest_charge, params={"expand": ["refunds"]})
    token = httpx.post(
        f"{sim}/v1/tokens",
        data={
            "card[number]": "4242424242424242",
            "card[exp_month]": "12",
            "card[exp_year]": NEXT_YEAR,
            "card[cvc]": "123",
        },
        headers={"Authorization": f"Bearer {SIM_PUBLISHABLE_KEY}"},
    ).json()
    event = client.v1.events.list(params={"limit": 1}).data[0]
    problems: list[str] = []
    for kind, ours in (
        ("payment_intent", intent.to_dict()),
        ("payment_method", method.to_dict()),
        ("charge", charge.to_dict()),
        ("refund", refund.to_dict()),
        ("token", token),
        ("event", event.to_dict()),
    ):
        problems += same_shape(kind, examples[kind], ours)
    problems += same_shape(
        "payment_method.card", examples["payment_method"]["card"], method.to_dict()["card"]
    )
    problems += same_shape("token.card", examples["token"]["card"], token["card"])
    assert not problems, problems


def configure(sim: str, **changes: object) -> None:
    answer = httpx.post(f"{sim}/_sim/config", json=changes)
    assert answer.status_code == 200, answer.text


def create_raw(sim: str, **fields: str) -> httpx.Response:
    return httpx.post(
        f"{sim}/v1/payment_intents",
        data={"amount": "2000", "currency": "usd", **fields},
        headers={"Authorization": f"Bearer {SIM_SECRET_KEY}"},
        timeout=30,
    )


def test_the_per_operation_rate_limit_answers_endpoint_rate(stripe_sim: str) -> None:
    configure(stripe_sim, endpoint_rate_limit=3)
    answers = [create_raw(stripe_sim) for _ in range(8)]
    limited = [a for a in answers if a.status_code == 429]
    assert limited and len(limited) <= 5
    assert {a.headers["Stripe-Rate-Limited-Reason"] for a in limited} == {"endpoint-rate"}
    assert limited[0].json()["error"]["code"] == "rate_limit"
    # Another operation has its own budget.
    other = httpx.get(
        f"{stripe_sim}/v1/payment_intents", headers={"Authorization": f"Bearer {SIM_SECRET_KEY}"}
    )
    assert other.status_code == 200
    stats = httpx.get(f"{stripe_sim}/_sim/stats").json()
    assert stats["rate_limited"]["endpoint-rate"] == len(limited)


def concurrently(calls: list) -> list[httpx.Response]:
    results: list[httpx.Response] = []
    threads = [threading.Thread(target=lambda c=c: results.append(c())) for c in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


def test_the_per_operation_concurrency_limit_answers_endpoint_concurrency(
    stripe_sim: str,
) -> None:
    configure(stripe_sim, endpoint_concurrency_limit=1, latency="400ms")
    answers = concurrently([lambda: create_raw(stripe_sim) for _ in range(4)])
    reasons = sorted(a.headers.get("Stripe-Rate-Limited-Reason", "ok") for a in answers)
    assert reasons.count("endpoint-concurrency") >= 1 and "ok" in reasons


def test_concurrent_updates_of_one_object_wait_then_time_out_with_lock_timeout(
    stripe_sim: str,
) -> None:
    made = create_raw(stripe_sim).json()
    configure(stripe_sim, latency="1500ms")
    url = f"{stripe_sim}/v1/payment_intents/{made['id']}/confirm"
    headers = {"Authorization": f"Bearer {SIM_SECRET_KEY}"}
    answers = concurrently(
        [
            lambda: httpx.post(
                url, data={"payment_method": "pm_card_visa"}, headers=headers, timeout=30
            )
            for _ in range(2)
        ]
    )
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200, 429]
    refused = next(a for a in answers if a.status_code == 429)
    assert refused.headers["Stripe-Rate-Limited-Reason"] == "resource-specific"
    assert refused.json()["error"]["code"] == "lock_timeout"
    assert refused.headers["Stripe-Should-Retry"] == "true"
    configure(stripe_sim, latency="0")
    # Updates of different objects do not wait on each other.
    other = create_raw(stripe_sim, payment_method="pm_card_visa", confirm="true")
    assert other.status_code == 200


def test_lists_filter_on_created_as_stripe_does(client: stripe.StripeClient) -> None:
    def make() -> stripe.PaymentIntent:
        return client.v1.payment_intents.create(params=intent_params("pm_card_visa", "window"))

    early = [make(), make()]
    second = early[-1].created
    while int(time.time()) <= second:  # the next whole second, as `created` counts
        time.sleep(0.05)
    late = [make(), make()]
    boundary = late[0].created
    assert boundary > second
    newer = client.v1.payment_intents.list(params={"created": {"gte": boundary}, "limit": 10})
    assert [p.id for p in newer.data] == [late[1].id, late[0].id] and not newer.has_more
    older = client.v1.payment_intents.list(params={"created": {"lt": boundary}, "limit": 2})
    assert [p.id for p in older.data] == [early[1].id, early[0].id]
    charges = client.v1.charges.list(params={"created": {"gt": second}})
    assert {c.payment_intent for c in charges.data} == {late[0].id, late[1].id}
    events = client.v1.events.list(
        params={"created": {"gte": boundary}, "type": "payment_intent.succeeded"}
    )
    assert {e.data.object.id for e in events.data} == {late[0].id, late[1].id}
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.charges.list(params={"created": {"after": boundary}})


def test_stripe_version_is_checked_and_echoed_and_replays_name_the_original(sim: str) -> None:
    headers = {"Authorization": f"Bearer {SIM_SECRET_KEY}"}
    plain = httpx.get(f"{sim}/v1/payment_intents", headers=headers)
    assert plain.headers["Stripe-Version"] == "2026-10-28.endive"
    pinned = httpx.get(
        f"{sim}/v1/payment_intents", headers={**headers, "Stripe-Version": "2024-06-20"}
    )
    assert pinned.status_code == 200 and pinned.headers["Stripe-Version"] == "2024-06-20"
    for bad in ("yesterday", "2010-12-31", "2024-6-20"):
        refused = httpx.get(f"{sim}/v1/payment_intents", headers={**headers, "Stripe-Version": bad})
        assert refused.status_code == 400, bad
        assert "Invalid Stripe API version" in refused.json()["error"]["message"]
    keyed = {**headers, "Idempotency-Key": "version-replay-1"}
    data = {"amount": "2000", "currency": "usd"}
    first = httpx.post(f"{sim}/v1/payment_intents", data=data, headers=keyed)
    again = httpx.post(f"{sim}/v1/payment_intents", data=data, headers=keyed)
    assert first.headers["Original-Request"] == first.headers["Request-Id"]
    assert again.headers["Original-Request"] == first.headers["Request-Id"]
    assert again.headers["Request-Id"] != first.headers["Request-Id"]
    assert again.json()["id"] == first.json()["id"]


def test_refunds_list_and_a_payment_intent_refunded(client: stripe.StripeClient) -> None:
    intent = client.v1.payment_intents.create(params=intent_params("pm_card_visa", "refund-me"))
    first = client.v1.refunds.create(params={"payment_intent": intent.id, "amount": 1000})
    second = client.v1.refunds.create(params={"payment_intent": intent.id})
    assert first.charge == second.charge == intent.latest_charge
    assert first.payment_intent == intent.id and second.amount == 3999
    mine = client.v1.refunds.list(params={"payment_intent": intent.id})
    assert [r.id for r in mine.data] == [second.id, first.id]
    older = client.v1.refunds.list(
        params={"payment_intent": intent.id, "starting_after": second.id}
    )
    assert [r.id for r in older.data] == [first.id] and not older.has_more
    newer = client.v1.refunds.list(params={"charge": first.charge, "ending_before": first.id})
    assert [r.id for r in newer.data] == [second.id]
    assert client.v1.refunds.list(params={"charge": intent.latest_charge}).data[0].id == second.id
    newest = client.v1.refunds.list(params={"limit": 1})
    assert newest.data[0].id == second.id and newest.has_more
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.refunds.create(params={"amount": 100})
    assert caught.value.code == "parameter_missing"


def test_a_charge_made_with_capture_false_is_captured_later(sim: str) -> None:
    secret = {"Authorization": f"Bearer {SIM_SECRET_KEY}"}
    held = httpx.post(
        f"{sim}/v1/charges",
        data={"amount": "5000", "currency": "usd", "source": "tok_visa", "capture": "false"},
        headers=secret,
    ).json()
    assert held["captured"] is False and held["amount_captured"] == 0
    url = f"{sim}/v1/charges/{held['id']}/capture"
    captured = httpx.post(url, data={"amount": "4000"}, headers=secret).json()
    assert captured["captured"] is True and captured["amount_refunded"] == 1000
    again = httpx.post(url, headers=secret)
    assert again.status_code == 400
    assert again.json()["error"]["code"] == "charge_already_captured"


RAW = {"card[number]": "4242424242424242", "card[exp_month]": "12", "card[cvc]": "123"}


def test_raw_card_numbers_need_the_publishable_key_unless_allowed(sim: str, tmp_path: Path) -> None:
    raw = {**RAW, "card[exp_year]": str(NEXT_YEAR)}
    secret = {"Authorization": f"Bearer {SIM_SECRET_KEY}"}
    browser = {"Authorization": f"Bearer {SIM_PUBLISHABLE_KEY}"}
    refusals = [
        httpx.post(f"{sim}/v1/tokens", data=raw, headers=secret),
        httpx.post(f"{sim}/v1/payment_methods", data={**raw, "type": "card"}, headers=secret),
        httpx.post(
            f"{sim}/v1/charges",
            data={"amount": "500", "currency": "usd", "source[object]": "card"}
            | {k.replace("card", "source"): v for k, v in raw.items()},
            headers=secret,
        ),
    ]
    for refused in refusals:
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert error["type"] == "invalid_request_error"
        assert error["message"].startswith("Sending credit card numbers directly")
    # The browser's key (Stripe.js) may; server code uses what it tokenized, or a test alias.
    token = httpx.post(f"{sim}/v1/tokens", data=raw, headers=browser).json()
    method = httpx.post(
        f"{sim}/v1/payment_methods",
        data={"type": "card", "card[token]": token["id"]},
        headers=secret,
    ).json()
    assert method["card"]["last4"] == "4242" and method["id"].startswith("pm_")
    alias = httpx.post(
        f"{sim}/v1/payment_methods",
        data={"type": "card", "card[token]": "tok_visa"},
        headers=secret,
    ).json()
    assert alias["card"]["brand"] == "visa"
    # An account with raw card data APIs enabled: --allow-raw-cards.
    child, allowing = start_sim(tmp_path, "--allow-raw-cards")
    try:
        allowed = httpx.post(f"{allowing}/v1/tokens", data=raw, headers=secret)
        assert allowed.status_code == 200 and allowed.json()["card"]["last4"] == "4242"
        charged = httpx.post(
            f"{allowing}/v1/charges",
            data={"amount": "500", "currency": "usd", "source[object]": "card"}
            | {k.replace("card", "source"): v for k, v in raw.items()},
            headers=secret,
        )
        assert charged.status_code == 200 and charged.json()["status"] == "succeeded"
        config = httpx.get(f"{allowing}/_sim/config").json()
        assert config["allow_raw_cards"] is True
    finally:
        child.stop()


@pytest.mark.parametrize(
    ("currency", "minimum"),
    [("usd", 50), ("gbp", 30), ("hkd", 400), ("mxn", 1000), ("huf", 17500), ("jpy", 50)],
)
def test_each_currency_has_the_docs_minimum(sim: str, currency: str, minimum: int) -> None:
    """docs.stripe.com/currencies: 0.50 USD, 0.30 GBP, 4.00 HKD, 10 MXN, 175.00 HUF, 50 JPY."""
    secret = {"Authorization": f"Bearer {SIM_SECRET_KEY}"}
    url = f"{sim}/v1/payment_intents"
    below = httpx.post(url, data={"amount": minimum - 1, "currency": currency}, headers=secret)
    assert below.status_code == 400 and below.json()["error"]["code"] == "amount_too_small"
    at = httpx.post(url, data={"amount": minimum, "currency": currency}, headers=secret)
    assert at.status_code == 200, at.text


def test_refunds_are_embedded_in_charges_only_before_2022_11_15_or_when_expanded(
    sim: str, client: stripe.StripeClient
) -> None:
    intent = client.v1.payment_intents.create(params=intent_params("pm_card_visa", "versions"))
    client.v1.refunds.create(params={"payment_intent": intent.id, "amount": 500})
    url = f"{sim}/v1/charges/{intent.latest_charge}"
    secret = {"Authorization": f"Bearer {SIM_SECRET_KEY}"}
    today = httpx.get(url, headers=secret).json()
    assert "refunds" not in today and today["amount_refunded"] == 500
    expanded = httpx.get(url, params={"expand[]": "refunds"}, headers=secret).json()
    assert expanded["refunds"]["data"][0]["amount"] == 500
    older = httpx.get(url, headers={**secret, "Stripe-Version": "2020-08-27"})
    assert older.headers["Stripe-Version"] == "2020-08-27"
    assert older.json()["refunds"]["total_count"] == 1


def test_a_payment_intent_takes_1000_updates_an_hour(sim: str) -> None:
    """docs.stripe.com/rate-limits: 1,000 update requests per PaymentIntent per hour."""
    with httpx.Client(base_url=sim, headers={"Authorization": f"Bearer {SIM_SECRET_KEY}"}) as http:
        intent = http.post("/v1/payment_intents", data={"amount": 900, "currency": "usd"}).json()
        answers = [
            http.post(f"/v1/payment_intents/{intent['id']}/confirm").status_code
            for _ in range(1000)
        ]
        assert 429 not in answers  # refused for their content (no payment method), but taken
        refused = http.post(f"/v1/payment_intents/{intent['id']}/cancel")
        assert refused.status_code == 429
        assert refused.headers["Stripe-Rate-Limited-Reason"] == "resource-specific"
        other = http.post("/v1/payment_intents", data={"amount": 900, "currency": "usd"}).json()
        assert http.post(f"/v1/payment_intents/{other['id']}/cancel").status_code == 200


def test_restricted_keys_may_do_only_what_their_permissions_name(tmp_path: Path) -> None:
    child, url = start_sim(
        tmp_path,
        "--restricted-key",
        "rk_test_worker1234=charge_write",
        "--restricted-key",
        "rk_test_reader1234=event_read",
    )
    try:
        worker = stripe.StripeClient("rk_test_worker1234", base_addresses={"api": url})
        charge = worker.v1.charges.create(
            params={"amount": 900, "currency": "usd", "source": "tok_visa"}
        )
        assert worker.v1.charges.retrieve(charge.id).id == charge.id  # write allows read
        with pytest.raises(stripe.PermissionError) as caught:
            worker.v1.payment_intents.create(params={"amount": 900, "currency": "usd"})
        assert caught.value.http_status == 403
        assert "'rak_payment_intent_write' permission" in str(caught.value)
        assert "rk_test_worker1234" not in str(caught.value)  # masked, as Stripe shows it
        reader = stripe.StripeClient("rk_test_reader1234", base_addresses={"api": url})
        assert reader.v1.events.list().data
        with pytest.raises(stripe.PermissionError):
            reader.v1.charges.retrieve(charge.id)
        # A restricted key nobody described may do everything.
        anyone = stripe.StripeClient("rk_test_anything12", base_addresses={"api": url})
        assert anyone.v1.payment_intents.create(params={"amount": 900, "currency": "usd"}).id
    finally:
        child.stop()
    bad = subprocess.run(
        [sys.executable, "-m", "flashsale", "stripe-sim", "--restricted-key", "rk_test_x12=fly"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "unknown permission(s) fly" in bad.stderr

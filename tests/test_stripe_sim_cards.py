"""Stripe's whole test-card table (flashsale/stripe_sim/test_cards.json), walked through tokens,
PaymentMethods, Charges and PaymentIntents with the stripe library; then what follows a payment
on the dispute and refund cards."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import pytest
import stripe
from conftest import wait_until

from flashsale.settings import SIM_PUBLISHABLE_KEY

TABLE = json.loads(
    resources.files("flashsale.stripe_sim").joinpath("test_cards.json").read_text("utf-8")
)
CARDS: list[dict[str, Any]] = TABLE["cards"]
FIXTURES = Path(__file__).parent / "data" / "stripe_fixtures.json"
NEXT_YEAR = time.gmtime().tm_year + 1
# docs.stripe.com/testing#declined-payments: the error code and decline code of each decline.
DOCUMENTED = {
    "generic_decline": ("card_declined", "generic_decline"),
    "insufficient_funds": ("card_declined", "insufficient_funds"),
    "lost_card": ("card_declined", "lost_card"),
    "stolen_card": ("card_declined", "stolen_card"),
    "expired_card": ("expired_card", "expired_card"),
    "incorrect_cvc": ("incorrect_cvc", "incorrect_cvc"),
    "processing_error": ("processing_error", "processing_error"),
    "card_velocity_exceeded": ("card_declined", "card_velocity_exceeded"),
    "fraudulent": ("card_declined", "fraudulent"),
}
NETWORK = {
    "Visa": "visa",
    "MasterCard": "mastercard",
    "American Express": "amex",
    "Discover": "discover",
    "Diners Club": "diners",
    "JCB": "jcb",
    "UnionPay": "unionpay",
}


@pytest.fixture(scope="module")
def browser(sim: str) -> stripe.StripeClient:
    """The publishable key, as Stripe.js holds it: the caller that sends card numbers."""
    return stripe.StripeClient(
        SIM_PUBLISHABLE_KEY, base_addresses={"api": sim}, max_network_retries=0
    )


def card_details(row: dict[str, Any]) -> dict[str, object]:
    cvc = "1234" if row["brand"] == "American Express" else "123"
    return {"number": row["number"], "exp_month": 12, "exp_year": NEXT_YEAR, "cvc": cvc}


def charge_with(client: stripe.StripeClient, source: str) -> tuple[str, Any]:
    """('succeeded', charge) or ('declined', the CardError)."""
    try:
        return "succeeded", client.v1.charges.create(
            params={"amount": 2000, "currency": "usd", "source": source}
        )
    except stripe.CardError as error:
        return "declined", error


def pay_with(client: stripe.StripeClient, method: str, sim: str) -> tuple[str, Any]:
    """Confirm a PaymentIntent; a 3D Secure challenge is completed. ('succeeded', intent),
    ('declined', the intent after its decline) or ('requires_action', intent) if unfinished."""
    try:
        intent = client.v1.payment_intents.create(
            params={
                "amount": 2000,
                "currency": "usd",
                "payment_method": method,
                "confirm": True,
                "payment_method_types": ["card"],
            }
        )
    except stripe.CardError as error:
        intent = client.v1.payment_intents.retrieve(error.error.payment_intent["id"])
        return "declined", intent
    if intent.status == "requires_action":
        done = httpx.post(
            f"{sim}/3d_secure/{intent.id}/complete",
            data={"client_secret": intent.client_secret},
            headers={"Accept": "application/json"},
        )
        assert done.status_code == 200, done.text
        intent = client.v1.payment_intents.retrieve(intent.id)
    if intent.status == "succeeded":
        return "succeeded", intent
    assert intent.status == "requires_payment_method", intent.status
    return "declined", intent


def expected_charge(row: dict[str, Any]) -> tuple[str, tuple[str, str] | None]:
    """What the Charges API answers: it cannot run 3D Secure, so a card demanding it is declined."""
    if row["three_d_secure"] == "required":
        return "declined", ("card_declined", "authentication_required")
    if row.get("decline"):
        return "declined", DOCUMENTED[row["decline"]]
    return "succeeded", None


def expected_intent(row: dict[str, Any]) -> tuple[str, tuple[str, str] | None]:
    """What a PaymentIntent ends in once any 3D Secure challenge is completed."""
    if row.get("decline"):
        return "declined", DOCUMENTED[row["decline"]]
    return "succeeded", None


def check_charge(row: dict[str, Any], outcome: str, answer: Any, where: str) -> list[str]:
    wanted, codes = expected_charge(row)
    if outcome != wanted:
        return [f"{where}: {outcome}, documented {wanted}"]
    problems = []
    if outcome == "declined":
        got = (answer.code, answer.error.decline_code)
        if got != codes:
            problems.append(f"{where}: declined {got}, documented {codes}")
        return problems
    card = answer.payment_method_details.card
    if card.brand != NETWORK[row["brand"]]:
        problems.append(f"{where}: brand {card.brand}, documented {row['brand']}")
    if card.funding != row["funding"] or card.country != row["country"]:
        problems.append(f"{where}: {card.funding}/{card.country}, documented {row}")
    if answer.outcome.risk_level != row["risk_level"]:
        problems.append(f"{where}: risk {answer.outcome.risk_level}, documented {row}")
    return problems


def check_intent(row: dict[str, Any], outcome: str, intent: Any, where: str) -> list[str]:
    wanted, codes = expected_intent(row)
    if outcome != wanted:
        return [f"{where}: {outcome} ({intent.status}), documented {wanted}"]
    if outcome == "declined":
        error = intent.last_payment_error
        got = (error.code, error.decline_code)
        if got != codes:
            return [f"{where}: declined {got}, documented {codes}"]
    return []


def walk(each: Callable[[dict[str, Any]], list[str]]) -> list[str]:
    problems: list[str] = []
    for row in CARDS:
        problems += each(row)
    return problems


def first_rows(kind: str) -> dict[str, dict[str, Any]]:
    """Each alias and its row; an alias in two rows (tok_jcb: by brand, by country) is the
    first row's, as the table says."""
    rows: dict[str, dict[str, Any]] = {}
    for row in CARDS:
        for alias in row[kind]:
            rows.setdefault(alias, row)
    return rows


def test_the_table_is_the_docs_whole_table() -> None:
    aliases = [a for row in CARDS for a in row["tok"] + row["pm"]]
    assert len(CARDS) >= 120 and len(aliases) >= 240
    for alias in (
        "tok_visa_chargeDeclined",
        "tok_chargeDeclined",
        "tok_visa_chargeDeclinedVelocityLimitExceeded",
        "tok_radarBlock",
        "tok_riskLevelHighest",
        "tok_createDispute",
        "tok_threeDSecure2Required",
        "tok_pendingRefund",
        "pm_card_visa",
        "pm_card_authenticationRequired",
        "tok_br",
        "pm_card_jp",
    ):
        assert alias in aliases, alias


def test_every_number_tokenizes_and_charges_as_documented(
    client: stripe.StripeClient, browser: stripe.StripeClient
) -> None:
    def each(row: dict[str, Any]) -> list[str]:
        if row["number"] is None:
            return []
        where = f"{row['number']} token"
        try:
            token = browser.v1.tokens.create(params={"card": card_details(row)})
        except stripe.CardError as error:
            if error.code == row.get("tokenization"):
                return []
            return [f"{where}: refused {error.code}"]
        if row.get("tokenization"):
            return [f"{where}: tokenized, documented {row['tokenization']}"]
        problems = []
        if token.card.funding != row["funding"] or token.card.country != row["country"]:
            problems.append(f"{where}: {token.card.funding}/{token.card.country}")
        checks = dict(row.get("checks", {}))
        if token.card.cvc_check != checks.get("cvc_check", "pass"):
            problems.append(f"{where}: cvc_check {token.card.cvc_check}")
        return problems + check_charge(row, *charge_with(client, token.id), where)

    assert not walk(each)


def test_every_tok_alias_charges_as_documented(client: stripe.StripeClient) -> None:
    problems = [
        problem
        for alias, row in first_rows("tok").items()
        for problem in check_charge(row, *charge_with(client, alias), alias)
    ]
    assert not problems


def test_every_pm_card_alias_pays_a_payment_intent_as_documented(
    sim: str, client: stripe.StripeClient
) -> None:
    problems = [
        problem
        for alias, row in first_rows("pm").items()
        for problem in check_intent(row, *pay_with(client, alias, sim), alias)
    ]
    assert not problems


def test_every_number_pays_a_payment_intent_through_a_payment_method(
    sim: str, client: stripe.StripeClient, browser: stripe.StripeClient
) -> None:
    def each(row: dict[str, Any]) -> list[str]:
        if row["number"] is None or row.get("tokenization"):
            return []
        method = browser.v1.payment_methods.create(
            params={"type": "card", "card": card_details(row)}
        )
        if method.card.brand != NETWORK[row["brand"]]:
            return [f"{row['number']}: PaymentMethod brand {method.card.brand}"]
        return check_intent(row, *pay_with(client, method.id, sim), row["number"])

    assert not walk(each)


def test_3ds_cards_ask_for_the_challenge_and_the_others_do_not(
    sim: str, client: stripe.StripeClient
) -> None:
    for row in CARDS:
        for alias in row["pm"][:1]:
            intent = client.v1.payment_intents.create(
                params={"amount": 2000, "currency": "usd", "payment_method": alias}
            )
            try:
                intent = client.v1.payment_intents.confirm(intent.id)
            except stripe.CardError:
                assert row["three_d_secure"] != "required", alias
                continue
            asked = intent.status == "requires_action"
            assert asked == (row["three_d_secure"] == "required"), (alias, intent.status)


def events_of(client: stripe.StripeClient, kind: str) -> list[Any]:
    return list(client.v1.events.list(params={"type": kind, "limit": 100}).data)


def test_dispute_cards_succeed_then_are_disputed(sim: str, client: stripe.StripeClient) -> None:
    examples = json.loads(FIXTURES.read_text())
    expected = {
        "tok_createDispute": ("fraudulent", "needs_response", 1),
        "tok_createDisputeProductNotReceived": ("product_not_received", "needs_response", 1),
        "tok_createDisputeInquiry": ("general", "warning_needs_response", 1),
        "tok_createMultipleDisputes": ("fraudulent", "needs_response", 2),
    }
    charges = {alias: charge_with(client, alias) for alias in expected}
    for alias, (outcome, charge) in charges.items():
        assert outcome == "succeeded" and charge.disputed is False, alias
    for alias, (reason, status, count) in expected.items():
        charge_id = charges[alias][1].id

        def disputes(charge_id: str = charge_id, count: int = count) -> list[Any]:
            found = [
                e.data.object
                for e in events_of(client, "charge.dispute.created")
                if e.data.object.charge == charge_id
            ]
            return found if len(found) >= count else []

        found = wait_until(disputes, f"the dispute of {alias}")
        assert len(found) == count
        dispute = client.v1.disputes.retrieve(found[0].id)
        assert (dispute.reason, dispute.status, dispute.amount) == (reason, status, 2000)
        assert client.v1.charges.retrieve(charge_id).disputed is True
        missing = sorted(set(examples["dispute"]) - set(dispute.to_dict()))
        assert not missing, missing
    listed = client.v1.disputes.list(params={"limit": 100}).data
    assert len(listed) >= 5
    # An early fraud warning is not a dispute.
    _, warned = charge_with(client, "tok_createIssuerFraudRecord")
    warning = wait_until(
        lambda: [
            e.data.object
            for e in events_of(client, "radar.early_fraud_warning.created")
            if e.data.object.charge == warned.id
        ],
        "the early fraud warning",
    )[0]
    assert warning.object == "radar.early_fraud_warning" and warning.actionable is True
    missing = sorted(set(examples["radar.early_fraud_warning"]) - set(warning.to_dict()))
    assert not missing, missing
    assert client.v1.charges.retrieve(warned.id).disputed is False


def test_async_refund_cards_settle_later(client: stripe.StripeClient) -> None:
    _, pending = charge_with(client, "tok_pendingRefund")
    refund = client.v1.refunds.create(params={"charge": pending.id})
    assert refund.status == "pending"
    settled = wait_until(
        lambda: client.v1.refunds.retrieve(refund.id).status == "succeeded", "pending -> succeeded"
    )
    assert settled
    _, failing = charge_with(client, "tok_refundFail")
    refund = client.v1.refunds.create(params={"charge": failing.id})
    assert refund.status == "succeeded"
    assert client.v1.charges.retrieve(failing.id).amount_refunded == 2000
    wait_until(lambda: client.v1.refunds.retrieve(refund.id).status == "failed", "the failure")
    failed = client.v1.refunds.retrieve(refund.id)
    assert failed.failure_reason == "unknown"
    assert client.v1.charges.retrieve(failing.id).amount_refunded == 0
    kinds = {e.data.object.id for e in events_of(client, "refund.failed")}
    assert refund.id in kinds
    updated = [
        e for e in events_of(client, "charge.refund.updated") if e.data.object.id == refund.id
    ]
    assert updated and updated[0].data.object.status == "failed"


def test_risk_levels_and_checks_show_on_the_charge(client: stripe.StripeClient) -> None:
    _, elevated = charge_with(client, "tok_riskLevelElevated")
    assert (elevated.outcome.risk_level, elevated.outcome.type) == ("elevated", "authorized")
    outcome, blocked = charge_with(client, "tok_riskLevelHighest")
    assert outcome == "declined" and blocked.error.decline_code == "fraudulent"
    stored = client.v1.charges.retrieve(blocked.error.charge)
    assert (stored.outcome.type, stored.outcome.risk_level) == ("blocked", "highest")
    _, cvc = charge_with(client, "tok_cvcCheckFail")
    assert cvc.payment_method_details.card.checks.cvc_check == "fail"
    _, unchecked = charge_with(client, "tok_avsUnchecked")
    checks = unchecked.payment_method_details.card.checks
    assert checks.address_line1_check == checks.address_postal_code_check == "unavailable"

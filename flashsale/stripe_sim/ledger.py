"""The simulator's in-memory ledger: compact token/charge/refund records, rendered to Stripe JSON.

Records are __slots__ objects that share their card profile and decline; Stripe's verbose JSON is
built only when a response needs it, so a stored charge costs a few hundred bytes.
"""

from __future__ import annotations

import itertools
import secrets
import string
from typing import TYPE_CHECKING, Generic, TypeVar

from flashsale.stripe_sim.cards import CardProfile, Decline

if TYPE_CHECKING:
    from flashsale.stripe_sim.intent_records import PaymentIntent, PaymentMethod

Record = TypeVar("Record")

ALPHABET = string.digits + string.ascii_letters
BRAND_NETWORK = {
    "Visa": "visa",
    "MasterCard": "mastercard",
    "American Express": "amex",
    "Discover": "discover",
    "Diners Club": "diners",
    "JCB": "jcb",
    "UnionPay": "unionpay",
}
STATEMENT_DESCRIPTOR = "FLASHSALE SIM"
# A risk score in each of Radar's bands (normal < 65 <= elevated < 75 <= highest).
RISK_SCORES = {"normal": 12, "elevated": 67, "highest": 95}


class IdMaker:
    """Stripe-looking ids (24 characters after the prefix): random per process, then a counter."""

    def __init__(self) -> None:
        self.process_part = "".join(secrets.choice(ALPHABET) for _ in range(10))
        self.counter = itertools.count(1)

    def __call__(self, prefix: str) -> str:
        n = next(self.counter)
        digits = []
        for _ in range(14):
            n, rem = divmod(n, 62)
            digits.append(ALPHABET[rem])
        return prefix + self.process_part + "".join(reversed(digits))


new_id = IdMaker()


class Token:
    """A card token; it also stands for the card itself (card_<same suffix>)."""

    __slots__ = (
        "id",
        "profile",
        "last4",
        "exp_month",
        "exp_year",
        "fingerprint",
        "cvc_check",
        "created",
        "used",
        "client_ip",
        "extra",
    )

    def __init__(
        self,
        id: str,
        profile: CardProfile,
        last4: str,
        exp_month: int,
        exp_year: int,
        fingerprint: str,
        cvc_check: str | None,
        created: int,
        client_ip: str | None,
        extra: dict[str, str] | None = None,
    ) -> None:
        self.id = id
        self.profile = profile
        self.last4 = last4
        self.exp_month = exp_month
        self.exp_year = exp_year
        self.fingerprint = fingerprint
        self.cvc_check = cvc_check
        self.created = created
        self.used = False
        self.client_ip = client_ip
        self.extra = extra

    @property
    def card_id(self) -> str:
        return "card_" + self.id[4:]


class Charge:
    __slots__ = (
        "payment_intent",  # the PaymentIntent's id, when one made this charge
        "payment_method",  # the PaymentMethod's id, when one paid it
        "id",
        "amount",
        "currency",
        "created",
        "card",
        "description",
        "metadata",
        "decline",
        "captured",
        "amount_refunded",
        "refunds",
        "extra",
        "disputed",
    )

    def __init__(
        self,
        id: str,
        amount: int,
        currency: str,
        created: int,
        card: Token,
        description: str | None,
        metadata: dict[str, str] | None,
        decline: Decline | None,
        captured: bool,
        extra: dict[str, str] | None = None,
        payment_intent: str | None = None,
        payment_method: str | None = None,
    ) -> None:
        self.payment_intent = payment_intent
        self.payment_method = payment_method
        self.id = id
        self.amount = amount
        self.currency = currency
        self.created = created
        self.card = card
        self.description = description
        self.metadata = metadata
        self.decline = decline
        self.captured = captured
        self.amount_refunded = 0
        self.refunds: list[Refund] | None = None
        self.extra = extra
        self.disputed = False

    @property
    def status(self) -> str:
        return "failed" if self.decline else "succeeded"

    @property
    def outcome_name(self) -> str:
        return self.decline.decline_code if self.decline else "succeeded"


class Refund:
    __slots__ = ("id", "charge", "amount", "created", "reason", "metadata", "status")

    def __init__(
        self,
        id: str,
        charge: Charge,
        amount: int,
        created: int,
        reason: str | None,
        metadata: dict[str, str] | None,
    ) -> None:
        self.id = id
        self.charge = charge
        self.amount = amount
        self.created = created
        self.reason = reason
        self.metadata = metadata
        # Instant, unless the card refunds asynchronously (tok_pendingRefund): see follow_ups.
        self.status = (
            "pending" if charge.card.profile.refund == "pending_then_succeeded" else ("succeeded")
        )


class Timeline(Generic[Record]):
    """Records of one kind in creation order, by id, for constant-time paging at any size."""

    def __init__(self) -> None:
        self.records: list[Record] = []  # oldest first; lists are served newest first
        self.index: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.records)

    def __contains__(self, ident: object) -> bool:
        return ident in self.index

    def add(self, ident: str, record: Record) -> None:
        self.index[ident] = len(self.records)
        self.records.append(record)

    def get(self, ident: str) -> Record | None:
        position = self.index.get(ident)
        return None if position is None else self.records[position]

    def page(
        self,
        limit: int,
        starting_after: str | None,
        ending_before: str | None,
        lo: int = 0,
        hi: int | None = None,
    ) -> tuple[list[Record], bool]:
        """One page, newest first, of positions [lo, hi), like Stripe's list endpoints."""
        records = self.records
        hi = len(records) if hi is None else hi
        if starting_after is not None:
            end = min(hi, self.index[starting_after])
            start = max(lo, end - limit)
            return records[start:end][::-1], start > lo
        if ending_before is not None:
            start = max(lo, self.index[ending_before] + 1)
            end = min(hi, start + limit)
            return records[start:end][::-1], end < hi
        start = max(lo, hi - limit)
        return records[start:hi][::-1], start > lo


class Ledger:
    """Every token, charge, refund, PaymentMethod and PaymentIntent of the simulated account."""

    def __init__(self) -> None:
        self.tokens: dict[str, Token] = {}
        self.charges: Timeline[Charge] = Timeline()
        self.refunds: Timeline[Refund] = Timeline()
        self.payment_methods: dict[str, PaymentMethod] = {}
        self.payment_intents: Timeline[PaymentIntent] = Timeline()

    def add_charge(self, charge: Charge) -> None:
        self.charges.add(charge.id, charge)

    def charge(self, charge_id: str) -> Charge | None:
        return self.charges.get(charge_id)


def card_checks(token: Token) -> dict[str, str | None]:
    """The CVC and address checks of a payment on this card, as its test card documents them."""
    extra = token.extra or {}
    profile = token.profile
    return {
        "address_line1_check": profile.check(
            "address_line1_check", bool(extra.get("address_line1"))
        ),
        "address_postal_code_check": profile.check(
            "address_zip_check", bool(extra.get("address_zip"))
        ),
        "cvc_check": token.cvc_check,
    }


def render_card(token: Token) -> dict[str, object]:
    extra = token.extra or {}
    profile = token.profile
    return {
        "id": token.card_id,
        "object": "card",
        "address_city": extra.get("address_city"),
        "address_country": extra.get("address_country"),
        "address_line1": extra.get("address_line1"),
        "address_line1_check": profile.check(
            "address_line1_check", bool(extra.get("address_line1"))
        ),
        "address_line2": extra.get("address_line2"),
        "address_state": extra.get("address_state"),
        "address_zip": extra.get("address_zip"),
        "address_zip_check": profile.check("address_zip_check", bool(extra.get("address_zip"))),
        "brand": profile.brand,
        "country": profile.country,
        "cvc_check": token.cvc_check,
        "dynamic_last4": None,
        "exp_month": token.exp_month,
        "exp_year": token.exp_year,
        "fingerprint": token.fingerprint,
        "funding": profile.funding,
        "last4": token.last4,
        "metadata": {},
        "name": extra.get("name"),
        "networks": {"preferred": None},
        "regulated_status": "unregulated",
        "tokenization_method": None,
        "wallet": None,
    }


def render_token(token: Token) -> dict[str, object]:
    return {
        "id": token.id,
        "object": "token",
        "card": render_card(token),
        "client_ip": token.client_ip,
        "created": token.created,
        "livemode": False,
        "type": "card",
        "used": token.used,
    }


def render_refund(refund: Refund) -> dict[str, object]:
    rendered: dict[str, object] = {
        "id": refund.id,
        "object": "refund",
        "amount": refund.amount,
        "balance_transaction": "txn_" + refund.id[3:],
        "charge": refund.charge.id,
        "created": refund.created,
        "currency": refund.charge.currency,
        "customer": None,
        "customer_account": None,
        "destination_details": {
            "card": {
                "reference_status": "pending",
                "reference_type": "acquirer_reference_number",
                "type": "refund",
            },
            "type": "card",
        },
        "metadata": refund.metadata or {},
        "payment_intent": refund.charge.payment_intent,
        "payment_method": refund.charge.payment_method or refund.charge.card.card_id,
        "reason": refund.reason,
        "receipt_number": None,
        "source_transfer_reversal": None,
        "status": refund.status,
        "transfer_reversal": None,
    }
    if refund.status == "failed":
        rendered["failure_reason"] = "unknown"  # the docs name none for tok_refundFail
    return rendered


def render_charge(charge: Charge) -> dict[str, object]:
    card = charge.card
    profile = card.profile
    decline = charge.decline
    succeeded = decline is None
    extra = charge.extra or {}
    refunds = charge.refunds or []
    if decline is None:
        outcome: dict[str, object] = {
            "network_status": "approved_by_network",
            "reason": None,
            "risk_level": profile.risk_level,
            "risk_score": RISK_SCORES[profile.risk_level],
            "seller_message": "Payment complete.",
            "type": "authorized",
        }
    else:
        outcome = decline.outcome()
    network = BRAND_NETWORK.get(profile.brand, "unknown")
    checks = card_checks(card)
    return {
        "id": charge.id,
        "object": "charge",
        "amount": charge.amount,
        "amount_captured": charge.amount if succeeded and charge.captured else 0,
        "amount_refunded": charge.amount_refunded,
        "application": None,
        "application_fee": None,
        "application_fee_amount": None,
        "balance_transaction": "txn_" + charge.id[3:] if succeeded and charge.captured else None,
        "billing_details": {
            "address": {
                "city": None,
                "country": None,
                "line1": None,
                "line2": None,
                "postal_code": (card.extra or {}).get("address_zip"),
                "state": None,
            },
            "email": None,
            "name": (card.extra or {}).get("name"),
            "phone": None,
        },
        "calculated_statement_descriptor": STATEMENT_DESCRIPTOR,
        "captured": succeeded and charge.captured,
        "created": charge.created,
        "currency": charge.currency,
        "customer": None,
        "description": charge.description,
        "disputed": charge.disputed,
        "failure_balance_transaction": None,
        "failure_code": None if decline is None else decline.code,
        "failure_message": None if decline is None else decline.message,
        "fraud_details": {},
        "livemode": False,
        "metadata": charge.metadata or {},
        "on_behalf_of": None,
        "outcome": outcome,
        "paid": succeeded,
        "payment_intent": charge.payment_intent,
        "payment_method": charge.payment_method or card.card_id,
        "payment_method_details": {
            "card": {
                "amount_authorized": charge.amount if succeeded else None,
                "brand": network,
                "checks": checks,
                "country": profile.country,
                "exp_month": card.exp_month,
                "exp_year": card.exp_year,
                "fingerprint": card.fingerprint,
                "funding": profile.funding,
                "installments": None,
                "last4": card.last4,
                "mandate": None,
                "network": network,
                "three_d_secure": three_d_secure(extra.get("three_d_secure")),
                "wallet": None,
            },
            "type": "card",
        },
        "receipt_email": extra.get("receipt_email"),
        "receipt_number": None,
        "receipt_url": None,
        "refunded": bool(charge.amount_refunded) and charge.amount_refunded >= charge.amount,
        "refunds": {
            "object": "list",
            "data": [render_refund(refund) for refund in refunds],
            "has_more": False,
            "total_count": len(refunds),
            "url": f"/v1/charges/{charge.id}/refunds",
        },
        "review": None,
        "shipping": None,
        "source": None if charge.payment_method else render_card(card),
        "source_transfer": None,
        "statement_descriptor": extra.get("statement_descriptor"),
        "statement_descriptor_suffix": extra.get("statement_descriptor_suffix"),
        "status": charge.status,
        "transfer_data": None,
        "transfer_group": None,
    }


def three_d_secure(result: str | None) -> dict[str, object] | None:
    """The charge's 3D Secure details once a challenge ran (authenticated or not)."""
    if result is None:
        return None
    return {
        "authentication_flow": "challenge",
        "electronic_commerce_indicator": "05" if result == "authenticated" else "07",
        "exemption_indicator": None,
        "result": result,
        "result_reason": None,
        "transaction_id": None,
        "version": "2.2.0",
    }

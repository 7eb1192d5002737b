"""What happens to a payment after Stripe answered it: disputes, early fraud warnings and
asynchronous refunds, as the test cards document them (docs.stripe.com/testing#disputes,
#refunds). They come a moment later, as events, the way a real account receives them.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from flashsale.stripe_sim.api_errors import no_such
from flashsale.stripe_sim.auth import Caller
from flashsale.stripe_sim.ledger import BRAND_NETWORK, Charge, Ledger, Refund, Timeline, new_id
from flashsale.stripe_sim.listing import LIST_PARAMS, list_body, page_of, read_window
from flashsale.stripe_sim.params import Params, refuse_unknown

if TYPE_CHECKING:
    from flashsale.stripe_sim.endpoints import Result
    from flashsale.stripe_sim.events import Event, Events

# How long after the payment (or the refund) its follow-up comes. Stripe says "some time
# later"; a second keeps tests and rehearsals short while still after the answer.
FOLLOW_UP_AFTER_S = 1.0
EVIDENCE_DUE_S = 7 * 86400
# The test card's dispute kind -> (reason, status, case type, network reason code, how many).
DISPUTE_KINDS = {
    "fraudulent": ("fraudulent", "needs_response", "chargeback", "10.4", 1),
    "product_not_received": ("product_not_received", "needs_response", "chargeback", "13.1", 1),
    "inquiry": ("general", "warning_needs_response", "inquiry", "10.4", 1),
    "multiple": ("fraudulent", "needs_response", "chargeback", "10.4", 2),
    "ce3_eligible": ("fraudulent", "needs_response", "chargeback", "10.4", 1),
    "compliance": ("noncompliant", "needs_response", "compliance", "14.1", 1),
}
EVIDENCE_FIELDS = [
    "access_activity_log",
    "billing_address",
    "cancellation_policy",
    "cancellation_policy_disclosure",
    "cancellation_rebuttal",
    "customer_communication",
    "customer_email_address",
    "customer_name",
    "customer_purchase_ip",
    "customer_signature",
    "duplicate_charge_documentation",
    "duplicate_charge_explanation",
    "duplicate_charge_id",
    "product_description",
    "receipt",
    "refund_policy",
    "refund_policy_disclosure",
    "refund_refusal_explanation",
    "service_date",
    "service_documentation",
    "shipping_address",
    "shipping_carrier",
    "shipping_date",
    "shipping_documentation",
    "shipping_tracking_number",
    "uncategorized_file",
    "uncategorized_text",
]


class Dispute:
    __slots__ = ("id", "charge", "kind", "created")

    def __init__(self, id: str, charge: Charge, kind: str, created: int) -> None:
        self.id = id
        self.charge = charge
        self.kind = kind
        self.created = created

    def render(self) -> dict[str, object]:
        return render_dispute(self)


class FraudWarning:
    """A Radar early fraud warning: not a dispute, a sign one may follow."""

    __slots__ = ("id", "charge", "created")

    def __init__(self, id: str, charge: Charge, created: int) -> None:
        self.id = id
        self.charge = charge
        self.created = created

    def render(self) -> dict[str, object]:
        return render_fraud_warning(self)


def render_dispute(dispute: Dispute) -> dict[str, object]:
    reason, status, case_type, code, _ = DISPUTE_KINDS[dispute.kind]
    charge = dispute.charge
    network = BRAND_NETWORK.get(charge.card.profile.brand, "unknown")
    ce3 = ["visa_compelling_evidence_3"] if dispute.kind == "ce3_eligible" else []
    return {
        "id": dispute.id,
        "object": "dispute",
        "amount": charge.amount,
        "balance_transactions": [],
        "charge": charge.id,
        "created": dispute.created,
        "currency": charge.currency,
        "enhanced_eligibility_types": ce3,
        "evidence": {**dict.fromkeys(EVIDENCE_FIELDS), "enhanced_evidence": {}},
        "evidence_details": {
            "due_by": dispute.created + EVIDENCE_DUE_S,
            "enhanced_eligibility": {},
            "has_evidence": False,
            "past_due": False,
            "submission_count": 0,
        },
        "is_charge_refundable": charge.amount_refunded < charge.amount,
        "livemode": False,
        "metadata": {},
        "payment_intent": charge.payment_intent,
        "payment_method_details": {
            "card": {
                "brand": network,
                "case_type": case_type,
                "network_reason_code": code,
            },
            "type": "card",
        },
        "reason": reason,
        "status": status,
    }


def render_fraud_warning(warning: FraudWarning) -> dict[str, object]:
    return {
        "id": warning.id,
        "object": "radar.early_fraud_warning",
        "actionable": True,
        "charge": warning.charge.id,
        "created": warning.created,
        "fraud_type": "misc",
        "livemode": False,
        "payment_intent": warning.charge.payment_intent,
    }


class FollowUps:
    """Listens to the account's events and plays what each test card does next."""

    def __init__(self, ledger: Ledger, events: Events) -> None:
        self.ledger = ledger
        self.events = events
        self.disputes: Timeline[Dispute] = Timeline()
        self.pending = 0  # follow-ups scheduled, not yet played
        events.listeners.append(self.on_event)

    def on_event(self, event: Event) -> None:
        if event.type == "charge.succeeded":
            charge = self.ledger.charge(event.snapshot.id)
            kind = charge.card.profile.dispute if charge is not None else None
            if charge is not None and kind is not None:
                self.later(self.dispute_charge, charge, kind)
        elif event.type == "refund.created":
            refund = self.ledger.refunds.get(event.snapshot.id)
            if refund is not None and refund.charge.card.profile.refund is not None:
                self.later(self.settle_refund, refund)

    def later(self, play: object, *args: object) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (the ledger driven directly): nothing follows
            return
        self.pending += 1

        def run() -> None:
            self.pending -= 1
            play(*args)  # type: ignore[operator]

        loop.call_later(FOLLOW_UP_AFTER_S, run)

    def dispute_charge(self, charge: Charge, kind: str) -> None:
        if kind == "early_fraud_warning":
            warning = FraudWarning(new_id("issfr_"), charge, int(time.time()))
            self.events.publish("radar.early_fraud_warning.created", warning)
            return
        for _ in range(DISPUTE_KINDS[kind][4]):
            dispute = Dispute(new_id("dp_"), charge, kind, int(time.time()))
            self.disputes.add(dispute.id, dispute)
            charge.disputed = True
            self.events.publish("charge.dispute.created", dispute)

    def settle_refund(self, refund: Refund) -> None:
        """pending -> succeeded (tok_pendingRefund), or succeeded -> failed (tok_refundFail)."""
        if refund.status == "pending":
            refund.status = "succeeded"
            self.events.publish("refund.updated", refund)
        elif refund.status == "succeeded":
            refund.status = "failed"
            refund.charge.amount_refunded -= refund.amount  # the money went back to the merchant
            self.events.publish("refund.failed", refund)
            self.events.publish("refund.updated", refund)
        self.events.publish("charge.refund.updated", refund)

    # --- the API ----------------------------------------------------------------------------

    def get_dispute(self, params: Params, ident: str | None, caller: Caller) -> Result:
        refuse_unknown(params, {"expand"})
        assert ident is not None
        dispute = self.disputes.get(ident)
        if dispute is None:
            raise no_such("dispute", ident, "id")
        return 200, dispute

    def list_disputes(self, params: Params, ident: str | None, caller: Caller) -> Result:
        refuse_unknown(params, LIST_PARAMS)
        window = read_window(params, self.disputes, "dispute")
        page, has_more = page_of(self.disputes, window)
        return 200, list_body(page, has_more, "/v1/disputes", render_dispute)

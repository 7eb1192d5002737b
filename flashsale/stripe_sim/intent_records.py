"""PaymentMethod and PaymentIntent records, rendered to Stripe's JSON only when answered.

Like the charge records, they are __slots__ objects that share the card's profile, so a stored
PaymentIntent costs a few hundred bytes however verbose its JSON is.
"""

from __future__ import annotations

import copy

from flashsale.stripe_sim.ledger import BRAND_NETWORK, Charge, Token, card_checks, render_charge

# PaymentIntent statuses, as the API names them.
REQUIRES_PAYMENT_METHOD = "requires_payment_method"
REQUIRES_CONFIRMATION = "requires_confirmation"
REQUIRES_ACTION = "requires_action"
PROCESSING = "processing"
REQUIRES_CAPTURE = "requires_capture"
SUCCEEDED = "succeeded"
CANCELED = "canceled"
STATUSES = (
    REQUIRES_PAYMENT_METHOD,
    REQUIRES_CONFIRMATION,
    REQUIRES_ACTION,
    PROCESSING,
    REQUIRES_CAPTURE,
    SUCCEEDED,
    CANCELED,
)
# A PaymentIntent can be cancelled only while it has not moved money.
CANCELABLE = (
    REQUIRES_PAYMENT_METHOD,
    REQUIRES_CONFIRMATION,
    REQUIRES_ACTION,
    PROCESSING,
    REQUIRES_CAPTURE,
)
CONFIRMABLE = (REQUIRES_PAYMENT_METHOD, REQUIRES_CONFIRMATION)


class PaymentMethod:
    """A card PaymentMethod; its card details live in a Token record (one card, one shape)."""

    __slots__ = ("id", "card", "created", "metadata", "billing_name")

    def __init__(
        self,
        id: str,
        card: Token,
        created: int,
        metadata: dict[str, str] | None,
        billing_name: str | None = None,
    ) -> None:
        self.id = id
        self.card = card
        self.created = created
        self.metadata = metadata
        self.billing_name = billing_name


class PaymentIntent:
    __slots__ = (
        "id",
        "secret",
        "amount",
        "currency",
        "created",
        "status",
        "capture_method",
        "payment_method",
        "description",
        "metadata",
        "latest_charge",
        "last_payment_error",
        "next_action",
        "return_url",
        "canceled_at",
        "cancellation_reason",
        "amount_received",
        "extra",
    )

    def __init__(
        self,
        id: str,
        secret: str,
        amount: int,
        currency: str,
        created: int,
        capture_method: str,
        description: str | None,
        metadata: dict[str, str] | None,
        extra: dict[str, str] | None,
    ) -> None:
        self.id = id
        self.secret = secret
        self.amount = amount
        self.currency = currency
        self.created = created
        self.status = REQUIRES_PAYMENT_METHOD
        self.capture_method = capture_method
        self.payment_method: PaymentMethod | None = None
        self.description = description
        self.metadata = metadata
        self.latest_charge: Charge | None = None
        self.last_payment_error: dict[str, object] | None = None
        self.next_action: dict[str, object] | None = None
        self.return_url: str | None = None
        self.canceled_at: int | None = None
        self.cancellation_reason: str | None = None
        self.amount_received = 0
        self.extra = extra

    @property
    def client_secret(self) -> str:
        return f"{self.id}_secret_{self.secret}"

    def snapshot(self) -> PaymentIntent:
        """A shallow copy as it is now: an idempotent replay answers what the first call saw."""
        return copy.copy(self)


def render_payment_method(method: PaymentMethod) -> dict[str, object]:
    card = method.card
    profile = card.profile
    network = BRAND_NETWORK.get(profile.brand, "unknown")
    extra = card.extra or {}
    return {
        "id": method.id,
        "object": "payment_method",
        "allow_redisplay": "unspecified",
        "billing_details": {
            "address": {
                "city": None,
                "country": None,
                "line1": None,
                "line2": None,
                "postal_code": extra.get("address_zip"),
                "state": None,
            },
            "email": None,
            "name": method.billing_name or extra.get("name"),
            "phone": None,
            "tax_id": None,
        },
        "card": {
            "brand": network,
            "checks": card_checks(card),
            "country": profile.country,
            "display_brand": network,
            "exp_month": card.exp_month,
            "exp_year": card.exp_year,
            "fingerprint": card.fingerprint,
            "funding": profile.funding,
            "generated_from": None,
            "last4": card.last4,
            "networks": {"available": [network], "preferred": None},
            "regulated_status": "unregulated",
            "three_d_secure_usage": {"supported": profile.three_d_secure != "not_supported"},
            "wallet": None,
        },
        "created": method.created,
        "customer": None,
        "customer_account": None,
        "livemode": False,
        "metadata": method.metadata or {},
        "type": "card",
    }


def render_payment_intent(
    intent: PaymentIntent, expand: frozenset[str] = frozenset()
) -> dict[str, object]:
    """The PaymentIntent's JSON; `latest_charge` and `payment_method` are ids unless expanded."""
    charge = intent.latest_charge
    method = intent.payment_method
    extra = intent.extra or {}
    return {
        "id": intent.id,
        "object": "payment_intent",
        "amount": intent.amount,
        "amount_capturable": intent.amount if intent.status == REQUIRES_CAPTURE else 0,
        "amount_details": {"tip": {}},
        "amount_received": intent.amount_received,
        "application": None,
        "application_fee_amount": None,
        "automatic_payment_methods": None,
        "canceled_at": intent.canceled_at,
        "cancellation_reason": intent.cancellation_reason,
        "capture_method": intent.capture_method,
        "client_secret": intent.client_secret,
        "confirmation_method": "automatic",
        "created": intent.created,
        "currency": intent.currency,
        "customer": None,
        "customer_account": None,
        "description": intent.description,
        "excluded_payment_method_types": None,
        "last_payment_error": intent.last_payment_error,
        "latest_charge": (
            None
            if charge is None
            else render_charge(charge)
            if "latest_charge" in expand
            else charge.id
        ),
        "livemode": False,
        "managed_payments": {"enabled": False},
        "metadata": intent.metadata or {},
        "next_action": intent.next_action,
        "on_behalf_of": None,
        "payment_method": (
            None
            if method is None
            else render_payment_method(method)
            if "payment_method" in expand
            else method.id
        ),
        "payment_method_configuration_details": None,
        "payment_method_options": {
            "card": {
                "installments": None,
                "mandate_options": None,
                "network": None,
                "request_three_d_secure": "automatic",
            }
        },
        "payment_method_types": ["card"],
        "processing": None,
        "receipt_email": extra.get("receipt_email"),
        "review": None,
        "setup_future_usage": None,
        "shipping": None,
        "source": None,
        "statement_descriptor": extra.get("statement_descriptor"),
        "statement_descriptor_suffix": extra.get("statement_descriptor_suffix"),
        "status": intent.status,
        "transfer_data": None,
        "transfer_group": None,
    }

"""Stripe's ledger of charges and PaymentIntents, read back: what reconcile compares and what
stock is rebuilt from.

Stripe is the record of what was sold. When Redis has lost a sale, the charges (their
metadata names the order, SKU and quantity) are the only account of the units already gone.
Both lists can be scoped to a sale by their creation time (`created[gte]`), for an account
that other sales or integrations share.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import stripe

from flashsale.errors import PaymentError, StripeAuthError

PAGE_SIZE = 100


@dataclass(frozen=True)
class ChargeRecord:
    """The part of a Stripe charge that reconciliation and the stock rebuild need."""

    charge_id: str
    order_id: str | None
    status: str
    amount: int
    refunded: bool
    sku: str | None = None
    quantity: int = 0
    payment_intent: str | None = None  # the PaymentIntent that made it, if one did

    @classmethod
    def from_stripe(cls, charge: Any) -> ChargeRecord:
        if hasattr(charge, "to_dict"):
            charge = charge.to_dict()
        metadata = charge.get("metadata") or {}
        return cls(
            charge_id=charge["id"],
            order_id=metadata.get("order_id") or None,
            status=charge.get("status", ""),
            amount=int(charge.get("amount", 0)),
            refunded=bool(charge.get("refunded", False)),
            sku=metadata.get("sku") or None,
            quantity=_whole(metadata.get("quantity")),
            payment_intent=_id_of(charge.get("payment_intent")),
        )

    def sold(self, sku: str) -> int:
        """Units of sku this charge took for good (succeeded, not refunded)."""
        if self.sku != sku or self.status != "succeeded" or self.refunded:
            return 0
        return self.quantity


# A PaymentIntent in one of these has not ended: a customer may still authenticate it
# (requires_action, requires_confirmation) or Stripe may still settle it (processing).
OPEN_INTENT_STATUSES = frozenset({"requires_action", "requires_confirmation", "processing"})


@dataclass(frozen=True)
class IntentRecord:
    """The part of a Stripe PaymentIntent that reconciliation needs."""

    intent_id: str
    order_id: str | None
    status: str

    @property
    def open(self) -> bool:
        return self.status in OPEN_INTENT_STATUSES

    @classmethod
    def from_stripe(cls, intent: Any) -> IntentRecord:
        if hasattr(intent, "to_dict"):
            intent = intent.to_dict()
        metadata = intent.get("metadata") or {}
        return cls(
            intent_id=intent["id"],
            order_id=metadata.get("order_id") or None,
            status=intent.get("status", ""),
        )


def _id_of(value: object) -> str | None:
    """An id field that may come expanded (an object) or as the id itself."""
    if isinstance(value, dict):
        return str(value["id"])
    return value if isinstance(value, str) else None


def _whole(value: object) -> int:
    try:
        return max(0, int(str(value)))
    except ValueError:
        return 0


def iter_charges(client: stripe.StripeClient, since: int | None = None) -> Iterator[ChargeRecord]:
    """Every charge (created at or after `since`, a Unix time, when given)."""
    for charge in _pages(client.v1.charges.list, "charges", since):
        yield ChargeRecord.from_stripe(charge)


def iter_payment_intents(
    client: stripe.StripeClient, since: int | None = None
) -> Iterator[IntentRecord]:
    """Every PaymentIntent (created at or after `since`, a Unix time, when given)."""
    for intent in _pages(client.v1.payment_intents.list, "PaymentIntents", since):
        yield IntentRecord.from_stripe(intent)


def _pages(list_page: Callable[..., Any], what: str, since: int | None) -> Iterator[Any]:
    """Page through a Stripe list with starting_after, as real Stripe and the simulator serve."""
    after: str | None = None
    while True:
        params: dict[str, Any] = {"limit": PAGE_SIZE}
        if since is not None:
            params["created"] = {"gte": since}
        if after:
            params["starting_after"] = after
        try:
            page = list_page(params=params)
        except stripe.AuthenticationError as error:
            raise StripeAuthError(f"Stripe refused the secret key: {error.user_message}") from error
        except stripe.StripeError as error:
            raise PaymentError(f"listing {what} at Stripe failed: {error}") from error
        yield from page.data
        if not page.has_more or not page.data:
            return
        after = page.data[-1]["id"]


@dataclass(frozen=True)
class LedgerSales:
    units: int
    charges: int


def sales_of(charges: Iterable[ChargeRecord], sku: str) -> LedgerSales:
    """Units of sku Stripe's ledger says were sold, and by how many charges."""
    units = count = 0
    for charge in charges:
        if sold := charge.sold(sku):
            units += sold
            count += 1
    return LedgerSales(units=units, charges=count)

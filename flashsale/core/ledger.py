"""Stripe's ledger of charges, read back: what reconcile compares and what stock is rebuilt from.

Stripe is the record of what was sold. When Redis has lost a sale, the charges (their
metadata names the order, SKU and quantity) are the only account of the units already gone.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
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
        )

    def sold(self, sku: str) -> int:
        """Units of sku this charge took for good (succeeded, not refunded)."""
        if self.sku != sku or self.status != "succeeded" or self.refunded:
            return 0
        return self.quantity


def _whole(value: object) -> int:
    try:
        return max(0, int(str(value)))
    except ValueError:
        return 0


def iter_charges(client: stripe.StripeClient) -> Iterator[ChargeRecord]:
    """Page through GET /v1/charges with starting_after, as real Stripe and the simulator serve."""
    after: str | None = None
    while True:
        params: dict[str, Any] = {"limit": PAGE_SIZE}
        if after:
            params["starting_after"] = after
        try:
            page = client.v1.charges.list(params=params)  # type: ignore[arg-type]
        except stripe.AuthenticationError as error:
            raise StripeAuthError(f"Stripe refused the secret key: {error.user_message}") from error
        except stripe.StripeError as error:
            raise PaymentError(f"listing charges at Stripe failed: {error}") from error
        for charge in page.data:
            yield ChargeRecord.from_stripe(charge)
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

"""Reconcile the orders in Redis against the charges and PaymentIntents at Stripe, and name
every discrepancy."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from redis import Redis

from flashsale.core import inventory, ledger, orders, payments, waiting_room
from flashsale.core.ledger import ChargeRecord, IntentRecord
from flashsale.settings import Settings


@dataclass
class Reconciliation:
    """What the ledger and the order store agree and disagree on; ok() when nothing is off."""

    sku: str
    orders: int = 0
    charges: int = 0
    orders_by_state: dict[str, int] = field(default_factory=dict)
    charges_by_status: dict[str, int] = field(default_factory=dict)
    payment_intents: int = 0  # of this sale's orders (metadata[order_id])
    payment_intents_by_status: dict[str, int] = field(default_factory=dict)
    # Only Stripe's created[gte] window was read (a Unix time), when the sale was scoped.
    since: int | None = None
    stock_initial: int | None = None
    stock_left: int = 0
    units_sold: int = 0
    units_reserved: int = 0
    # Units the waiting room holds for admitted customers who have no order with Stripe.
    units_held: int = 0
    # What the waiting room did (core.waiting_room.counts), when the sale ran one.
    room: dict[str, int] = field(default_factory=dict)
    # Succeeded charges of this sale that no order explains (Redis lost them): sold all the
    # same, so they count against the stock.
    units_charged_without_order: int = 0
    # Discrepancies: each a list of ids (or id pairs) so the report says exactly which.
    orders_without_charge: list[str] = field(default_factory=list)
    charges_without_order: list[str] = field(default_factory=list)
    orders_charged_twice: dict[str, list[str]] = field(default_factory=dict)
    succeeded_order_charge_not_succeeded: list[str] = field(default_factory=list)
    charge_succeeded_order_not_succeeded: list[str] = field(default_factory=list)
    amount_mismatches: list[str] = field(default_factory=list)
    customers_without_final_result: list[str] = field(default_factory=list)
    # Orders the worker closed as failed without Stripe ever answering (stripe_no_answer).
    orders_closed_without_answer: list[str] = field(default_factory=list)
    # PaymentIntents of orders that never ended at Stripe (requires_action, processing, ...):
    # a customer could still authenticate one, and be charged, whatever the order says.
    payment_intents_left_open: list[str] = field(default_factory=list)

    @property
    def oversold(self) -> int:
        if self.stock_initial is None:
            return 0
        return max(0, self.units_sold + self.units_charged_without_order - self.stock_initial)

    @property
    def stock_unaccounted(self) -> int:
        """Units that are neither left, held by the waiting room, reserved by a pending order,
        nor sold, by an order or by a charge whose order Redis lost (should be 0)."""
        if self.stock_initial is None:
            return 0
        return (
            self.stock_initial
            - self.stock_left
            - self.units_held
            - self.units_reserved
            - self.units_sold
            - self.units_charged_without_order
        )

    @property
    def sell_through(self) -> float | None:
        """Units sold of the units for sale."""
        return self.units_sold / self.stock_initial if self.stock_initial else None

    def discrepancies(self) -> dict[str, int]:
        """Each integrity check and how many items fail it (0 = passed)."""
        return {
            "orders_without_charge": len(self.orders_without_charge),
            "charges_without_order": len(self.charges_without_order),
            "orders_charged_twice": len(self.orders_charged_twice),
            "succeeded_order_charge_not_succeeded": len(self.succeeded_order_charge_not_succeeded),
            "charge_succeeded_order_not_succeeded": len(self.charge_succeeded_order_not_succeeded),
            "amount_mismatches": len(self.amount_mismatches),
            "customers_without_final_result": len(self.customers_without_final_result),
            "orders_closed_without_stripe_answer": len(self.orders_closed_without_answer),
            "payment_intents_left_open": len(self.payment_intents_left_open),
            "oversold_units": self.oversold,
            "stock_unaccounted_units": abs(self.stock_unaccounted),
        }

    def payment_intents_summary(self) -> str:
        """The sale's PaymentIntents by status, and the window read, for the summaries."""
        part = ""
        if self.payment_intents:
            by_status = ", ".join(
                f"{status} {n}" for status, n in sorted(self.payment_intents_by_status.items())
            )
            part = f"{self.payment_intents} PaymentIntents ({by_status}); "
        if self.since is not None:
            shown = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self.since))
            part += f"Stripe read from {shown} UTC; "
        return part

    def ok(self) -> bool:
        return not any(self.discrepancies().values())

    def as_dict(self) -> dict[str, Any]:
        shown = asdict(self)
        shown["oversold"] = self.oversold
        shown["stock_unaccounted"] = self.stock_unaccounted
        shown["sell_through"] = self.sell_through
        shown["discrepancies"] = self.discrepancies()
        shown["ok"] = self.ok()
        return shown


def reconcile(
    order_list: Iterable[orders.Order],
    charges: Iterable[ChargeRecord],
    *,
    sku: str,
    stock_initial: int | None,
    stock_left: int,
    units_held: int = 0,
    intents: Iterable[IntentRecord] = (),
) -> Reconciliation:
    """Pure comparison of orders, charges and PaymentIntents; the I/O lives in
    reconcile_live(). A charge a PaymentIntent made belongs to the PaymentIntent's order (its
    metadata names it even where the charge's does not)."""
    result = Reconciliation(
        sku=sku, stock_initial=stock_initial, stock_left=stock_left, units_held=units_held
    )
    order_of_intent: dict[str, str] = {}
    intents_by_status: dict[str, int] = defaultdict(int)
    for intent in intents:
        if intent.order_id is None:
            continue  # not one of ours
        order_of_intent[intent.intent_id] = intent.order_id
        result.payment_intents += 1
        intents_by_status[intent.status] += 1
        if intent.open:
            result.payment_intents_left_open.append(intent.intent_id)
    result.payment_intents_by_status = dict(intents_by_status)
    orders_with_intent = set(order_of_intent.values())
    by_order: dict[str, list[ChargeRecord]] = defaultdict(list)
    charges_by_status: dict[str, int] = defaultdict(int)
    for charge in charges:
        if charge.order_id is None and charge.payment_intent in order_of_intent:
            charge = replace(charge, order_id=order_of_intent[charge.payment_intent])
        result.charges += 1
        charges_by_status[charge.status] += 1
        if charge.order_id is None:
            continue  # not one of ours (another integration on the same test account)
        by_order[charge.order_id].append(charge)
    result.charges_by_status = dict(charges_by_status)

    seen: set[str] = set()
    states: dict[str, int] = defaultdict(int)
    pending_customers: set[str] = set()
    for order in order_list:
        result.orders += 1
        states[order.status] += 1
        seen.add(order.order_id)
        found = by_order.get(order.order_id, [])
        succeeded = [c for c in found if c.status == "succeeded" and not c.refunded]
        if order.sku == sku:
            if order.status == orders.SUCCEEDED:
                result.units_sold += order.quantity
            elif order.status == orders.PENDING:
                result.units_reserved += order.quantity
        if order.status == orders.PENDING:
            pending_customers.add(order.customer_id)
        # A declined charge is recorded at Stripe as a failed charge, so both need one; but a
        # PaymentIntent whose 3D Secure failed declines with no charge at all: its
        # PaymentIntent is the record of the decline.
        declined_by_intent = (
            order.status == orders.DECLINED and order.order_id in orders_with_intent
        )
        if (
            order.status in (orders.SUCCEEDED, orders.DECLINED)
            and not found
            and not declined_by_intent
        ):
            result.orders_without_charge.append(order.order_id)
        if len(found) > 1:
            result.orders_charged_twice[order.order_id] = [c.charge_id for c in found]
        if order.status == orders.SUCCEEDED and found and not succeeded:
            result.succeeded_order_charge_not_succeeded.append(order.order_id)
        if order.status != orders.SUCCEEDED and succeeded:
            result.charge_succeeded_order_not_succeeded.append(order.order_id)
        if any(c.amount != order.amount for c in found):
            result.amount_mismatches.append(order.order_id)
        if order.code == orders.NO_STRIPE_ANSWER:
            result.orders_closed_without_answer.append(order.order_id)
    result.orders_by_state = dict(states)
    result.customers_without_final_result = sorted(pending_customers)
    orphans = [
        charge for order_id, found in by_order.items() if order_id not in seen for charge in found
    ]
    result.charges_without_order = sorted(charge.charge_id for charge in orphans)
    result.units_charged_without_order = ledger.sales_of(orphans, sku).units
    return result


def reconcile_live(settings: Settings, redis: Redis, since: int | None = None) -> Reconciliation:
    """Read every order from Redis and every charge and PaymentIntent from Stripe (created at
    or after `since`, a Unix time, when given), then compare them."""
    client = payments.make_client(settings)
    charge_list = list(ledger.iter_charges(client, since))
    intent_list = list(ledger.iter_payment_intents(client, since))
    sku = settings.sale_sku
    result = reconcile(
        orders.iter_orders(redis),
        charge_list,
        sku=sku,
        stock_initial=inventory.initial_stock(redis, sku),
        stock_left=inventory.stock_left(redis, sku),
        units_held=waiting_room.units_held(redis, sku),
        intents=intent_list,
    )
    result.since = since
    if waiting_room.exists(redis, sku):
        result.room = waiting_room.counts(redis, sku)
    return result

"""`flashsale reconcile` finds each seeded discrepancy between Redis orders and Stripe charges."""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Any

import httpx
import pytest
import stripe
from conftest import pay_as_the_worker, wait_until

from flashsale.core import inventory, ledger, orders, store
from flashsale.ops.processes import flashsale_argv
from flashsale.ops.reconcile import reconcile
from flashsale.settings import SIM_PUBLISHABLE_KEY, SIM_SECRET_KEY

SKU = "RECON-1"
PRICE = 1500


@pytest.fixture
def sale(redis_url: str, stripe_sim: str) -> dict[str, Any]:
    client = store.connect(redis_url)
    inventory.init_stock(client, SKU, 10)
    stripe_client = stripe.StripeClient(
        SIM_SECRET_KEY, base_addresses={"api": stripe_sim}, max_network_retries=0
    )
    return {"redis": client, "stripe": stripe_client, "redis_url": redis_url, "sim": stripe_sim}


def place(sale: dict[str, Any], customer: str) -> orders.Order:
    placement = orders.place_order(
        sale["redis"],
        customer_id=customer,
        token=f"tok_for_{customer}",
        sku=SKU,
        quantity=1,
        unit_price=PRICE,
        currency="usd",
    )
    return placement.order


def charge(
    sale: dict[str, Any],
    order_id: str,
    *,
    key: str,
    amount: int = PRICE,
    metadata: dict[str, str] | None = None,
) -> str:
    created = sale["stripe"].v1.charges.create(
        params={
            "amount": amount,
            "currency": "usd",
            "source": "tok_visa",
            "metadata": {"order_id": order_id, **(metadata or {})},
        },
        options={"idempotency_key": key},
    )
    return str(created.id)


def run_reconcile(sale: dict[str, Any], *flags: str) -> tuple[int, dict[str, Any]]:
    env = {
        **os.environ,
        "FLASHSALE_REDIS_URL": sale["redis_url"],
        "STRIPE_API_BASE": sale["sim"],
        "STRIPE_SECRET_KEY": SIM_SECRET_KEY,
        "STRIPE_PUBLISHABLE_KEY": SIM_PUBLISHABLE_KEY,
    }
    done = subprocess.run(
        flashsale_argv("reconcile", "--sku", SKU, "--json", *flags),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)


def test_clean_sale_reconciles(sale: dict[str, Any]) -> None:
    paid = place(sale, "alice")
    charge_id = charge(sale, paid.order_id, key="k-alice")
    orders.finalize(sale["redis"], paid.order_id, orders.SUCCEEDED, charge_id=charge_id)

    code, result = run_reconcile(sale)

    assert code == 0
    assert result["ok"] is True
    assert result["orders"] == 1
    assert result["units_sold"] == 1
    assert result["stock_initial"] == 10 and result["stock_left"] == 9


def test_seeded_discrepancies_are_each_found(sale: dict[str, Any]) -> None:
    clean = place(sale, "clean")
    orders.finalize(
        sale["redis"],
        clean.order_id,
        orders.SUCCEEDED,
        charge_id=charge(sale, clean.order_id, key="k-clean"),
    )
    twice = place(sale, "twice")
    first = charge(sale, twice.order_id, key="k-twice-1")
    second = charge(sale, twice.order_id, key="k-twice-2")  # a second key: a real double charge
    orders.finalize(sale["redis"], twice.order_id, orders.SUCCEEDED, charge_id=first)
    missing = place(sale, "missing")
    orders.finalize(sale["redis"], missing.order_id, orders.SUCCEEDED, charge_id="ch_never")
    stray = charge(sale, "ord_that_does_not_exist", key="k-stray")
    pending = place(sale, "waiting")
    declined_but_paid = place(sale, "declined")
    charge(sale, declined_but_paid.order_id, key="k-declined")
    orders.finalize(sale["redis"], declined_but_paid.order_id, orders.DECLINED)
    wrong_amount = place(sale, "amount")
    orders.finalize(
        sale["redis"],
        wrong_amount.order_id,
        orders.SUCCEEDED,
        charge_id=charge(sale, wrong_amount.order_id, key="k-amount", amount=PRICE + 1),
    )

    code, result = run_reconcile(sale)

    assert code == 1
    assert result["ok"] is False
    assert result["orders_charged_twice"] == {twice.order_id: [second, first]} or result[
        "orders_charged_twice"
    ] == {twice.order_id: [first, second]}
    assert result["orders_without_charge"] == [missing.order_id]
    assert result["charges_without_order"] == [stray]
    assert result["customers_without_final_result"] == [pending.customer_id]
    assert result["charge_succeeded_order_not_succeeded"] == [declined_but_paid.order_id]
    assert result["amount_mismatches"] == [wrong_amount.order_id]
    assert clean.order_id not in json.dumps(result["discrepancies"])
    # Stock: 10 initial; 4 paid (clean, twice, missing, amount), 1 pending, 1 declined released.
    assert result["units_sold"] == 4
    assert result["units_reserved"] == 1
    assert result["stock_left"] == 5
    assert result["stock_unaccounted"] == 0


def test_charges_whose_orders_redis_lost_still_count_against_the_stock(
    sale: dict[str, Any],
) -> None:
    """Redis lost 4 paid orders of this SKU (no AOF, a restart): the server sold 8 more of 10.
    Stripe's ledger says 12 units went: reconcile reports 2 oversold, not a clean sale."""
    lost = [
        charge(sale, f"ord_lost_{n}", key=f"k-lost-{n}", metadata={"sku": SKU, "quantity": "1"})
        for n in range(4)
    ]
    refunded = charge(sale, "ord_lost_r", key="k-lost-r", metadata={"sku": SKU, "quantity": "1"})
    sale["stripe"].v1.refunds.create(params={"charge": refunded})
    other_sku = charge(
        sale, "ord_lost_o", key="k-lost-o", metadata={"sku": "OTHER", "quantity": "3"}
    )
    for n in range(8):
        paid = place(sale, f"buyer{n}")
        orders.finalize(
            sale["redis"],
            paid.order_id,
            orders.SUCCEEDED,
            charge_id=charge(sale, paid.order_id, key=f"k-buyer-{n}"),
        )

    code, result = run_reconcile(sale)

    assert code == 1
    assert sorted(result["charges_without_order"]) == sorted([*lost, refunded, other_sku])
    # The refunded charge and the other SKU's do not take this SKU's units.
    assert result["units_charged_without_order"] == 4
    assert result["units_sold"] == 8
    assert result["oversold"] == 2
    assert result["discrepancies"]["oversold_units"] == 2


def test_orders_closed_without_stripe_answer_are_listed(sale: dict[str, Any]) -> None:
    unanswered = place(sale, "unanswered")
    orders.finalize(sale["redis"], unanswered.order_id, orders.FAILED, code=orders.NO_STRIPE_ANSWER)

    code, result = run_reconcile(sale)

    assert code == 1
    assert result["orders_closed_without_answer"] == [unanswered.order_id]
    assert result["discrepancies"]["orders_closed_without_stripe_answer"] == 1


def pay_with_intent(sale: dict[str, Any], order_id: str, method: str) -> Any:
    return pay_as_the_worker(sale["stripe"], order_id, method, PRICE, key=f"pi-{order_id}")


def test_payment_intents_are_matched_and_one_left_open_is_named(sale: dict[str, Any]) -> None:
    paid = place(sale, "paid")
    intent = pay_with_intent(sale, paid.order_id, "pm_card_visa")
    orders.finalize(sale["redis"], paid.order_id, orders.SUCCEEDED, charge_id=intent.latest_charge)
    declined = place(sale, "declined")
    pay_with_intent(sale, declined.order_id, "pm_card_chargeDeclined")
    orders.finalize(sale["redis"], declined.order_id, orders.DECLINED)
    # 3D Secure failed: Stripe declines with no charge; the PaymentIntent records the decline.
    unauthenticated = place(sale, "unauthenticated")
    challenged = pay_with_intent(sale, unauthenticated.order_id, "pm_card_threeDSecure2Required")
    failed = httpx.post(
        f"{sale['sim']}/3d_secure/{challenged.id}/fail",
        data={"client_secret": challenged.client_secret},
        headers={"Accept": "application/json"},
    )
    assert failed.status_code == 200, failed.text
    orders.finalize(sale["redis"], unauthenticated.order_id, orders.DECLINED)
    # The worker gave up on a 3D Secure order without canceling its PaymentIntent: the
    # customer could still authenticate it and be charged for an order that says failed.
    left = place(sale, "left")
    open_intent = pay_with_intent(sale, left.order_id, "pm_card_threeDSecure2Required")
    assert open_intent.status == "requires_action"
    orders.finalize(sale["redis"], left.order_id, orders.FAILED, code="authentication_abandoned")

    code, result = run_reconcile(sale)

    assert code == 1
    assert result["payment_intents"] == 4
    assert result["payment_intents_by_status"] == {
        "requires_action": 1,
        "requires_payment_method": 2,
        "succeeded": 1,
    }
    assert result["payment_intents_left_open"] == [open_intent.id]
    assert result["discrepancies"]["payment_intents_left_open"] == 1
    # The rest agrees: each charge the PaymentIntents made is its order's.
    assert {k: v for k, v in result["discrepancies"].items() if v} == {
        "payment_intents_left_open": 1
    }

    sale["stripe"].v1.payment_intents.cancel(open_intent.id)
    code, result = run_reconcile(sale)
    assert code == 0 and result["payment_intents_left_open"] == []


def test_a_charge_is_its_payment_intents_orders_even_without_metadata() -> None:
    """Reconcile does not rely on Stripe copying the PaymentIntent's metadata to its charge."""
    order = orders.Order(
        order_id="ord_1",
        customer_id="c1",
        sku=SKU,
        quantity=1,
        amount=PRICE,
        currency="usd",
        token="pm_card_visa",
        status=orders.SUCCEEDED,
    )
    charge_record = ledger.ChargeRecord("ch_1", None, "succeeded", PRICE, False, None, 0, "pi_1")
    intent = ledger.IntentRecord("pi_1", "ord_1", "succeeded")
    result = reconcile(
        [order], [charge_record], sku=SKU, stock_initial=1, stock_left=0, intents=[intent]
    )
    assert result.ok(), result.discrepancies()
    without = reconcile([order], [charge_record], sku=SKU, stock_initial=1, stock_left=0)
    assert without.orders_without_charge == ["ord_1"]


def test_since_leaves_out_what_stripe_created_before_the_window(sale: dict[str, Any]) -> None:
    stray = charge(sale, "ord_of_an_earlier_sale", key="k-earlier")
    created = sale["stripe"].v1.charges.retrieve(stray).created
    # Stripe's times are whole seconds: a window from the next second leaves the stray out.
    wait_until(lambda: time.time() >= created + 1, timeout_s=5, what="the next second")
    paid = place(sale, "now")
    orders.finalize(
        sale["redis"],
        paid.order_id,
        orders.SUCCEEDED,
        charge_id=charge(sale, paid.order_id, key="k-now"),
    )

    code, result = run_reconcile(sale)
    assert code == 1 and result["charges_without_order"] == [stray]
    window = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created + 1))
    code, result = run_reconcile(sale, "--since", window)
    assert code == 0, result["discrepancies"]
    assert result["charges"] == 1 and result["since"] == created + 1
    code, result = run_reconcile(sale, "--since", "1h")  # a window that holds both
    assert code == 1 and result["charges"] == 2


def test_a_bad_since_is_one_clear_line(sale: dict[str, Any]) -> None:
    done = subprocess.run(
        flashsale_argv("reconcile", "--since", "yesterday"),
        env={
            **os.environ,
            "FLASHSALE_REDIS_URL": sale["redis_url"],
            "STRIPE_API_BASE": sale["sim"],
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--since must be a duration (2h, 90m) or an ISO 8601 time" in done.stderr


def test_unreachable_redis_is_one_clear_line(stripe_sim: str) -> None:
    env = {
        **os.environ,
        "FLASHSALE_REDIS_URL": "redis://127.0.0.1:1/0",
        "STRIPE_API_BASE": stripe_sim,
    }
    done = subprocess.run(
        flashsale_argv("reconcile"), env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert "Redis is unavailable" in done.stderr

"""`flashsale reconcile` finds each seeded discrepancy between Redis orders and Stripe charges."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import pytest
import stripe

from flashsale.core import inventory, orders, store
from flashsale.ops.processes import flashsale_argv
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


def run_reconcile(sale: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    env = {
        **os.environ,
        "FLASHSALE_REDIS_URL": sale["redis_url"],
        "STRIPE_API_BASE": sale["sim"],
        "STRIPE_SECRET_KEY": SIM_SECRET_KEY,
        "STRIPE_PUBLISHABLE_KEY": SIM_PUBLISHABLE_KEY,
    }
    done = subprocess.run(
        flashsale_argv("reconcile", "--sku", SKU, "--json"),
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

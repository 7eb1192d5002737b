"""Opening the sale: its stock is set once, net of what Stripe's ledger says was already sold.

Stock lives in Redis with `SET NX`, so a restart never refills it. But a Redis that lost its
data (no AOF, a failover to a replica that was behind) has no stock key: setting the full amount
again would sell units Stripe already charged (220 charges for a 150-unit sale, before this).
Stripe is the record of what was sold, so the units of the SKU's succeeded charges come off.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from redis import Redis

from flashsale.core import inventory, ledger, payments
from flashsale.errors import ConfigError, PaymentError
from flashsale.settings import Settings

log = logging.getLogger("flashsale.server")


@dataclass(frozen=True)
class Opening:
    """What opening the sale found: None when Redis already had it (a restart)."""

    units: int
    already_sold: int
    charges: int


def open_sale(redis: Redis, settings: Settings) -> Opening | None:
    sku = settings.sale_sku
    if inventory.initial_stock(redis, sku) is not None:
        return None
    sold = ledger.LedgerSales(units=0, charges=0)
    if settings.stock_from_ledger:
        try:
            sold = ledger.sales_of(ledger.iter_charges(payments.make_client(settings)), sku)
        except PaymentError as error:
            raise ConfigError(
                f"cannot open the sale of {sku}: Redis has no stock for it and Stripe's ledger, "
                f"which says how many were already sold, could not be read ({error}); start "
                "with --ignore-ledger only for a SKU that has never sold"
            ) from error
    if not inventory.init_stock(redis, sku, settings.sale_stock, already_sold=sold.units):
        return None  # another server process opened it first
    if sold.units:
        log.warning(
            "sale %s opened with %d of %d units: Redis had no stock for it but Stripe's ledger "
            "has %d charges for %d units of it (Redis lost its data, or the SKU sold before: "
            "--ignore-ledger starts a fresh sale of it)",
            sku,
            max(0, settings.sale_stock - sold.units),
            settings.sale_stock,
            sold.charges,
            sold.units,
        )
    return Opening(units=settings.sale_stock, already_sold=sold.units, charges=sold.charges)

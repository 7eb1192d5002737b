"""Redis loses the sale (no AOF, a flush), then the server restarts: it must not sell again the
units Stripe already charged.

Before, stock was set with SET NX on the empty database, so the full amount went on sale again:
220 succeeded charges for a 150-unit sale, and reconcile said oversold=0.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable

import pytest
from pipeline_fixtures import Pipeline

from flashsale.core import inventory
from flashsale.ops.processes import flashsale_argv

pytestmark = pytest.mark.timeout(180)
SKU = "LOSS-1"
STOCK = 10
SOLD_BEFORE = 6


def buy(pipeline: Pipeline) -> tuple[int, str]:
    """One customer's purchase: the answer of POST /charges, then the final status if placed."""
    session = pipeline.session()
    placed = pipeline.charge(session, pipeline.tokenize())
    if placed.status_code != 202:
        return placed.status_code, placed.json()["error"]["code"]
    final = pipeline.wait_final(session, placed.json()["order_id"])
    return placed.status_code, final["status"]


def test_a_server_restarted_on_a_redis_that_lost_the_sale_sells_only_what_is_left(
    pipeline_factory: Callable[..., Pipeline],
) -> None:
    pipeline = pipeline_factory(server_flags=("--stock", str(STOCK), "--sku", SKU))
    assert [buy(pipeline) for _ in range(SOLD_BEFORE)] == [(202, "succeeded")] * SOLD_BEFORE

    server = pipeline.local.server()
    server.stop()
    with pipeline.redis() as client:
        client.flushdb()  # this module's database of our own redis-server
    restarted = pipeline.local.restart_server()

    assert "sale LOSS-1 opened with 4 of 10 units" in restarted.log_text()
    assert pipeline.session()["sale"]["stock_left"] == STOCK - SOLD_BEFORE
    outcomes = [buy(pipeline) for _ in range(STOCK - SOLD_BEFORE + 2)]
    assert outcomes == [(202, "succeeded")] * (STOCK - SOLD_BEFORE) + [(409, "sold_out")] * 2
    assert len([c for c in pipeline.sim_charges() if c["status"] == "succeeded"]) == STOCK

    done = subprocess.run(
        flashsale_argv("reconcile", "--sku", SKU, "--json"),
        env=pipeline.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    result = json.loads(done.stdout)
    # The lost orders are reported (their charges have no order), but nothing was oversold.
    assert done.returncode == 1, done.stderr
    assert len(result["charges_without_order"]) == SOLD_BEFORE
    assert result["units_charged_without_order"] == SOLD_BEFORE
    assert result["oversold"] == 0 and result["stock_unaccounted"] == 0
    with pipeline.redis() as client:
        assert inventory.stock_left(client, SKU) == 0
    pipeline.stop()  # its worker must not take the next test's orders from this database


def test_ignore_ledger_opens_a_fresh_sale_of_a_sku_that_sold_before(
    pipeline_factory: Callable[..., Pipeline],
) -> None:
    pipeline = pipeline_factory(server_flags=("--stock", "3", "--sku", "AGAIN-1"))
    assert buy(pipeline) == (202, "succeeded")
    assert [c["metadata"]["sku"] for c in pipeline.sim_charges()] == ["AGAIN-1"]
    pipeline.local.server().stop()
    with pipeline.redis() as client:
        client.flushdb()
    url = pipeline.add_server("--stock", "3", "--sku", "AGAIN-1", "--ignore-ledger")
    assert pipeline.session(url)["sale"]["stock_left"] == 3

"""`flashsale status` shows a running sale to its operators, and says when parts are down."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from typing import Any

from pipeline_fixtures import Pipeline

from flashsale.ops.processes import flashsale_argv


def status(pipeline: Pipeline, *args: str, env: dict[str, str] | None = None) -> Any:
    return subprocess.run(
        flashsale_argv("status", "--server-url", pipeline.server_url, *args),
        env={**pipeline.env, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_status_reports_the_running_sale(pipeline_factory: Callable[..., Pipeline]) -> None:
    pipeline = pipeline_factory(server_flags=("--stock", "7"))
    session = pipeline.session()
    client = pipeline.connect(session)
    try:
        order = pipeline.charge(session, pipeline.tokenize()).json()
        pipeline.wait_final(session, order["order_id"])

        done = status(pipeline, "--json")
        assert done.returncode == 0, done.stderr
        shown = json.loads(done.stdout)
        assert shown["redis_ok"] is True
        assert shown["stripe_mode"] == "simulator"
        assert shown["orders_by_state"]["succeeded"] == 1
        assert shown["stock_initial"] == 7 and shown["stock_left"] == 6
        assert len(shown["workers"]) == 1
        assert shown["queue_depth"] == 0
        assert shown["sockets_connected"] == 1

        screen = status(pipeline)
        assert screen.returncode == 0
        for label in ("Redis", "reachable", "workers", "1 alive", "6 of 7", "simulator"):
            assert label in screen.stdout
    finally:
        client.disconnect()


def test_status_says_redis_is_down_in_one_line(pipeline_factory: Callable[..., Pipeline]) -> None:
    pipeline = pipeline_factory()
    done = status(pipeline, env={"FLASHSALE_REDIS_URL": "redis://127.0.0.1:1/0"})
    assert done.returncode == 1
    assert "UNREACHABLE" in done.stdout
    assert "Traceback" not in done.stderr


def test_status_refuses_a_live_key(pipeline_factory: Callable[..., Pipeline]) -> None:
    pipeline = pipeline_factory()
    done = status(pipeline, env={"STRIPE_SECRET_KEY": "sk_live_" + "q" * 24})
    assert done.returncode == 2
    assert "live Stripe secret key" in done.stderr


def test_status_of_one_sku_counts_only_its_orders(
    pipeline_factory: Callable[..., Pipeline],
) -> None:
    """Two sales on one Redis: each status shows its own orders, not the other's."""
    pipeline = pipeline_factory(server_flags=("--stock", "5", "--sku", "STATUS-A"))
    other = pipeline.add_server("--stock", "5", "--sku", "STATUS-B")
    for url in (pipeline.server_url, other, other):
        session = pipeline.session(url)
        order = pipeline.charge(session, pipeline.tokenize(), server_url=url).json()
        assert order["status"] == "pending"
    for sku, placed in (("STATUS-A", 1), ("STATUS-B", 2)):
        shown = json.loads(status(pipeline, "--json", "--sku", sku).stdout)
        assert sum(shown["orders_by_state"].values()) == placed, (sku, shown)

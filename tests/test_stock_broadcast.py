"""Live stock: watchers get the count on join, after reservations, and after released units."""

from __future__ import annotations

import time
from typing import Any

import pytest
import socketio
from pipeline_fixtures import Pipeline

from flashsale.core import events

STOCK = 10


@pytest.fixture(scope="module")
def pipeline(pipeline_factory: Any) -> Pipeline:
    return pipeline_factory(server_flags=("--stock", str(STOCK), "--sku", "STOCK-Q"))


@pytest.fixture(scope="module")
def http_pipeline(pipeline_factory: Any) -> Pipeline:
    pipeline = pipeline_factory(
        server_flags=("--stock", str(STOCK), "--sku", "STOCK-H"), with_worker=False
    )
    pipeline.start_worker("--notify", "http", "--server-url", pipeline.server_url)
    return pipeline


def watch(
    pipeline: Pipeline, session: dict[str, Any], watch_stock: object
) -> socketio.SimpleClient:
    client = socketio.SimpleClient()
    client.connect(
        pipeline.server_url,
        auth={"room_token": session["room_token"], "watch_stock": watch_stock},
        transports=["websocket"],
        wait_timeout=10,
    )
    return client


def stock_events(client: socketio.SimpleClient, until: Any, timeout_s: float) -> list[int]:
    """stock_left values received, oldest first, until until(values) holds or time runs out."""
    seen: list[int] = []
    deadline = time.monotonic() + timeout_s
    while not until(seen):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            event, data = client.receive(timeout=left)
        except socketio.exceptions.TimeoutError:
            break
        if event == events.STOCK:
            seen.append(data["stock_left"])
    return seen


def test_watcher_gets_the_count_on_join_and_after_a_reservation(pipeline: Pipeline) -> None:
    session = pipeline.session()
    sku = session["sale"]["sku"]
    client = watch(pipeline, session, True)
    try:
        event, data = client.receive(timeout=10)
        assert event == events.JOINED
        event, data = client.receive(timeout=10)
        assert (event, data) == (events.STOCK, {"sku": sku, "stock_left": STOCK})
        assert pipeline.charge(session, pipeline.tokenize()).status_code == 202
        seen = stock_events(client, lambda s: STOCK - 1 in s, timeout_s=5)
    finally:
        client.disconnect()
    assert seen[-1] == STOCK - 1


def test_released_unit_is_broadcast_by_the_worker(pipeline: Pipeline) -> None:
    session = pipeline.session()
    client = watch(pipeline, session, True)
    try:
        (first,) = stock_events(client, lambda s: len(s) == 1, timeout_s=10)
        token = pipeline.tokenize("4000000000009995")
        # A slow Stripe keeps the unit reserved long enough to see both edges.
        pipeline.sim_config(latency="1500ms")
        try:
            assert pipeline.charge(session, token).status_code == 202
            seen = stock_events(client, lambda s: first - 1 in s and s[-1] == first, timeout_s=10)
        finally:
            pipeline.sim_config(latency="0")
    finally:
        client.disconnect()
    assert first - 1 in seen and seen[-1] == first, seen


def test_only_watchers_get_stock_events(pipeline: Pipeline) -> None:
    session = pipeline.session()
    watcher = watch(pipeline, session, True)
    other_session = pipeline.session()
    bystander = watch(pipeline, other_session, "yes")  # only a JSON true opts in
    try:
        stock_events(watcher, lambda s: len(s) == 1, timeout_s=10)
        assert pipeline.charge(session, pipeline.tokenize()).status_code == 202
        assert stock_events(watcher, lambda s: len(s) == 1, timeout_s=5)
        assert stock_events(bystander, lambda s: len(s) == 1, timeout_s=1.5) == []
    finally:
        watcher.disconnect()
        bystander.disconnect()


def test_http_notify_mode_broadcasts_released_units_from_the_server(
    http_pipeline: Pipeline,
) -> None:
    pipeline = http_pipeline
    session = pipeline.session()
    client = watch(pipeline, session, True)
    try:
        (first,) = stock_events(client, lambda s: len(s) == 1, timeout_s=10)
        token = pipeline.tokenize("4000000000000002")
        pipeline.sim_config(latency="1500ms")
        try:
            assert pipeline.charge(session, token).status_code == 202
            seen = stock_events(client, lambda s: first - 1 in s and s[-1] == first, timeout_s=10)
        finally:
            pipeline.sim_config(latency="0")
    finally:
        client.disconnect()
    assert first - 1 in seen and seen[-1] == first, seen

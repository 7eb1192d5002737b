"""`flashsale serve --workers N` and several `flashsale worker`s: one sale across processes."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from pipeline_fixtures import Pipeline, receive_results

from flashsale.core import inventory
from flashsale.ops.processes import Child, flashsale_argv, free_port
from flashsale.server.serving import PID_HEADER

STOCK = 100
ATTEMPTS = 300  # fresh connections tried before giving up on seeing both server processes
SOCKETS_GAUGE = re.compile(r"^flashsale_sockets_connected (\S+)$", re.MULTILINE)


@pytest.fixture(scope="module")
def pipeline(pipeline_factory: Callable[..., Pipeline]) -> Pipeline:
    """Two server processes behind one port, two Celery workers; the simulator answers slowly
    enough (150 ms) that one worker cannot drain the queue alone."""
    started = pipeline_factory(
        server_flags=("--workers", "2", "--stock", str(STOCK)),
        sim_flags=("--latency", "150ms"),
    )
    started.start_worker()
    return started


def sockets_per_process(url: str) -> dict[int, float]:
    """Each server process's connected-sockets gauge, found by asking over fresh connections
    until two different pids have answered."""
    seen: dict[int, float] = {}
    for _ in range(ATTEMPTS):
        with httpx.Client(timeout=10) as client:
            response = client.get(f"{url}/metrics")
        match = SOCKETS_GAUGE.search(response.text)
        assert match, response.text
        seen[int(response.headers[PID_HEADER])] = float(match.group(1))
        if len(seen) == 2:
            return seen
    raise AssertionError(f"only server process(es) {sorted(seen)} answered {ATTEMPTS} connections")


def client_of_process(url: str, pid: int) -> httpx.Client:
    """A keep-alive client whose connection was accepted by server process pid."""
    for _ in range(ATTEMPTS):
        client = httpx.Client(timeout=10)
        if int(client.get(f"{url}/healthz").headers[PID_HEADER]) == pid:
            return client
        client.close()
    raise AssertionError(f"server process {pid} accepted none of {ATTEMPTS} connections")


def test_result_reaches_a_socket_on_another_server_process(pipeline: Pipeline) -> None:
    session = pipeline.session()
    socket = pipeline.connect(session)
    try:
        gauges = sockets_per_process(pipeline.server_url)
        holders = [pid for pid, count in gauges.items() if count == 1]
        assert len(holders) == 1, gauges  # our socket is the only one, on exactly one process
        socket_pid = holders[0]
        (post_pid,) = set(gauges) - {socket_pid}

        client = client_of_process(pipeline.server_url, post_pid)
        try:
            response = client.post(
                f"{pipeline.server_url}/charges",
                json={
                    "customer_id": session["customer_id"],
                    "room_token": session["room_token"],
                    "token": "tok_visa",
                },
            )
        finally:
            client.close()
        assert response.status_code == 202, response.text
        assert int(response.headers[PID_HEADER]) == post_pid != socket_pid
        order_id = response.json()["order_id"]

        (result,) = receive_results(socket, 1)
        assert result["order_id"] == order_id
        assert result["status"] == "succeeded"
        assert result["charge_id"]
    finally:
        socket.disconnect()


def test_two_workers_share_the_orders_and_stock_is_set_once(pipeline: Pipeline) -> None:
    client = pipeline.redis()
    sold_before = STOCK - inventory.stock_left(client, "FLASH-001")
    orders: list[tuple[dict[str, Any], str]] = []
    for _ in range(24):
        session = pipeline.session()
        response = pipeline.charge(session, "tok_visa")
        assert response.status_code == 202, response.text
        orders.append((session, response.json()["order_id"]))
    for session, order_id in orders:
        assert pipeline.wait_final(session, order_id)["status"] == "succeeded"

    # Each server process ran init_stock (SET NX): the stock was set once, never refilled.
    assert inventory.initial_stock(client, "FLASH-001") == STOCK
    assert inventory.stock_left(client, "FLASH-001") == STOCK - sold_before - len(orders)
    order_ids = {order_id for _, order_id in orders}
    charged = [c for c in pipeline.sim_charges() if c["metadata"]["order_id"] in order_ids]
    assert len(charged) == len(orders)  # once each, whichever worker took it

    workers = [child for child in pipeline.children if child.name.startswith("worker")]
    assert len(workers) == 2
    finished_by = [
        sum(order_id in line for line in worker.log_text().splitlines() for order_id in order_ids)
        for worker in workers
    ]
    assert all(count > 0 for count in finished_by), finished_by


def test_gunicorn_command_with_the_config_module(pipeline: Pipeline, tmp_path: Path) -> None:
    """The deployment path: plain gunicorn, our config module, settings from the environment."""
    env = {**pipeline.env, "PORT": "0", "WEB_CONCURRENCY": "2"}
    gunicorn = Child(
        "gunicorn",
        [
            str(Path(sys.executable).with_name("gunicorn")),
            "-c",
            "python:flashsale.server.gunicorn_conf",
            "flashsale.server.wsgi:app",
        ],
        tmp_path / "gunicorn.log",
        env=env,
    ).start()
    try:
        url = gunicorn.wait_listening(timeout_s=30)
        assert "(gunicorn, 2 workers)" in gunicorn.log_text()
        response = httpx.get(f"{url}/session", timeout=10)
        assert response.status_code == 200
        assert response.json()["sale"]["sku"] == "FLASH-001"
        assert int(response.headers[PID_HEADER]) != gunicorn.pid  # a worker answered
    finally:
        assert gunicorn.stop() == 0
    assert not gunicorn.alive()


def test_workers_that_cannot_start_stop_the_server(tmp_path: Path) -> None:
    """Redis unreachable: every process stops (no respawn loop), non-zero exit, the reason."""
    env = {**os.environ, "FLASHSALE_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    server = Child(
        "server",
        flashsale_argv("serve", "--port", "0", "--workers", "2"),
        tmp_path / "server.log",
        env=env,
    ).start()
    try:
        assert server.process is not None
        code = server.process.wait(timeout=60)
    finally:
        server.stop()
    log = server.log_text()
    assert code != 0
    assert "Redis is unavailable" in log
    assert "a server process failed to start" in log
    assert log.count("Booting worker") <= 2  # the failing workers were not respawned

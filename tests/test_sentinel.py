"""Redis under Sentinel: the one URL form, riding out a failover, and what a failover loses.

Real redis-server and redis-sentinel processes on loopback ports (ops/sentinel.py starts a
primary, a replica and three sentinels); the pipeline's own processes talk to them.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import redis
from pipeline_fixtures import TEST_SECRET, Pipeline

from flashsale.core import store
from flashsale.errors import ConfigError
from flashsale.ops import sentinel
from flashsale.ops.pipeline import LocalPipeline
from flashsale.ops.processes import Child, flashsale_argv, free_port, redis_server_argv

pytestmark = pytest.mark.timeout(240)


def test_the_sentinel_url_names_sentinels_database_and_service() -> None:
    address = store.sentinel_address("redis+sentinel://127.0.0.1:1,localhost:2/3/shop")
    assert address == store.SentinelAddress((("127.0.0.1", 1), ("localhost", 2)), "shop", 3)
    assert store.sentinel_address(address.url()) == address
    assert store.sentinel_address("redis://127.0.0.1:6390/0") is None


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+sentinel://127.0.0.1/0/shop", "each sentinel is host:port"),
        ("redis+sentinel://127.0.0.1:x/0/shop", "each sentinel is host:port"),
        ("redis+sentinel://127.0.0.1:1/0", "name the database and the service"),
        ("redis+sentinel://127.0.0.1:1/shop", "name the database and the service"),
    ],
)
def test_a_malformed_sentinel_url_is_one_config_error(url: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        store.sentinel_address(url)


def test_a_command_rides_out_a_redis_restart_instead_of_failing(tmp_path: Path) -> None:
    """Redis away for ~1 s: the command issued meanwhile waits and succeeds (before: redis-py's
    default retry gave up within the ~2 s of a failover, and customers got 503s)."""
    port = free_port()
    argv = redis_server_argv(port, tmp_path)
    first = Child("redis", argv, tmp_path / "redis.log").start()
    client = store.connect(f"redis://127.0.0.1:{port}/0", timeout_s=1)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    client.set("kept", "before")
    first.stop()
    again: list[Child] = []
    restarted = threading.Timer(
        1.0, lambda: again.append(Child("redis2", argv, tmp_path / "redis2.log").start())
    )
    restarted.start()
    try:
        began = time.monotonic()
        client.set("written", "while away")  # issued while nothing listens
        waited = time.monotonic() - began
    finally:
        restarted.join()
        for child in again:
            child.stop()
    assert 0.9 < waited < store.RIDE_OUT_S, waited


def test_with_nothing_to_answer_a_command_fails_within_the_ride_out_window() -> None:
    """Nested retries (a Sentinel connection inside the command's retry) share one deadline:
    before, with no sentinel up, one command took 124 s to fail."""
    for url in (
        f"redis://127.0.0.1:{free_port()}/0",
        f"redis+sentinel://127.0.0.1:{free_port()}/0/x",
    ):
        client = store.connect(url, timeout_s=0.5)
        began = time.monotonic()
        with pytest.raises(redis.ConnectionError):
            client.ping()
        assert time.monotonic() - began < store.RIDE_OUT_S + 2, url


@pytest.fixture
def topology(tmp_path: Path) -> LocalPipeline:
    local = LocalPipeline(
        tmp_path, env={"STRIPE_SECRET_KEY": "sk_test_sentinel", "FLASHSALE_SECRET": TEST_SECRET}
    )
    try:
        local.start_redis_sentinel()
    except BaseException:
        local.stop()
        raise
    yield local
    local.stop()


def test_the_sentinel_pool_waits_for_a_free_connection_like_the_plain_one(
    topology: LocalPipeline,
) -> None:
    """core/store.py combines redis-py's Sentinel pool with its blocking one: past the limit a
    caller waits (up to the timeout) instead of failing with "Too many connections"."""
    client = store.connect(topology.redis_url, timeout_s=1, max_connections=1)
    pool = client.connection_pool
    assert isinstance(pool, store.SentinelBlockingConnectionPool)
    held = pool.get_connection()
    assert held.port == topology.redis_port  # the primary the sentinels name
    began = time.monotonic()
    with pytest.raises(redis.ConnectionError, match="No connection available"):
        pool.get_connection()
    assert time.monotonic() - began >= 0.9  # it waited its timeout
    pool.release(held)
    assert client.ping()


def test_every_component_follows_a_failover(topology: LocalPipeline, tmp_path: Path) -> None:
    """Orders before and after the primary dies: each charged once, each customer told by
    socket (the message queue followed too), and the data layer reads the same sale."""
    topology.start_simulator()
    topology.start_server("--stock", "20", "--sku", "FO-1")
    topology.start_worker("--concurrency", "4")
    pipeline = Pipeline(topology)
    try:
        before = buy_and_hear(pipeline)
        detail = topology.failover_redis()
        assert detail.startswith("killed primary") and "primary after" in detail, detail
        after = buy_and_hear(pipeline)
        for order_id in (before, after):
            (charge,) = pipeline.sim_charges(order_id)
            assert charge["status"] == "succeeded"
        assert pipeline.session()["sale"]["stock_left"] == 18
    finally:
        pipeline.http.close()


def buy_and_hear(pipeline: Pipeline) -> str:
    """One purchase whose result arrives on the customer's socket; its order id."""
    session = pipeline.session()
    client = pipeline.connect(session)
    try:
        placed = pipeline.charge(session, pipeline.tokenize())
        assert placed.status_code == 202, placed.text
        order_id = str(placed.json()["order_id"])
        event = client.receive(timeout=30)
        assert event[1]["order_id"] == order_id and event[1]["status"] == "succeeded", event
        return order_id
    finally:
        client.disconnect()


def test_a_failover_to_a_lagging_replica_loses_orders_and_reconcile_names_them(
    topology: LocalPipeline,
) -> None:
    """Replication is asynchronous: what the primary acknowledged and the replica had not yet
    received is gone after the failover. Here the replica is held back (SIGSTOP, its link cut)
    while three customers pay; the primary dies; the replica, resumed, is promoted without
    them. Stripe
    charged them all the same: reconcile lists the three charges without an order and counts
    their units against the stock."""
    topology.start_simulator()
    topology.start_server("--stock", "20", "--sku", "LAG-1")
    topology.start_worker("--concurrency", "4")
    pipeline = Pipeline(topology)
    replica = next(
        child for port, child in topology.redis_nodes.items() if port != topology.redis_port
    )
    try:
        replica.signal(signal.SIGSTOP)
        # And cut its link: what the primary sent would otherwise wait in the replica's socket
        # buffer and be applied on SIGCONT. Now later writes exist on the primary only.
        with redis.Redis(port=topology.redis_port) as primary_client:
            assert primary_client.client_kill_filter(_type="replica") == 1
        try:
            paid = []
            for _ in range(3):
                session = pipeline.session()
                placed = pipeline.charge(session, pipeline.tokenize())
                assert placed.status_code == 202, placed.text
                paid.append(pipeline.wait_final(session, placed.json()["order_id"]))
            assert [order["status"] for order in paid] == ["succeeded"] * 3
            primary = topology.redis_nodes[topology.redis_port]
            primary.signal(signal.SIGKILL)
        finally:
            replica.signal(signal.SIGCONT)
        assert topology.sentinels is not None
        sentinel.wait_for_new_primary(topology.sentinels, topology.redis_port, 60)
        done = subprocess.run(
            flashsale_argv("reconcile", "--sku", "LAG-1", "--json"),
            env=topology.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        result = json.loads(done.stdout)
        assert done.returncode == 1, done.stderr
        lost = sorted(charge["id"] for charge in pipeline.sim_charges())
        assert sorted(result["charges_without_order"]) == lost and len(lost) == 3
        assert result["units_charged_without_order"] == 3
    finally:
        pipeline.http.close()

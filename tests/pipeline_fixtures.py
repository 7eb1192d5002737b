"""Pipeline fixtures: the real stripe-sim, `flashsale serve` and `flashsale worker` as processes.

Each test module gets its own Redis database (so orders, stock and the Celery queue of one module
never leak into another) and its own simulator; the processes are shared by the module's tests
because starting them takes seconds.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import socketio
from celery import Celery

from flashsale.core import events
from flashsale.ops.pipeline import LocalPipeline
from flashsale.ops.processes import Child
from flashsale.settings import SIM_PUBLISHABLE_KEY

TEST_SECRET = "pipeline-test-secret"
# Database 0 belongs to the per-test `redis_url` fixture; modules take 1, 2, ...
_databases = itertools.count(1)


class Pipeline:
    """One running pipeline (a LocalPipeline) and the helpers tests drive it with."""

    def __init__(self, local: LocalPipeline) -> None:
        self.local = local
        self.worker: Child | None = None  # the worker started last
        self.http = httpx.Client(timeout=10)

    @property
    def redis_url(self) -> str:
        return self.local.redis_url

    @property
    def sim_url(self) -> str:
        assert self.local.sim_url is not None
        return self.local.sim_url

    @property
    def server_url(self) -> str:
        return self.local.server_url

    @property
    def env(self) -> dict[str, str]:
        return self.local.env

    @property
    def log_dir(self) -> Path:
        return self.local.log_dir

    @property
    def children(self) -> list[Child]:
        return self.local.children

    # --- processes ------------------------------------------------------------------------

    def start_worker(
        self, *flags: str, wait: bool = True, env: dict[str, str] | None = None
    ) -> Child:
        """Start (or restart after a kill) a worker with flags and environment overrides."""
        self.worker = self.local.start_worker("--concurrency", "8", *flags, env=env, wait=wait)
        return self.worker

    def add_server(self, *flags: str) -> str:
        """Another server on the same Redis (say, another SKU); returns its URL."""
        return self.local.start_server(*flags).wait_listening()

    def stop(self) -> None:
        self.http.close()
        self.local.stop()

    def redis(self) -> redis.Redis[Any]:
        return redis.Redis.from_url(self.redis_url, decode_responses=True)

    # --- customer journey -----------------------------------------------------------------

    def session(self, server_url: str | None = None) -> dict[str, Any]:
        response = self.http.get(f"{server_url or self.server_url}/session")
        response.raise_for_status()
        return dict(response.json())

    def tokenize(self, number: str = "4242424242424242") -> str:
        """A card token from the simulator, made the way Stripe.js makes one."""
        response = self.http.post(
            f"{self.sim_url}/v1/tokens",
            data={
                "card[number]": number,
                "card[exp_month]": "12",
                "card[exp_year]": "2034",
                "card[cvc]": "123",
            },
            auth=(SIM_PUBLISHABLE_KEY, ""),
        )
        assert response.status_code == 200, response.text
        return str(response.json()["id"])

    def charge(
        self,
        session: dict[str, Any],
        token: str | None,
        server_url: str | None = None,
        **extra: Any,
    ) -> httpx.Response:
        """POST /charges; token None leaves the field out (for payment_method=...)."""
        body = {
            "customer_id": session["customer_id"],
            "room_token": session["room_token"],
            **({"token": token} if token is not None else {}),
            **extra,
        }
        return self.http.post(f"{server_url or self.server_url}/charges", json=body)

    def order(self, session: dict[str, Any], order_id: str) -> httpx.Response:
        return self.http.get(
            f"{self.server_url}/orders/{order_id}", params={"room_token": session["room_token"]}
        )

    def wait_final(self, session: dict[str, Any], order_id: str, timeout_s: float = 20) -> dict:
        """The order once it is final (tests may poll; the product never does)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            state = self.order(session, order_id).json()
            if state["status"] != "pending":
                return dict(state)
            time.sleep(0.05)
        raise AssertionError(f"order {order_id} still pending after {timeout_s}s")

    def connect(
        self, session: dict[str, Any], server_url: str | None = None
    ) -> socketio.SimpleClient:
        """A websocket-only Socket.IO client in the customer's room (JOINED already received)."""
        client = socketio.SimpleClient()
        client.connect(
            server_url or self.server_url,
            auth={"room_token": session["room_token"]},
            transports=["websocket"],
            wait_timeout=10,
        )
        event, data = client.receive(timeout=10)
        assert event == events.JOINED and data == {"customer_id": session["customer_id"]}
        return client

    def sim_charges(self, order_id: str | None = None) -> list[dict[str, Any]]:
        """Charges in the simulator's ledger, optionally only those of one order."""
        found: list[dict[str, Any]] = []
        after: str | None = None
        while True:
            params = {"limit": "100", **({"starting_after": after} if after else {})}
            response = self.http.get(
                f"{self.sim_url}/v1/charges",
                params=params,
                headers={"Authorization": f"Bearer {self.env['STRIPE_SECRET_KEY']}"},
            )
            response.raise_for_status()
            page = response.json()
            found += page["data"]
            if not page["has_more"] or not page["data"]:
                break
            after = page["data"][-1]["id"]
        if order_id is None:
            return found
        return [c for c in found if c.get("metadata", {}).get("order_id") == order_id]

    def sim_config(self, **changes: Any) -> None:
        response = self.http.post(f"{self.sim_url}/_sim/config", json=changes)
        assert response.status_code == 200, response.text


class TaskEvents:
    """Celery's event stream of the pipeline's workers (what Flower shows), captured live.

    Redis pub/sub keeps nothing for late listeners, so entering waits for the first event (a
    worker heartbeat, every 2 s) to know the subscription is live before the test acts.
    """

    def __init__(self, redis_url: str) -> None:
        self.app = Celery("task-events", broker=redis_url, set_as_current=False)
        self.seen: list[dict[str, Any]] = []
        self.receiver: Any = None
        self.thread = threading.Thread(target=self._capture, daemon=True)

    def _capture(self) -> None:
        with self.app.connection_for_read() as connection:
            self.receiver = self.app.events.Receiver(connection, handlers={"*": self.seen.append})
            self.receiver.capture(limit=None, timeout=None, wakeup=False)

    def __enter__(self) -> TaskEvents:
        self.thread.start()
        self.wait_for(lambda event: True, timeout_s=15)
        return self

    def __exit__(self, *_: object) -> None:
        if self.receiver is not None:
            self.receiver.should_stop = True
        self.thread.join(timeout=5)

    def wait_for(
        self, matches: Callable[[dict[str, Any]], bool], timeout_s: float = 10
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = next((event for event in list(self.seen) if matches(event)), None)
            if found is not None:
                return found
            time.sleep(0.05)
        kinds = sorted({str(event.get("type")) for event in self.seen})
        raise AssertionError(f"no such Celery event within {timeout_s}s; saw types {kinds}")


def receive_results(
    client: socketio.SimpleClient, count: int, timeout_s: float = 20
) -> list[dict[str, Any]]:
    """The next count charge_result payloads this client receives."""
    results: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    while len(results) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"got {len(results)} of {count} results: {results}")
        event, data = client.receive(timeout=left)
        if event == events.CHARGE_RESULT:
            results.append(data)
    return results


def start_pipeline(
    directory: Path,
    redis_url: str,
    *,
    server_flags: tuple[str, ...] = (),
    worker_flags: tuple[str, ...] = (),
    sim_flags: tuple[str, ...] = (),
    with_worker: bool = True,
    env: dict[str, str] | None = None,
    webhook: bool = False,
) -> Pipeline:
    """Start sim, server and worker side by side (their start-ups overlap), wait for all;
    with `webhook`, the simulator delivers its events to the server's /stripe/webhook."""
    local = LocalPipeline(
        directory,
        env={
            "STRIPE_SECRET_KEY": "sk_test_pipeline",
            "FLASHSALE_SECRET": TEST_SECRET,
            **(env or {}),
        },
    )
    local.use_redis(redis_url)
    pipeline = Pipeline(local)
    try:
        local.start_simulator(*sim_flags)
        server = local.start_server(*server_flags, wait=False, webhook=webhook)
        if with_worker:
            worker = pipeline.start_worker(*worker_flags, wait=False)
        local.wait_ready(server)
        if with_worker:
            local.wait_ready(worker)
        return pipeline
    except BaseException:
        pipeline.stop()
        raise


def fresh_database(redis_server: str) -> str:
    """A database of our private Redis no one else uses, flushed before use."""
    url = f"{redis_server}/{next(_databases)}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    return url


@pytest.fixture(scope="module")
def module_redis_url(redis_server: str) -> str:
    """A database of our private Redis for one test module, flushed before use."""
    return fresh_database(redis_server)


@pytest.fixture(scope="module")
def pipeline_factory(
    module_redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Pipeline]]:
    """start(**options) -> Pipeline on this module's Redis database (or `redis_url`: two
    pipelines on one database share the Celery queue, so one's worker would take the other's
    orders); all stopped after."""
    started: list[Pipeline] = []

    def start(**options: Any) -> Pipeline:
        directory = tmp_path_factory.mktemp("pipeline")
        url = options.pop("redis_url", module_redis_url)
        pipeline = start_pipeline(directory, url, **options)
        started.append(pipeline)
        return pipeline

    try:
        yield start
    finally:
        for pipeline in started:
            pipeline.stop()

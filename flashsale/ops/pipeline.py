"""LocalPipeline: the charge pipeline on this machine as supervised children, started one way.

Rehearse, the chaos injector, the test fixtures and the benchmarks all start Redis, the Stripe
simulator, servers and workers through this class, restart or replace them through it, and read
each component's CPU from it.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import httpx

from flashsale.core import payments
from flashsale.core.store import SentinelAddress
from flashsale.ops import sentinel
from flashsale.ops.processes import Child, flashsale_argv, free_port, wait_for_redis
from flashsale.ops.processes import redis_server_argv as redis_argv
from flashsale.settings import SIM_SECRET_KEY
from flashsale.worker import READY_LINE

WORKER_READY = re.compile(re.escape(READY_LINE))
KINDS = ("redis", "sentinel", "stripe-sim", "server", "worker")
READY_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Role:
    """What a child is and how it was started, so it can be started again the same way."""

    kind: str
    argv: tuple[str, ...]  # without the pipeline's prefix
    flags: tuple[str, ...]  # the component's own flags (no port)
    env: tuple[tuple[str, str], ...] = ()


class LocalPipeline:
    """Redis, the simulator, servers and workers of one sale; stop() leaves no process behind.

    Every child gets `env` (the process environment plus what was given), the pipeline's Redis
    URL, simulator and a secret shared by servers and workers. `prefix` goes before every
    command (e.g. `taskset -c 0`). Logs are `<directory>/logs/<name>.log`, a private Redis
    keeps its data in `<directory>/redis`.
    """

    def __init__(
        self,
        directory: Path,
        *,
        env: Mapping[str, str] | None = None,
        prefix: Sequence[str] = (),
        say: Callable[[str], None] = lambda _line: None,
    ) -> None:
        self.directory = Path(directory)
        self.log_dir = self.directory / "logs"
        self.prefix = list(prefix)
        self.given_env = dict(env or {})
        self.say = say
        self.env: dict[str, str] = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            # A fresh secret per pipeline: room tokens of one sale never open another's rooms.
            "FLASHSALE_SECRET": secrets.token_urlsafe(32),
            **(env or {}),
        }
        self.children: list[Child] = []
        self.roles: dict[int, Role] = {}
        self.redis_url = ""
        self.sim_url: str | None = None
        self.server_url = ""
        self.redis_port = 0
        self.sentinels: SentinelAddress | None = None  # when Redis runs under Sentinel
        self.redis_nodes: dict[int, Child] = {}  # port -> the redis-server on it
        self._replaced: set[int] = set()
        self._replacing = threading.Lock()  # the chaos injector and a supervisor both replace

    # --- starting ---------------------------------------------------------------------------

    def start_redis(self, *, durable: bool = False, extra_args: Sequence[str] = ()) -> str:
        """A private loopback redis-server (AOF when durable), data in <directory>/redis."""
        data_dir = self.directory / "redis"
        data_dir.mkdir(parents=True, exist_ok=True)
        self.redis_port = free_port()
        argv = [*redis_argv(self.redis_port, data_dir, durable=durable), *extra_args]
        child = self._start("redis", "redis", argv, ())
        url = f"redis://127.0.0.1:{self.redis_port}/0"
        wait_for_redis(url, child)
        self.use_redis(url)
        return url

    def start_redis_sentinel(self, *, durable: bool = False) -> str:
        """A primary, a replica and three sentinels (ops/sentinel.py), ready once every
        sentinel sees them all; components get the redis+sentinel:// URL, so they follow a
        failover."""
        primary = self._start_node(durable)
        replica = self._start_node(durable, replica_of=primary)
        sentinel.wait_for_replica(replica, READY_TIMEOUT_S)
        directory = self.directory / "redis"
        ports = [free_port() for _ in range(sentinel.SENTINELS)]
        for index, port in enumerate(ports):
            argv = sentinel.sentinel_argv(port, primary, directory)
            self._start(f"sentinel{index}", "sentinel", argv, ())
        self.sentinels = SentinelAddress(
            tuple(("127.0.0.1", port) for port in ports), sentinel.SERVICE
        )
        sentinel.wait_for_quorum(self.sentinels, replicas=1, timeout_s=READY_TIMEOUT_S)
        url = self.sentinels.url()
        wait_for_redis(url)
        self.redis_port = primary
        self.use_redis(url)
        return url

    def _start_node(self, durable: bool, replica_of: int | None = None) -> int:
        port = free_port()
        data_dir = self.directory / "redis" / f"node-{port}"
        data_dir.mkdir(parents=True, exist_ok=True)
        # Sync a replica at once: the 5 s default waits for more replicas to share one sync.
        argv = [*redis_argv(port, data_dir, durable=durable), "--repl-diskless-sync-delay", "0"]
        if replica_of is not None:
            argv += ["--replicaof", "127.0.0.1", str(replica_of)]
        child = self._start(f"redis-{port}", "redis", argv, ())
        self.redis_nodes[port] = child
        wait_for_redis(f"redis://127.0.0.1:{port}/0", child)
        return port

    def failover_redis(self) -> str:
        """SIGKILL the primary the sentinels name and wait until they promote the replica.

        The old primary stays down: restarted at once it would come back empty (no
        persistence) and take writes as a primary until the sentinels demote it, Redis's
        documented hazard of auto-restarting a primary under Sentinel; the sale carries on
        without a replica, as it would until an operator adds one."""
        if self.sentinels is None:
            raise RuntimeError("failover-redis needs Redis under Sentinel (--redis-sentinel)")
        began = time.monotonic()
        old = sentinel.primary_port(self.sentinels)
        replicas = [port for port in self.redis_nodes if port != old]
        try:
            unreplicated = f"{sentinel.replication_lag(old, replicas)} bytes not yet on the replica"
        except Exception as error:  # the figure is a bonus; the kill is the fault
            unreplicated = f"replication lag unknown ({error})"
        victim = self.redis_nodes.pop(old)
        victim.signal(signal.SIGKILL)
        victim.stop()  # reaps it
        new = sentinel.wait_for_new_primary(self.sentinels, old, READY_TIMEOUT_S)
        self.redis_port = new
        return (
            f"killed primary :{old} ({unreplicated}); :{new} primary after "
            f"{time.monotonic() - began:.1f}s; no replica left"
        )

    def use_redis(self, url: str) -> None:
        """Point every component started from now on at this Redis (one it did not start)."""
        self.redis_url = url
        self.env["FLASHSALE_REDIS_URL"] = url

    def start_simulator(self, *flags: str) -> str:
        """The Stripe simulator on a free port; servers and workers then use it and its keys,
        and the workers' budget keeps to its --rate-limit (they are told, never ask /_sim)."""
        argv = flashsale_argv("stripe-sim", "--port", "0", *flags)
        child = self._start("stripe-sim", "stripe-sim", argv, flags)
        self.sim_url = child.wait_listening(READY_TIMEOUT_S)
        self.env["STRIPE_API_BASE"] = self.sim_url
        # The simulator's own keys, not whatever Stripe keys this shell holds.
        self.env["STRIPE_SECRET_KEY"] = self.given_env.get("STRIPE_SECRET_KEY", SIM_SECRET_KEY)
        if "STRIPE_PUBLISHABLE_KEY" not in self.given_env:
            self.env.pop("STRIPE_PUBLISHABLE_KEY", None)
        self.env["FLASHSALE_STRIPE_LIMIT"] = flag_value(flags, "--rate-limit") or "off"
        self.env["FLASHSALE_STRIPE_ENDPOINT_LIMIT"] = (
            flag_value(flags, "--endpoint-rate-limit") or "auto"
        )
        self.say(f"stripe-sim: {self.sim_url}")
        return self.sim_url

    def start_server(
        self, *flags: str, port: int = 0, wait: bool = True, webhook: bool = False
    ) -> Child:
        """`flashsale serve` on port (0: a free one); the first server's URL is server_url.
        With `webhook`, the simulator delivers every event to its /stripe/webhook."""
        name = "server" if not self.of_kind("server") else f"server{len(self.of_kind('server'))}"
        if webhook:
            port = port or free_port()
            self.register_webhook(f"http://127.0.0.1:{port}/stripe/webhook")
        argv = flashsale_argv("serve", "--port", str(port), *flags)
        child = self._start(name, "server", argv, flags)
        if wait:
            self.wait_ready(child)
        return child

    def register_webhook(self, url: str) -> None:
        """A webhook endpoint at the simulator, through Stripe's own API (POST
        /v1/webhook_endpoints, as a merchant registers one), for the events that end a
        PaymentIntent; the servers started from now on verify deliveries with the whsec_
        secret it answers."""
        if self.sim_url is None:
            raise RuntimeError("start the simulator before registering a webhook")
        answer = httpx.post(
            f"{self.sim_url}/v1/webhook_endpoints",
            data={"url": url, "enabled_events[]": list(payments.FINISHING_EVENTS)},
            headers={"Authorization": f"Bearer {self.env['STRIPE_SECRET_KEY']}"},
            timeout=10,
        )
        answer.raise_for_status()
        self.env["STRIPE_WEBHOOK_SECRET"] = answer.json()["secret"]
        self.say(f"stripe-sim: webhook -> {url}")

    def start_worker(
        self, *flags: str, env: Mapping[str, str] | None = None, wait: bool = True
    ) -> Child:
        """`flashsale worker` with flags (and environment overrides); ready once it consumes."""
        name = f"worker{len(self.of_kind('worker'))}"
        extra = tuple((env or {}).items())
        child = self._start(name, "worker", flashsale_argv("worker", *flags), flags, extra)
        if wait:
            self.wait_ready(child)
        return child

    def wait_ready(self, child: Child, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Until a server listens (its URL becomes server_url if none is yet) or a worker
        consumes; a child that dies first raises ComponentFailed with its log's last lines."""
        if self.roles[id(child)].kind == "worker":
            child.wait_for(WORKER_READY, timeout_s)
            return
        url = child.wait_listening(timeout_s)
        if not self.server_url:
            self.server_url = url
            self.say(f"server: {url}")

    # --- the running pipeline ---------------------------------------------------------------

    def of_kind(self, kind: str) -> list[Child]:
        """Children of a kind, oldest first (a child added to `children` by hand has none)."""
        return [child for child in self.children if self.kind_of(child) == kind]

    def kind_of(self, child: Child) -> str | None:
        role = self.roles.get(id(child))
        return role.kind if role else None

    def workers(self) -> list[Child]:
        return self.of_kind("worker")

    def server(self) -> Child:
        """The server started last (the one in service after restarts)."""
        return self.of_kind("server")[-1]

    def replace_worker(self, dead: Child) -> Child | None:
        """Start a worker like `dead` (stopped or killed already) and wait until it consumes;
        None when it was replaced already (each dead worker gets one replacement)."""
        with self._replacing:
            if id(dead) in self._replaced:
                return None
            self._replaced.add(id(dead))
            role = self.roles[id(dead)]
            child = self.start_worker(*role.flags, env=dict(role.env), wait=False)
        self.wait_ready(child)
        return child

    def was_replaced(self, child: Child) -> bool:
        return id(child) in self._replaced

    def restart_server(self) -> Child:
        """Stop the server and start it again on the same port with the same flags, so
        customers (and loadgen's fallback) find it where it was."""
        old = self.server()
        old.stop()
        port = self.server_url.rsplit(":", 1)[1]
        flags = self.roles[id(old)].flags
        name = f"server-restart{len(self.of_kind('server'))}"
        child = self._start(name, "server", flashsale_argv("serve", "--port", port, *flags), flags)
        child.wait_listening(READY_TIMEOUT_S)
        return child

    def restart_redis(self) -> None:
        """SIGTERM (Redis writes its AOF on a clean shutdown), then the same port and directory."""
        old = self.of_kind("redis")[-1]
        old.stop()
        name = f"redis-restart{len(self.of_kind('redis'))}"
        child = self._start(name, "redis", self.roles[id(old)].argv, ())
        wait_for_redis(self.redis_url, child)

    def stop_kind(self, kind: str) -> None:
        """Stop every child of a kind (a benchmark's next sale gets new servers and workers)."""
        for child in self.of_kind(kind):
            child.stop()
            self.children.remove(child)
            del self.roles[id(child)]
        if kind == "server":
            self.server_url = ""

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds used so far by each kind's live processes and their descendants."""
        used = dict.fromkeys(KINDS, 0.0)
        for child in self.children:
            kind = self.kind_of(child)
            if kind is not None:
                used[kind] += child.cpu_seconds()
        return used

    def stop(self) -> None:
        """Stop every child, newest first (workers before the Redis they drain into)."""
        for child in reversed(self.children):
            child.stop()

    def __enter__(self) -> LocalPipeline:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()

    # --- internals --------------------------------------------------------------------------

    def _start(
        self,
        name: str,
        kind: str,
        argv: Sequence[str],
        flags: Sequence[str],
        extra_env: tuple[tuple[str, str], ...] = (),
    ) -> Child:
        env = {**self.env, **dict(extra_env)}
        child = Child(name, [*self.prefix, *argv], self.log_dir / f"{name}.log", env=env)
        self.children.append(child)
        self.roles[id(child)] = Role(kind, tuple(argv), tuple(flags), extra_env)
        return child.start()


def flag_value(flags: Sequence[str], flag: str) -> str | None:
    """The value given to `flag` in a flag list, or None."""
    items = list(flags)
    for index, item in enumerate(items):
        if item == flag and index + 1 < len(items):
            return items[index + 1]
        if item.startswith(flag + "="):
            return item.split("=", 1)[1]
    return None

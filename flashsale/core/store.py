"""Redis connections for the data layer: decoded strings, bounded timeouts, clear failures.

One URL names the Redis of a sale everywhere (FLASHSALE_REDIS_URL): `redis://host:port/db`
for one server, or `redis+sentinel://host1:port1,host2:port2/db/service` for a primary that
Sentinel watches and fails over (python-socketio's message queue reads the same form; the
Celery broker gets it translated, see core.broker). Every client follows a failover: it asks
the sentinels where the primary is whenever its connection breaks.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool

from flashsale.errors import ConfigError, RedisUnavailable

# Enough for a gevent server's bursts; past it callers wait for a free connection (up to the
# timeout) instead of failing, which redis-py's default pool (100, then "Too many connections")
# does to a flash sale's thousand simultaneous requests.
MAX_CONNECTIONS = 128
SENTINEL_SCHEME = "redis+sentinel"
T = TypeVar("T")
# How long a command whose connection fails (refused, reset, no primary named yet) is tried
# again: a Sentinel failover takes ~2-3 s here, and redis-py's default retry (10 tries, 10 ms
# to 1 s, jittered) gave up inside it: 437 customers answered 503 on GET /session in one.
RIDE_OUT_S = 7.0


class RideOut(Retry):
    """redis-py's Retry, bounded by time instead of a count, for connection errors only.

    Retries nest: a Sentinel-managed connection retries its connect inside the command's
    retry, retries connecting to the address it was given inside that, and asks the
    sentinels, which retry too. Counts multiply (124 s with no sentinel up), and the inner
    loops keep dialling an old primary's address instead of asking the sentinels again. So
    only the outermost call (in this thread or greenlet) retries; nested ones run once, and
    each new attempt starts over from the sentinels. Timeouts are not retried: each already
    waited its timeout. Every command we send is safe to repeat (the order scripts
    de-duplicate and only move a pending order).
    """

    def __init__(self, window_s: float = RIDE_OUT_S) -> None:
        super().__init__(
            ExponentialBackoff(cap=0.25, base=0.025),
            retries=-1,  # until the deadline
            supported_errors=(redis.ConnectionError,),
        )
        self.window_s = window_s
        # Made in connect(), after gevent (if any) has patched threading: greenlet-local there.
        self._local = threading.local()

    def __deepcopy__(self, memo: dict[int, Any]) -> RideOut:
        """redis-py copies a retry into each connection; this one holds no state of its own
        but the deadline of the call in progress, which must be shared, so it stays one."""
        return self

    def call_with_retry(  # type: ignore[override]
        self,
        do: Callable[[], T],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> T:
        if getattr(self._local, "deadline", None) is not None:  # nested: once
            return super().call_with_retry(do, fail, lambda _: False, with_failure_count)
        deadline = self._local.deadline = time.monotonic() + self.window_s

        def retryable(error: Exception) -> bool:
            return time.monotonic() < deadline and (is_retryable is None or is_retryable(error))

        try:
            return super().call_with_retry(do, fail, retryable, with_failure_count)
        finally:
            self._local.deadline = None


@dataclass(frozen=True)
class SentinelAddress:
    """Where the sentinels are and which primary (service) of theirs holds the sale."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0

    def url(self) -> str:
        hosts = ",".join(f"{host}:{port}" for host, port in self.sentinels)
        return f"{SENTINEL_SCHEME}://{hosts}/{self.db}/{self.service}"


def sentinel_address(url: str) -> SentinelAddress | None:
    """The sentinels of a redis+sentinel:// URL; None for any other URL."""
    parsed = urlsplit(url)
    if parsed.scheme != SENTINEL_SCHEME:
        return None
    form = f"{SENTINEL_SCHEME}://host1:port1,host2:port2/db/service"
    sentinels = []
    for part in parsed.netloc.rsplit("@", 1)[-1].split(","):
        host, _, port = part.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"Redis URL {url!r}: each sentinel is host:port ({form})")
        sentinels.append((host, int(port)))
    db, _, service = parsed.path.strip("/").partition("/")
    if not db.isdigit() or not service:
        raise ConfigError(f"Redis URL {url!r}: name the database and the service ({form})")
    return SentinelAddress(tuple(sentinels), service, int(db))


class SentinelBlockingConnectionPool(SentinelConnectionPool, redis.BlockingConnectionPool):
    """Sentinel's pool (connections go to the current primary) that waits for a free
    connection like BlockingConnectionPool (see MAX_CONNECTIONS) instead of failing.

    redis-py has no such class: this combines two public ones (tests/test_private_hooks.py
    checks the combination still holds; redis is pinned to the tested range)."""


def connect(
    url: str, timeout_s: float = 5.0, max_connections: int = MAX_CONNECTIONS
) -> redis.Redis:
    """A client returning str (the data layer expects it); timeouts so a dead Redis fails fast."""
    options = {
        "max_connections": max_connections,
        "timeout": timeout_s,
        "decode_responses": True,
        "socket_connect_timeout": timeout_s,
        "socket_timeout": timeout_s,
        "health_check_interval": 30,
        "retry": RideOut(),  # the connection's: it covers connecting too
    }
    ride_out = options["retry"]
    address = sentinel_address(url)
    if address is not None:
        sentinel = Sentinel(
            list(address.sentinels),
            sentinel_kwargs={
                "socket_timeout": timeout_s,
                "socket_connect_timeout": timeout_s,
                "retry": ride_out,  # asking the sentinels shares the command's deadline
            },
        )
        return sentinel.master_for(
            address.service,
            connection_pool_class=SentinelBlockingConnectionPool,
            db=address.db,
            **options,
        )
    pool = redis.BlockingConnectionPool.from_url(url, **options)
    return redis.Redis(connection_pool=pool)


def check(client: redis.Redis) -> None:
    """Raise RedisUnavailable with the URL-free reason when Redis does not answer PING."""
    try:
        client.ping()
    except redis.RedisError as error:
        raise RedisUnavailable(f"Redis is unavailable: {error}") from error


def open_connections(client: redis.Redis, count: int) -> None:
    """Connect `count` of the pool's connections now, before the doors open: in the herd each
    new connection was set up through a saturated run queue. The pool hands out the most
    recently returned first, so these are the ones used."""
    pool = client.connection_pool
    taken = [pool.get_connection() for _ in range(count)]
    for connection in taken:
        pool.release(connection)

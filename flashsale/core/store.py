"""Redis connections for the data layer: decoded strings, bounded timeouts, clear failures."""

from __future__ import annotations

import redis

from flashsale.errors import RedisUnavailable

# Enough for a gevent server's bursts; past it callers wait for a free connection (up to the
# timeout) instead of failing, which redis-py's default pool (100, then "Too many connections")
# does to a flash sale's thousand simultaneous requests.
MAX_CONNECTIONS = 128


def connect(
    url: str, timeout_s: float = 5.0, max_connections: int = MAX_CONNECTIONS
) -> redis.Redis:
    """A client returning str (the data layer expects it); timeouts so a dead Redis fails fast."""
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout_s,
        decode_responses=True,
        socket_connect_timeout=timeout_s,
        socket_timeout=timeout_s,
        health_check_interval=30,
    )
    return redis.Redis(connection_pool=pool)


def check(client: redis.Redis) -> None:
    """Raise RedisUnavailable with the URL-free reason when Redis does not answer PING."""
    try:
        client.ping()
    except redis.RedisError as error:
        raise RedisUnavailable(f"Redis is unavailable: {error}") from error

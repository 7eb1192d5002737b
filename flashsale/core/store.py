"""Redis connections for the data layer: decoded strings, bounded timeouts, clear failures."""

from __future__ import annotations

import redis

from flashsale.errors import RedisUnavailable


def connect(url: str, timeout_s: float = 5.0) -> redis.Redis:
    """A client returning str (the data layer expects it); timeouts so a dead Redis fails fast."""
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=timeout_s,
        socket_timeout=timeout_s,
        health_check_interval=30,
    )


def check(client: redis.Redis) -> None:
    """Raise RedisUnavailable with the URL-free reason when Redis does not answer PING."""
    try:
        client.ping()
    except redis.RedisError as error:
        raise RedisUnavailable(f"Redis is unavailable: {error}") from error

"""The Celery broker transport of server and worker: kombu's Redis one, one client per channel."""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis

# Celery's `broker_transport`: a transport class path wins over the URL's scheme (redis://).
TRANSPORT = "flashsale.core.broker:Transport"


class Channel(kombu_redis.Channel):
    """kombu's Redis channel, reusing one redis.Redis for its synchronous commands.

    kombu builds a new redis.Redis for every publish, ack and unacked-index update, ~70 us of
    CPU each (its response-callback table), several times per order. A client is only a front
    for the channel's connection pool and is thread-safe, so one per pool does the same work.
    """

    _sync_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)
        client = self._sync_client
        # kombu drops its pool after a connection error; a client of the old pool would be stale.
        if client is None or client.connection_pool is not self.pool:
            client = self._sync_client = super()._create_client()
        return client


class Transport(kombu_redis.Transport):
    Channel = Channel

"""The Celery broker transport of server and worker: kombu's Redis one, one client per channel.

celery_broker(url) gives Celery (the server's producer, the worker, status's ping) its broker
settings for either form of the sale's Redis URL (see core.store): kombu's Redis transport for
redis://, its Sentinel transport (it follows a failover) for redis+sentinel://.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis

from flashsale.core import store

# Celery's `broker_transport`: a transport class path wins over the URL's scheme (redis://).
TRANSPORT = "flashsale.core.broker:Transport"
SENTINEL_TRANSPORT = "flashsale.core.broker:SentinelTransport"


class OneSyncClient:
    """kombu's Redis channel, reusing one redis.Redis for its synchronous commands.

    kombu builds a new redis.Redis for every publish, ack and unacked-index update, ~70 us of
    CPU each (its response-callback table), several times per order. A client is only a front
    for the channel's connection pool and is thread-safe, so one per pool does the same work.
    """

    _sync_client: Any = None
    pool: Any

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)  # type: ignore[misc]
        client = self._sync_client
        # kombu drops its pool after a connection error; a client of the old pool would be stale.
        if client is None or client.connection_pool is not self.pool:
            client = self._sync_client = super()._create_client()  # type: ignore[misc]
        return client


class Channel(OneSyncClient, kombu_redis.Channel):
    pass


class SentinelChannel(OneSyncClient, kombu_redis.SentinelChannel):
    pass


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel


# How long a publish (a new charge, a retry, a result) keeps trying while the broker is away.
# Celery's default gives up after ~0.6 s, less than a Sentinel failover (~2-3 s measured by
# `rehearse --redis-sentinel --chaos failover-redis@8s`); a task.retry() that cannot publish
# then rejects its task, which is dropped until the pending sweeper finds the order. This
# rides out ~15 s (30 tries, 0.5 s apart at most).
PUBLISH_RETRY_POLICY = {
    "max_retries": 30,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.5,
}


def celery_broker(url: str, **transport_options: object) -> dict[str, Any]:
    """broker_url, broker_transport(_options) and the publish retry policy for the sale's
    Redis URL."""
    address = store.sentinel_address(url)
    if address is None:
        return {
            "broker_url": url,
            "broker_transport": TRANSPORT,
            "broker_transport_options": transport_options,
            "task_publish_retry_policy": PUBLISH_RETRY_POLICY,
        }
    return {
        "task_publish_retry_policy": PUBLISH_RETRY_POLICY,
        # kombu's form: one sentinel:// URL per sentinel, separated by ';'.
        "broker_url": ";".join(
            f"sentinel://{host}:{port}/{address.db}" for host, port in address.sentinels
        ),
        "broker_transport": SENTINEL_TRANSPORT,
        "broker_transport_options": {"master_name": address.service, **transport_options},
    }

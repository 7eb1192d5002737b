"""The broker transport: server and worker use it, messages still arrive, one client per pool."""

from __future__ import annotations

import json
import threading

import redis
from celery import Celery
from celery.backends.base import DisabledBackend

from flashsale.core import broker, jobs
from flashsale.server.context import make_producer
from flashsale.settings import Settings
from flashsale.worker.app import celery_config


def settings_for(redis_url: str) -> Settings:
    return Settings.from_env({"FLASHSALE_REDIS_URL": redis_url})


def test_server_and_worker_use_the_transport(redis_url: str) -> None:
    worker = Celery("test-worker", set_as_current=False)
    worker.conf.update(celery_config(settings_for(redis_url)))
    for app in (make_producer(settings_for(redis_url)), worker):
        with app.connection_for_write() as connection:
            assert isinstance(connection.transport, broker.Transport)
            assert isinstance(connection.default_channel, broker.Channel)


def test_published_tasks_arrive_through_one_client(redis_url: str) -> None:
    producer = make_producer(settings_for(redis_url))
    for order_id in ("a", "b", "c"):
        producer.send_task(jobs.CREATE_CHARGE, args=[order_id], queue=jobs.QUEUE)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    queued = [json.loads(raw) for raw in client.lrange(jobs.QUEUE, 0, -1)]
    assert [message["headers"]["task"] for message in queued] == [jobs.CREATE_CHARGE] * 3
    assert sorted(message["headers"]["argsrepr"] for message in queued) == [
        "['a']",
        "['b']",
        "['c']",
    ]
    with producer.connection_for_write() as connection:
        channel = connection.default_channel
        first = channel._create_client()
        assert channel._create_client() is first
        # kombu drops its pool after a connection error: the client must follow the new pool.
        channel._pool = None
        renewed = channel._create_client()
        assert renewed is not first
        assert renewed.connection_pool is channel.pool
        assert renewed.ping()


def test_the_servers_producer_builds_one_disabled_backend(redis_url: str) -> None:
    """Celery would build a backend per thread (per greenlet under gevent): one per app here."""
    producer = make_producer(settings_for(redis_url))
    seen: list[object] = []
    thread = threading.Thread(target=lambda: seen.append(producer.backend))
    thread.start()
    thread.join()
    assert isinstance(producer.backend, DisabledBackend)
    assert seen[0] is producer.backend
    result = producer.send_task(jobs.CREATE_CHARGE, args=["x"], queue=jobs.QUEUE)
    assert result.backend is producer.backend

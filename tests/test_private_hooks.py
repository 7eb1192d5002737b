"""The private hooks flashsale relies on in Celery, kombu and python-socketio: one test each.

pyproject.toml pins celery, kombu and python-socketio to the range these pass on. If an upgrade
removes or
renames a hook, the test names the hook and the flashsale module that uses it; the behaviour
behind each hook is tested with the real thing in test_broker.py and test_pipeline.py.
"""

from __future__ import annotations

import inspect

import pytest
from celery import Celery
from celery.worker.consumer import Consumer as CeleryConsumer
from kombu.asynchronous.hub import Hub
from kombu.transport import redis as kombu_redis

from flashsale.core import broker
from flashsale.server.context import ProducerApp
from flashsale.worker.consumer import Consumer


def must_have(owner: object, name: str, user: str) -> object:
    found = inspect.getattr_static(owner, name, None)
    if found is None:
        pytest.fail(f"{owner!r} no longer has {name!r}, which {user} overrides or calls")
    return found


def test_kombu_redis_channel_still_builds_its_clients_in_create_client() -> None:
    """core/broker.py reuses one redis client per pool through Channel._create_client."""
    hook = must_have(kombu_redis.Channel, "_create_client", "flashsale.core.broker.Channel")
    assert "asynchronous" in inspect.signature(hook).parameters  # type: ignore[arg-type]
    must_have(kombu_redis.Channel, "pool", "flashsale.core.broker.Channel")
    assert issubclass(broker.Transport.Channel, kombu_redis.Channel)


def test_celery_consumer_still_flushes_buffered_events_through_these_hooks() -> None:
    """worker/consumer.py batches task events by overriding on_send_event_buffered and
    calling _flush_events on the hub's timer."""
    must_have(CeleryConsumer, "on_send_event_buffered", "flashsale.worker.consumer.Consumer")
    must_have(CeleryConsumer, "_flush_events", "flashsale.worker.consumer.Consumer")
    must_have(Hub, "call_soon", "flashsale.worker.consumer.Consumer")
    must_have(Hub, "call_later", "flashsale.worker.consumer.Consumer")
    assert Consumer.on_send_event_buffered is not CeleryConsumer.on_send_event_buffered


def test_celery_app_still_builds_its_backend_in_get_backend() -> None:
    """server/context.py keeps one (disabled) backend per app through Celery._get_backend."""
    must_have(Celery, "_get_backend", "flashsale.server.context.ProducerApp")
    app = ProducerApp("hook-test", set_as_current=False)
    assert app.backend is app.backend


def test_python_socketio_still_routes_client_events_through_handle_event() -> None:
    """server/sockets.py refuses reserved client event names by wrapping this method."""
    import socketio

    hook = must_have(socketio.Server, "_handle_event", "flashsale.server.sockets")
    assert list(inspect.signature(hook).parameters) == [  # type: ignore[arg-type]
        "self",
        "eio_sid",
        "namespace",
        "id",
        "data",
    ]

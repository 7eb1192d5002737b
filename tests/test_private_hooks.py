"""The private hooks flashsale relies on in Celery, kombu, python-socketio, python-engineio,
Flask-SocketIO, gevent, gevent-websocket and redis-py: one test each.

pyproject.toml pins celery, kombu, python-socketio, python-engineio, flask-socketio, gevent,
gevent-websocket and redis to the range these pass on. If an upgrade removes or renames a hook,
the test names the hook and the flashsale module that uses it; the behaviour behind each hook is
tested with the real thing in test_broker.py, test_pipeline.py, test_slow_clients.py, test_pings.py,
test_websocket_transport.py, test_held_websockets.py and test_sentinel.py.
"""

from __future__ import annotations

import hashlib
import inspect
from typing import Any

import pytest
from celery import Celery
from celery.worker.consumer import Consumer as CeleryConsumer
from kombu.asynchronous.hub import Hub
from kombu.transport import redis as kombu_redis

from flashsale.core import broker
from flashsale.server.context import ProducerApp
from flashsale.worker.consumer import Consumer

# sha256 of python-socketio 5.18.1's BaseManager.basic_disconnect source, first 16 hex digits.
BASIC_DISCONNECT_SHA256 = "2933b50bc4b2ea7b"
# ... and of python-engineio 4.15.1's Socket.schedule_ping and Socket._send_ping.
SCHEDULE_PING_SHA256 = "fe316639159cd70d"
SEND_PING_SHA256 = "21861287bd38dedc"
# ... and of its Socket._upgrade_websocket and Socket._websocket_handler.
UPGRADE_WEBSOCKET_SHA256 = "02f6ac05441609d3"
WEBSOCKET_HANDLER_SHA256 = "58afe122719282de"
# ... of gevent-websocket 0.10.1's WebSocketHandler.run_websocket, WebSocket.__init__ and
# WebSocket.current_app, and of gevent 26.9's pywsgi WSGIHandler.handle.
RUN_WEBSOCKET_SHA256 = "a3c4964039a9518b"
WEBSOCKET_INIT_SHA256 = "db15065066548b15"
WEBSOCKET_CURRENT_APP_SHA256 = "28f080cef1f51b76"
PYWSGI_HANDLE_SHA256 = "9e7238affc125354"
# ... and of Flask-SocketIO 5.7.0's _SocketIOMiddleware.__call__.
SOCKETIO_MIDDLEWARE_SHA256 = "7cfbb7890542786b"


def must_have(owner: object, name: str, user: str) -> object:
    found = inspect.getattr_static(owner, name, None)
    if found is None:
        pytest.fail(f"{owner!r} no longer has {name!r}, which {user} overrides or calls")
    return found


def must_be_pinned(method: Any, pinned: str, user: str) -> None:
    """Fail when a library method flashsale stands in for no longer has the source it was
    written against (sha256, first 16 hex digits)."""
    digest = hashlib.sha256(inspect.getsource(method).encode()).hexdigest()[:16]
    assert digest == pinned, (
        f"{method.__module__}.{method.__qualname__} changed: compare it with {user}, "
        f"then update the digest ({digest})"
    )


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


def test_python_socketio_still_decodes_client_packets_in_handle_eio_message() -> None:
    """server/sockets.py refuses packets python-socketio cannot take by wrapping this method,
    and asks packet_class and _binary_packet why when it fails."""
    import socketio

    hook = must_have(socketio.Server, "_handle_eio_message", "flashsale.server.sockets")
    assert list(inspect.signature(hook).parameters) == ["self", "eio_sid", "data"]  # type: ignore[arg-type]
    server = socketio.Server()
    assert server.eio.handlers["message"] == server._handle_eio_message  # what sockets.py replaces
    assert isinstance(server._binary_packet, dict)
    with pytest.raises(ValueError):
        server.packet_class(encoded_packet="2[x")


def test_python_socketio_manager_still_keeps_rooms_as_server_rooms_expects() -> None:
    """server/rooms.py indexes a client's rooms in basic_enter_room and basic_leave_room, and
    replaces basic_disconnect and get_rooms, reading the manager's rooms, callbacks and pending
    tables. If basic_disconnect gains work, the override would skip it: its source is pinned."""
    import socketio
    from socketio.base_manager import BaseManager

    for name in ("basic_enter_room", "basic_leave_room", "basic_disconnect", "get_rooms"):
        must_have(BaseManager, name, "flashsale.server.rooms.RoomIndex")
    manager = socketio.Manager()
    for table in ("rooms", "callbacks", "pending_connect", "pending_disconnect"):
        assert isinstance(getattr(manager, table), dict), table
    must_be_pinned(
        BaseManager.basic_disconnect,
        BASIC_DISCONNECT_SHA256,
        "flashsale.server.rooms.RoomIndex.basic_disconnect",
    )


def test_python_engineio_still_schedules_each_ping_as_a_background_task() -> None:
    """server/pings.py takes each socket's next ping from Server.start_background_task, where
    Socket.schedule_ping asks for Socket._send_ping, and does what _send_ping does after its
    sleep. If either changes, the loop would miss pings or send them differently: both
    sources are pinned."""
    from engineio import base_server
    from engineio.socket import Socket

    user = "flashsale.server.pings.SharedPings"
    for name in ("schedule_ping", "_send_ping", "send", "closing", "closed", "last_ping"):
        assert hasattr(Socket(base_server.BaseServer(), "sid"), name), (name, user)
    must_have(base_server.BaseServer, "create_event", user)
    must_be_pinned(Socket.schedule_ping, SCHEDULE_PING_SHA256, user)
    must_be_pinned(Socket._send_ping, SEND_PING_SHA256, user)


def test_python_engineio_still_builds_its_websocket_from_the_servers_driver_table() -> None:
    """server/websocket_transport.py gives one engine.io server its own copy of the driver table
    (`_async`: 'queue' and 'websocket'), whose websocket entry Socket._upgrade_websocket calls
    with Socket._websocket_handler, and serves a websocket-opened socket as that handler does,
    with the writes on demand. Both sources are pinned: if engine.io's handler gains work, the
    replacement would skip it."""
    import engineio
    from engineio.async_drivers import gevent as gevent_driver
    from engineio.socket import Socket
    from gevent.queue import JoinableQueue

    from flashsale.server import websocket_transport

    user = "flashsale.server.websocket_transport"
    assert gevent_driver._async["queue"] is JoinableQueue, user
    for name in ("__call__", "wait", "send", "close"):
        must_have(gevent_driver.WebSocketWSGI, name, user)
    # serve_websocket finds the handshake's handler through the wrapper's gevent-websocket socket.
    assert "self._sock = environ['wsgi.websocket']" in inspect.getsource(
        gevent_driver.WebSocketWSGI.__call__
    ), user
    eio = engineio.Server(async_mode="threading")
    assert isinstance(eio._async, dict) and "websocket" in eio._async, user
    assert hasattr(eio.reason, "TRANSPORT_CLOSE"), user
    for name in ("receive", "close"):
        must_have(Socket, name, user)
    assert "_async['websocket'](" in inspect.getsource(Socket._upgrade_websocket), user
    websocket_transport.install(eio)  # not gevent: left as it was
    assert eio._async["queue"] is not websocket_transport.WakingQueue
    must_be_pinned(Socket._upgrade_websocket, UPGRADE_WEBSOCKET_SHA256, user)
    must_be_pinned(Socket._websocket_handler, WEBSOCKET_HANDLER_SHA256, user)


def test_a_websocket_can_still_be_released_from_its_request() -> None:
    """server/connections.py ReleasesWebsockets ends a websocket's request at the handshake:
    it marks gevent-websocket's WebSocket closed (run_websocket then sends no close frame) and
    sets the handler's socket to None (pywsgi's handle() then stops and neither reads out nor
    closes it). server/held_websockets.py builds its own WebSocket on a stream with read and
    write, and gives it an owner whose server.application has a current_app."""
    from gevent.pywsgi import WSGIHandler
    from geventwebsocket.handler import WebSocketHandler
    from geventwebsocket.websocket import WebSocket

    user = "flashsale.server.connections.ReleasesWebsockets / server/held_websockets.py"
    assert "if not self.websocket.closed:" in inspect.getsource(WebSocketHandler.run_websocket), (
        user
    )
    assert "while self.socket is not None:" in inspect.getsource(WSGIHandler.handle), user
    assert list(inspect.signature(WebSocket).parameters) == ["environ", "stream", "handler"]
    must_be_pinned(WebSocketHandler.run_websocket, RUN_WEBSOCKET_SHA256, user)
    must_be_pinned(WebSocket.__init__, WEBSOCKET_INIT_SHA256, user)
    must_be_pinned(WebSocket.current_app.fget, WEBSOCKET_CURRENT_APP_SHA256, user)  # type: ignore[attr-defined]
    must_be_pinned(WSGIHandler.handle, PYWSGI_HANDLE_SHA256, user)


def test_flask_socketio_middleware_still_only_adds_the_flask_app() -> None:
    """server/serving.py sockets_first hands /socket.io/ requests to engine.io itself, setting
    environ['flask.app'] as Flask-SocketIO's middleware does, found through
    app.extensions['socketio']. If the middleware gains work, the shortcut would skip it: its
    source is pinned."""
    from flask import Flask
    from flask_socketio import SocketIO, _SocketIOMiddleware

    user = "flashsale.server.serving.sockets_first"
    app = Flask("hook-test")
    socketio = SocketIO(app, async_mode="threading")
    assert app.extensions["socketio"] is socketio, user
    assert isinstance(app.wsgi_app, _SocketIOMiddleware), user
    must_have(socketio.server.eio, "handle_request", user)
    must_be_pinned(_SocketIOMiddleware.__call__, SOCKETIO_MIDDLEWARE_SHA256, user)


def test_gevent_pywsgi_still_reads_a_request_through_these_handler_methods() -> None:
    """server/slow_clients.py BoundedReads arms a gevent.Timeout in handle_one_request, moves it on
    in read_requestline, cancels it in get_environ (headers in, before the app) and reads the
    body in handle_one_response; a timeout must pass pywsgi's `except Exception` around header
    parsing, and pywsgi must read out an unread body after run_application, where a
    socket.error ends that quietly."""
    import gevent
    from gevent import pywsgi

    from flashsale.server import gunicorn_conf
    from flashsale.server.slow_clients import BoundedReads

    user = "flashsale.server.serving.BoundedReads"
    for name in (
        "handle_one_request",
        "read_requestline",
        "read_request",
        "get_environ",
        "handle_one_response",
        "run_application",
    ):
        must_have(pywsgi.WSGIHandler, name, user)
    assert issubclass(gevent.Timeout, BaseException)
    assert not issubclass(gevent.Timeout, Exception)

    one_request = inspect.getsource(pywsgi.WSGIHandler.handle_one_request)
    calls = [
        "self.requestline = self.read_requestline()",
        "if not self.read_request(self.requestline)",
        "self.environ = self.get_environ()",
        "self.handle_one_response()",
    ]
    positions = [one_request.find(call) for call in calls]
    assert -1 not in positions and positions == sorted(positions), (
        f"WSGIHandler.handle_one_request no longer calls {calls} in that order ({user})"
    )
    one_response = inspect.getsource(pywsgi.WSGIHandler.handle_one_response)
    assert "self.run_application()" in one_response and "_discard()" in one_response
    assert "except socket.error" in one_response
    environ = inspect.getsource(pywsgi.WSGIHandler.get_environ)
    assert "wsgi.input_terminated" in environ  # set when pywsgi reads the body (no upgrade)

    # gunicorn's handler takes it first, before geventwebsocket's and pywsgi's methods.
    assert gunicorn_conf.Handler.__mro__[1] is BoundedReads


def test_redis_py_still_takes_the_retry_and_pool_flashsale_builds_on() -> None:
    """core/store.py: RideOut overrides Retry.call_with_retry (passing is_retryable and
    with_failure_count through), and SentinelBlockingConnectionPool puts Sentinel's pool in
    front of BlockingConnectionPool, whose release asks owns_connection (Sentinel's override
    drops connections to a former primary)."""
    import redis
    from redis.retry import Retry
    from redis.sentinel import SentinelConnectionPool

    from flashsale.core import store

    hook = must_have(Retry, "call_with_retry", "flashsale.core.store.RideOut")
    parameters = list(inspect.signature(hook).parameters)  # type: ignore[arg-type]
    assert parameters == ["self", "do", "fail", "is_retryable", "with_failure_count"]
    must_have(SentinelConnectionPool, "owns_connection", "flashsale.core.store")
    assert "owns_connection" in inspect.getsource(redis.BlockingConnectionPool.release)
    assert store.SentinelBlockingConnectionPool.__mro__[1:4] == (
        SentinelConnectionPool,
        redis.BlockingConnectionPool,
        redis.ConnectionPool,
    )

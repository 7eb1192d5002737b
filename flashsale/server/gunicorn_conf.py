"""gunicorn settings for the server: `gunicorn -c python:flashsale.server.gunicorn_conf ...`.

Also the base of `flashsale serve --workers N`, which overrides bind and workers. Several
workers need no sticky sessions: clients use the websocket transport only, and every worker
joins the others through the Redis message queue.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from typing import Any

from geventwebsocket.gunicorn.workers import GeventWebSocketWorker
from geventwebsocket.handler import WebSocketHandler
from gunicorn.glogging import Logger
from gunicorn.workers.ggevent import PyWSGIHandler

from flashsale.server.connections import ReleasesWebsockets, SmallReadBuffer
from flashsale.server.serving import redact
from flashsale.server.slow_clients import BoundedReads, ReadTimeouts

# Heroku/Dokku style: $PORT, loopback unless told (the Procfile binds 0.0.0.0:$PORT itself).
bind = [f"{os.environ.get('FLASHSALE_HOST', '127.0.0.1')}:{os.environ.get('PORT', '5000')}"]
workers = int(os.environ.get("WEB_CONCURRENCY", "1"))
worker_class = "flashsale.server.gunicorn_conf.Worker"
# Greenlets per worker, i.e. open sockets per process (one gevent process held 10,000).
worker_connections = 10000
backlog = 4096
# Matches the single-process server: open websockets get 5 s to finish, then are cut.
graceful_timeout = 5
# The worker's heartbeat, not a request timeout. Neither it nor `keepalive` bounds what a client
# sends with this (pywsgi) worker: Handler does, with FLASHSALE_HEADER_TIMEOUT,
# FLASHSALE_BODY_TIMEOUT and FLASHSALE_KEEPALIVE_TIMEOUT (slow_clients.ReadTimeouts).
timeout = 30
keepalive = 5
proc_name = "flashsale-serve"
# Heartbeat files on tmpfs, so a slow disk never makes the master think a worker hung.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
accesslog = "-" if os.environ.get("FLASHSALE_ACCESS_LOG") else None
errorlog = "-"
# gunicorn >= 24 opens a control socket under $HOME by default: two servers would fight over it.
control_socket_disable = True
# Its access log without the room tokens a query string may carry (serving.redact).
logger_class = "flashsale.server.gunicorn_conf.RedactingLogger"

# Workers booted since the master loaded this module; shared memory inherited by fork.
_booted = multiprocessing.Value("i", 0)


class Handler(BoundedReads, SmallReadBuffer, ReleasesWebsockets, WebSocketHandler, PyWSGIHandler):  # type: ignore[misc]
    """geventwebsocket's handler on gunicorn's (the environ gunicorn's logger reads), its
    access lines through gunicorn's access log, and the read timeouts of `flashsale serve`.

    GeventWebSocketWorker's handler logs requests on its own "geventwebsocket.handler" logger,
    which nothing configures under gunicorn: `serve --workers N --access-log` and
    FLASHSALE_ACCESS_LOG wrote no access line at all.
    """

    # From the environment; `serve --workers N` sets its flags' values before forking.
    read_timeouts = ReadTimeouts.from_options()

    def log_request(self) -> None:
        if "101" not in str(self.status):  # a websocket upgrade is logged when it ends
            PyWSGIHandler.log_request(self)


class Worker(GeventWebSocketWorker):  # type: ignore[misc]
    """gunicorn's gevent worker with websockets (geventwebsocket) and our access lines."""

    wsgi_handler = Handler


class RedactingLogger(Logger):  # type: ignore[misc]
    """gunicorn's logger; the access log's request line and query lose their credentials."""

    def atoms(self, resp: Any, req: Any, environ: Any, request_time: Any) -> dict[str, Any]:
        found: dict[str, Any] = super().atoms(resp, req, environ, request_time)
        for key in ("r", "q", "U"):
            if isinstance(found.get(key), str):
                found[key] = redact(found[key])
        return found


def post_worker_init(worker: Any) -> None:
    """Once all workers have built their app, say so once, in the line supervisors parse."""
    with _booted.get_lock():
        _booted.value += 1
        booted = _booted.value
    if booted != worker.cfg.workers:
        return
    host, port = worker.sockets[0].getsockname()[:2]
    print(
        f"flashsale serve: listening on http://{host}:{port} "
        f"(gunicorn, {worker.cfg.workers} workers)",
        file=sys.stdout,
        flush=True,
    )


_SETTINGS = (
    "bind",
    "workers",
    "worker_class",
    "worker_connections",
    "backlog",
    "graceful_timeout",
    "timeout",
    "keepalive",
    "proc_name",
    "worker_tmp_dir",
    "accesslog",
    "errorlog",
    "control_socket_disable",
    "logger_class",
    "post_worker_init",
)


def options() -> dict[str, Any]:
    """This module's settings as gunicorn names them, for an embedded gunicorn application."""
    module = sys.modules[__name__]
    return {name: getattr(module, name) for name in _SETTINGS}

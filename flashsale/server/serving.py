"""Run the app: one gevent process, or N gunicorn workers sharing one socket bound first."""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import sys
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from flashsale.core import events
from flashsale.errors import ComponentFailed, FlashsaleError
from flashsale.server.connections import ReleasesWebsockets, SmallReadBuffer, untrack_greenlet_tree
from flashsale.server.slow_clients import BoundedReads, ReadTimeouts
from flashsale.settings import Settings

# Every response says which server process answered: with several behind one port, operators
# (and the multi-process test) can tell who took a request.
PID_HEADER = "X-Flashsale-Pid"

if TYPE_CHECKING:
    from flask import Flask

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def bind(host: str, port: int, backlog: int = 4096) -> socket.socket:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted sockets inherit it: without it Nagle meets delayed ACKs and every keep-alive
    # response or websocket frame waits ~40 ms (measured: GET /session 44 ms -> 7 ms).
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    listener.bind((host, port))
    listener.listen(backlog)
    return listener


def with_pid_header(app: WsgiApp) -> WsgiApp:
    """Wrap a WSGI app so every HTTP response carries this process's id."""
    pid = str(os.getpid())

    def tagged(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        def start(status: str, headers: list[tuple[str, str]], *exc_info: Any) -> Any:
            headers.append((PID_HEADER, pid))
            return start_response(status, headers, *exc_info)

        return app(environ, start)

    return tagged


def sockets_first(app: Flask) -> WsgiApp:
    """The Flask app, with Socket.IO's requests handed to engine.io straight away.

    Flask-SocketIO's middleware does the same once they have passed Flask's __call__ and its
    own, and it copies the environ to add 'flask.app' (which only its own event handlers read;
    it is set here too). python-socketio keeps a socket's environ for the socket's life: one,
    not two (benchmarks/waiting_room.py measures the memory per socket).
    """
    eio = app.extensions["socketio"].server.eio
    prefix = f"/{events.PATH}/"

    def routed(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO")
        if path is not None and path.startswith(prefix):
            environ["flask.app"] = app
            return eio.handle_request(environ, start_response)  # type: ignore[no-any-return]
        return app(environ, start_response)

    return routed


def load_app(settings: Settings) -> WsgiApp:
    """The server's WSGI app for this process. Call only after gevent.monkey.patch_all()."""
    from flashsale.server import create_app

    untrack_greenlet_tree()
    return with_pid_header(sockets_first(create_app(settings)))


# A room token in a URL (GET /orders/<id>?room_token=...) would be written to the access log.
CREDENTIAL_IN_QUERY = re.compile(r"(room_token=)[^&\s\"]+")


def redact(line: str) -> str:
    """An access-log line without the credentials a query string may carry."""
    return CREDENTIAL_IN_QUERY.sub(r"\1[redacted]", line)


def serve(
    settings: Settings,
    host: str,
    port: int,
    access_log: bool = False,
    timeouts: ReadTimeouts | None = None,
) -> None:
    """Serve from one process until SIGTERM/SIGINT. Call only after gevent.monkey.patch_all()."""
    import gevent
    from gevent import pywsgi
    from geventwebsocket.handler import WebSocketHandler as BaseHandler

    class WebSocketHandler(BoundedReads, SmallReadBuffer, ReleasesWebsockets, BaseHandler):  # type: ignore[misc]
        read_timeouts = timeouts or ReadTimeouts.from_options()

        def format_request(self) -> str:
            return redact(str(super().format_request()))

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # geventwebsocket logs every request at INFO on its own logger: that is the access log.
    logging.getLogger("geventwebsocket.handler").setLevel(
        logging.INFO if access_log else logging.WARNING
    )
    app = load_app(settings)
    listener = bind(host, port)
    bound_port = listener.getsockname()[1]
    server = pywsgi.WSGIServer(
        listener,
        app,
        handler_class=WebSocketHandler,
        log=sys.stderr if access_log else None,
        error_log=sys.stderr,
    )
    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, server.stop, 5)
    # Supervisors parse this exact line for the real port.
    print(
        f"flashsale serve: listening on http://{host}:{bound_port} "
        f"(stripe: {settings.stripe_mode}, notify: {settings.notify}, sku {settings.sale_sku})",
        flush=True,
    )
    server.serve_forever()


def serve_workers(
    settings: Settings,
    host: str,
    port: int,
    workers: int,
    access_log: bool = False,
    timeouts: ReadTimeouts | None = None,
) -> None:
    """Serve from `workers` gunicorn processes (gevent websocket worker) behind one port.

    This process binds the socket (so port 0 works and the printed port is real) and becomes
    gunicorn's master; it stays unpatched and never imports the app. Each worker patches gevent,
    builds its own app and joins the others through the Redis message queue. The last worker to
    boot prints the "listening on" line (gunicorn_conf.post_worker_init).
    """
    from gunicorn.app.base import BaseApplication
    from gunicorn.errors import AppImportError, HaltServer

    from flashsale.server import gunicorn_conf

    listener = bind(host, port)
    listener.set_inheritable(True)
    if timeouts is not None:
        # Set before gunicorn forks: every worker's handler inherits it.
        gunicorn_conf.Handler.read_timeouts = timeouts

    class FlashsaleGunicorn(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for name, value in gunicorn_conf.options().items():
                # Skip settings an older gunicorn does not know (the -c path ignores them too).
                if name in self.cfg.settings:
                    self.cfg.set(name, value)
            # gunicorn adopts the socket bound above instead of binding its own.
            self.cfg.set("bind", [f"fd://{listener.fileno()}"])
            self.cfg.set("workers", workers)
            if access_log:
                self.cfg.set("accesslog", "-")

        def load(self) -> WsgiApp:
            # Runs in each worker, after its gevent worker class ran monkey.patch_all().
            try:
                return load_app(settings)
            except FlashsaleError as error:
                # gunicorn prints the message alone and stops every worker.
                raise AppImportError(str(error)) from None

    master_pid = os.getpid()
    try:
        FlashsaleGunicorn().run()
    except SystemExit as stop:
        # A forked worker unwinds through here too: its exit code tells the master why it
        # stopped (4 = the app failed to load: stop everything, do not respawn), keep it.
        if os.getpid() != master_pid:
            raise
        if stop.code not in (None, 0):
            raise ComponentFailed(
                f"gunicorn stopped with code {stop.code}: a server process failed to start"
            ) from None
    except HaltServer as halt:
        # While the master halts for one worker that failed to load, reaping a second one that
        # failed the same way raises HaltServer again, past gunicorn's own handler (seen in
        # about 1 run in 5 with two workers and Redis down).
        if os.getpid() != master_pid:
            raise
        raise ComponentFailed(
            f"gunicorn stopped with code {halt.exit_status}: a server process failed to start"
        ) from None

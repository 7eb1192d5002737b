"""The gunicorn worker class of `serve --workers N`: geventwebsocket's, with our header reader."""

from __future__ import annotations

from geventwebsocket.gunicorn.workers import GeventWebSocketWorker

from flashsale.server.headers import Handler


class Worker(GeventWebSocketWorker):  # type: ignore[misc]
    wsgi_handler = Handler

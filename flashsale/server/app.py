"""The Flask + Flask-SocketIO app of the charge pipeline: create_app(settings) wires it all."""

from __future__ import annotations

import logging

import redis
from flask import Flask, Request, Response, jsonify, request
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from flask_socketio import SocketIO
from werkzeug.exceptions import HTTPException

from flashsale.core import events, store
from flashsale.errors import ConfigError
from flashsale.server import rooms, webhooks, websocket_transport
from flashsale.server.admission import InFlightLimit
from flashsale.server.context import ServerContext, make_producer, make_stock_feed
from flashsale.server.http import bp
from flashsale.server.metrics import ServerMetrics, route_of
from flashsale.server.pings import SharedPings
from flashsale.server.sale import open_sale
from flashsale.server.sockets import register_handlers
from flashsale.server.validation import ApiError, json_body
from flashsale.server.waiting_room import WaitingRoom
from flashsale.settings import Settings

log = logging.getLogger("flashsale.server")

MAX_BODY_BYTES = 16 * 1024
# Codes for the errors werkzeug raises itself (routing, body size), so clients get our shape.
HTTP_ERROR_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


class CookieSessions(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, opened without a signing serializer when there is no cookie.

    No route keeps anything in the session and no client sends its cookie, yet Flask opens one
    for every request and Socket.IO event, building a serializer each time only to find none.
    """

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        if app.secret_key and self.get_cookie_name(app) not in request.cookies:
            return self.session_class()
        return super().open_session(app, request)


def create_app(settings: Settings, async_mode: str = "gevent") -> Flask:
    """Build the app: checks Redis, opens the sale (server.sale), wires routes and sockets.

    The gevent async mode needs `gevent.monkey.patch_all()` to have run first in the process.
    """
    if not settings.secret:
        raise ConfigError("the server needs a secret: see Settings.with_served_secret")
    app = Flask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=MAX_BODY_BYTES, SECRET_KEY=settings.secret)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.session_interface = CookieSessions()

    client = store.connect(settings.redis_url)
    store.check(client)
    store.open_connections(client, settings.max_in_flight)
    open_sale(client, settings)

    socketio = SocketIO(
        app,
        async_mode=async_mode,
        transports=["websocket"],
        path=events.PATH,
        ping_interval=settings.ping_interval_s,
        # Given, not named by message_queue: Flask-SocketIO hands any URL but redis:// to its
        # Kombu manager, which does not follow a Sentinel failover; python-socketio's Redis
        # manager reads redis+sentinel:// as core.store does. server/rooms.py adds the index
        # that makes a disconnect cost the same at any crowd size.
        client_manager=rooms.RedisManager(settings.redis_url, channel=events.CHANNEL),
    )
    SharedPings(socketio.server.eio).install()
    websocket_transport.install(socketio.server.eio)
    metrics = ServerMetrics(client, settings.sale_sku)
    stock_feed = make_stock_feed(socketio, client, metrics)
    ctx = ServerContext(
        settings=settings,
        redis=client,
        producer=make_producer(settings),
        metrics=metrics,
        socketio=socketio,
        stock_feed=stock_feed,
    )
    if settings.waiting_room:
        ctx.room = WaitingRoom(settings, client, socketio, metrics, stock_feed)
        ctx.room.start()
    app.extensions["flashsale"] = ctx
    InFlightLimit(settings.max_in_flight, settings.queue_wait_s, metrics).install(app)
    app.register_blueprint(bp)
    app.register_blueprint(webhooks.bp)
    register_handlers(socketio, ctx)
    register_error_handlers(app)

    @app.after_request
    def count_request(response: Response) -> Response:
        route = route_of(request)
        ctx.metrics.requests.labels(request.method, route, str(response.status_code)).inc()
        return response

    return app


def error_response(status: int, code: str, message: str) -> tuple[Response, int]:
    return jsonify({"error": {"code": code, "message": message}}), status


def register_error_handlers(app: Flask) -> None:
    """Every refusal and failure is JSON with a code and a message; never an HTML page."""

    @app.errorhandler(ApiError)
    def api_error(error: ApiError) -> tuple[Response, int]:
        return error_response(error.status, error.code, error.message)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> tuple[Response, int]:
        status = error.code or 500
        code = HTTP_ERROR_CODES.get(status, error.name.lower().replace(" ", "_"))
        return error_response(status, code, error.description or error.name)

    @app.errorhandler(redis.RedisError)
    def redis_down(error: redis.RedisError) -> tuple[Response, int]:
        route = route_of(request)
        log.error("Redis error on %s %s%s: %s", request.method, route, whose(request), error)
        metrics = app.extensions["flashsale"].metrics
        metrics.redis_errors.labels(route, redis_error_kind(error)).inc()
        return error_response(503, "service_unavailable", "the order store is unavailable")

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> tuple[Response, int]:
        log.exception("unhandled error on %s %s%s", request.method, request.path, whose(request))
        return error_response(500, "internal_error", "internal error; it has been logged")


def whose(req: Request) -> str:
    """' (order X, customer Y)' for an error line, from the path and a JSON or form body."""
    order = (req.view_args or {}).get("order_id")
    customer = None
    body = json_body(req) if req.is_json else req.form
    if body is not None and hasattr(body, "get"):  # a JSON object or a form, not a list
        value = body.get("customer_id")
        customer = value if isinstance(value, str) else None
    parts = [f"order {order}" if order else "", f"customer {customer[:40]}" if customer else ""]
    shown = ", ".join(part for part in parts if part)
    return f" ({shown})" if shown else ""


def redis_error_kind(error: redis.RedisError) -> str:
    """Why Redis failed a request: the pool ran dry (every connection busy), or another cause."""
    if isinstance(error, redis.ConnectionError) and "No connection available" in str(error):
        return "pool_exhausted"
    return type(error).__name__

"""The HTTP routes: checkout page, session, charges, orders, notify, health and metrics."""

from __future__ import annotations

import logging
import uuid
from typing import Any
from urllib.parse import urlsplit

import redis
from flask import Blueprint, Response, jsonify, render_template, request

from flashsale.core import inventory, keys, orders, signing
from flashsale.errors import NotHeld, OrderInProgress, SoldOut
from flashsale.server.context import ServerContext, context
from flashsale.server.validation import (
    ApiError,
    ChargeRequest,
    check_fields,
    is_uuid,
    json_body,
    parse_charge,
)
from flashsale.server.waiting_room import WaitingRoom

log = logging.getLogger("flashsale.server")
bp = Blueprint("http", __name__)

ROOM_TOKEN_HEADER = "X-Room-Token"


def new_session(ctx: ServerContext) -> dict[str, Any]:
    """A fresh customer id with its signed room token, and everything a client needs to pay."""
    settings = ctx.settings
    customer_id = str(uuid.uuid4())
    session = {
        "customer_id": customer_id,
        "room_token": signing.issue_room_token(settings.secret, customer_id),
        "publishable_key": settings.stripe_publishable_key,
        "stripe_api_base": settings.stripe_api_base,
        "stripe_js_url": settings.effective_stripe_js_url,
        "payments": settings.payments,
        "sale": {
            "sku": settings.sale_sku,
            "name": settings.sale_name,
            "amount": settings.sale_price,
            "currency": settings.sale_currency,
            "stock_left": inventory.stock_left(ctx.redis, settings.sale_sku),
            "max_quantity": settings.max_quantity,
        },
    }
    if ctx.room is not None:
        session["waiting_room"] = ctx.room.ticket(customer_id)
    return session


def no_query_params(allowed: frozenset[str] = frozenset()) -> None:
    unknown = sorted(set(request.args) - allowed)
    if unknown:
        raise ApiError(400, "unknown_field", f"unknown query parameter {unknown[0]!r}")


@bp.get("/")
def checkout_page() -> Response:
    session = new_session(context())
    response = Response(render_template("checkout.html", session=session), mimetype="text/html")
    # The page embeds a fresh credential (the room token): no cache may hand it to someone else.
    response.headers["Cache-Control"] = "no-store"
    response.headers["Content-Security-Policy"] = checkout_csp(session, request.host)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    return response


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def checkout_csp(session: dict[str, Any], host: str) -> str:
    """Scripts only from us and Stripe, so an injected script cannot read the room token.

    Stripe's hosts follow its security guide (docs.stripe.com/security/guide); in simulator
    mode the simulator's origin takes their place. No inline script: the page keeps its code
    in static/checkout.js.
    """
    stripe_js = origin_of(session["stripe_js_url"])
    stripe_api = origin_of(session["stripe_api_base"])
    real_stripe = "https://js.stripe.com https://*.js.stripe.com"
    return "; ".join(
        [
            "default-src 'self'",
            f"script-src 'self' {stripe_js} {real_stripe}",
            f"connect-src 'self' ws://{host} wss://{host} {stripe_api} https://api.stripe.com",
            f"frame-src {stripe_js} {real_stripe} https://hooks.stripe.com",
            "img-src 'self' data: https://*.stripe.com",
            # Stripe.js positions its iframes with inline styles.
            "style-src 'self' 'unsafe-inline'",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


@bp.get("/session")
def session_json() -> Response:
    no_query_params()
    response = jsonify(new_session(context()))
    # It carries a fresh credential: no cache may keep it and hand it to the next customer.
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.post("/charges")
def create_charge() -> tuple[Response, int]:
    ctx = context()
    settings = ctx.settings
    refuse_cross_origin()
    charge = parse_charge(request, settings.max_quantity)
    owner = signing.verify_room_token(settings.secret, charge.room_token, settings.room_token_ttl_s)
    if owner is None:
        raise ApiError(403, "invalid_room_token", "the room token is forged or expired")
    if owner != charge.customer_id:
        raise ApiError(403, "forbidden", "the room token belongs to another customer")
    if ctx.room is not None:
        check_admission(ctx.room, charge)
    try:
        placement = orders.place_order(
            ctx.redis,
            customer_id=charge.customer_id,
            token=charge.token,
            sku=settings.sale_sku,
            quantity=charge.quantity,
            unit_price=settings.sale_price,
            currency=settings.sale_currency,
            held=ctx.room is not None,
        )
    except SoldOut as error:
        raise ApiError(409, "sold_out", str(error)) from None
    except NotHeld:
        if ctx.room is not None and ctx.room.is_over():
            raise ApiError(409, "sold_out", "sold out: every unit is sold") from None
        raise ApiError(
            403,
            "hold_lapsed",
            "no unit is held for you: your admission lapsed (or you left); join the queue again",
        ) from None
    except OrderInProgress:
        raise ApiError(
            409, "order_in_progress", "your held unit already has an order being charged"
        ) from None
    order = placement.order
    if not placement.created:
        # The same customer submitted the same card token again: that is the same order.
        return jsonify({"order_id": order.order_id, "status": order.status}), 200
    if not order.held:
        # A held unit left the free stock at admission, when the room told the watchers.
        ctx.stock_feed.changed(order.sku)
    try:
        ctx.enqueue_charge(order.order_id)
    except Exception as error:
        log.error(
            "POST /charges: could not enqueue order %s (customer %s): %s",
            order.order_id,
            order.customer_id,
            error,
        )
        _, failed = orders.finalize(
            ctx.redis,
            order.order_id,
            orders.FAILED,
            code="queue_unavailable",
            message=str(error),
            sku=order.sku,
        )
        if failed.released:  # the unit just reserved is back (a held one may stay the customer's)
            ctx.stock_feed.changed(order.sku)
        raise ApiError(503, "service_unavailable", "could not queue the charge; retry") from None
    return jsonify({"order_id": order.order_id, "status": order.status}), 202


def check_admission(room: WaitingRoom, charge: ChargeRequest) -> None:
    """With the waiting room on, only an admitted customer may order, one unit at a time."""
    if not charge.admission_token:
        raise ApiError(
            403,
            "not_admitted",
            "the waiting room is on: wait for your admitted event and send its admission_token",
        )
    admitted = room.admitted_customer(charge.admission_token)
    if admitted is None:
        raise ApiError(403, "invalid_admission_token", "the admission token is forged or expired")
    if admitted != charge.customer_id:
        raise ApiError(403, "forbidden", "the admission token belongs to another customer")
    if charge.quantity != 1:
        raise ApiError(400, "invalid_field", "the waiting room holds one unit per customer")


def refuse_cross_origin() -> None:
    """A browser on another site must not spend our customers' sessions (CSRF)."""
    origin = request.headers.get("Origin")
    if origin is None:
        return
    allowed = context().settings.allowed_origins
    parts = urlsplit(origin)
    given = f"{parts.scheme.lower()}://{parts.netloc.lower()}"
    own = f"{request.scheme}://{(request.host or '').lower()}"
    # Scheme and host both: http://shop is not https://shop. Behind a proxy that terminates
    # TLS, FLASHSALE_ALLOWED_ORIGINS names the public origin instead of trusting Host.
    if given not in allowed and (allowed or given != own):
        raise ApiError(403, "cross_origin", "cross-origin requests are not accepted")


@bp.get("/orders/<order_id>")
def get_order(order_id: str) -> Response:
    ctx = context()
    no_query_params(frozenset({"room_token"}))
    if not is_uuid(order_id):
        raise ApiError(400, "invalid_order_id", "order ids are UUIDs")
    token = request.args.get("room_token") or request.headers.get(ROOM_TOKEN_HEADER)
    if not token:
        raise ApiError(401, "missing_room_token", f"send room_token or {ROOM_TOKEN_HEADER}")
    owner = signing.verify_room_token(ctx.settings.secret, token, ctx.settings.room_token_ttl_s)
    if owner is None:
        raise ApiError(403, "invalid_room_token", "the room token is forged or expired")
    order = orders.find_order(ctx.redis, order_id)
    # Someone else's order looks exactly like a missing one: ids are not disclosed.
    if order is None or order.customer_id != owner:
        raise ApiError(404, "not_found", "no such order for this customer")
    return jsonify(order.public())


@bp.post("/notify")
def notify() -> Response:
    """The worker's signed HTTP hop: emit the order's stored result to its customer's room."""
    ctx = context()
    body = request.get_data(cache=True)
    signature = signing.verify_body(
        ctx.settings.secret, body, request.headers.get(signing.SIGNATURE_HEADER)
    )
    if signature is None:
        raise ApiError(
            403,
            "bad_signature",
            "notify requests must be signed with the shared secret, within "
            f"{signing.NOTIFY_MAX_AGE_S} s",
        )
    # Seen once: a captured call sent again (within its age limit) changes nothing.
    seen = keys.notify_seen(signature.nonce)
    if not ctx.redis.set(seen, signature.stamp, nx=True, ex=2 * signing.NOTIFY_MAX_AGE_S):
        raise ApiError(403, "replayed_signature", "this signed notify call was already made")
    if request.mimetype != "application/json":
        raise ApiError(415, "unsupported_media_type", "send application/json")
    data = json_body(request)
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_json", "the body must be a JSON object")
    check_fields(data, {"order_id"}, ("order_id",))
    if not is_uuid(data["order_id"]):
        raise ApiError(400, "invalid_order_id", "order ids are UUIDs")
    order = orders.find_order(ctx.redis, data["order_id"])
    if order is None:
        raise ApiError(404, "not_found", "no such order")
    # In http mode the worker has no message queue: the server also tells the stock watchers.
    if not ctx.tell_customer(order):
        raise ApiError(409, "not_final", "the order has no final state yet")
    return jsonify({"delivered": True, "order_id": order.order_id})


@bp.get("/healthz")
def healthz() -> tuple[Response, int]:
    ctx = context()
    try:
        ctx.redis.ping()
    except redis.RedisError as error:
        return jsonify({"status": "unavailable", "redis": f"down: {error}"}), 503
    return jsonify({"status": "ok", "redis": "ok"}), 200


@bp.get("/metrics")
def metrics() -> Response:
    return Response(context().metrics.render(), mimetype="text/plain; version=0.0.4")

"""POST /stripe/webhook: Stripe's signed events finish orders paid with PaymentIntents.

Verified with the stripe library (`stripe.WebhookSignature.verify_header`, the check
`stripe.Webhook.construct_event` makes; the whsec_ secret, Stripe's 300 s tolerance). A delivery
whose exact signature was already received (a replay, or Stripe's own duplicate signed in the
same second) is counted and changes nothing. An event is applied at most once by its id, in any
order: an order takes one final state (the worker's answer or the event, whichever comes first),
so a late, duplicated or reordered event changes nothing. An event for an order this Redis does
not know is answered 200 and logged, or Stripe would retry it for days. All of that is one Redis
step per delivery (core.webhook_deliveries).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from typing import Any

import stripe
from flask import Blueprint, Response, jsonify, request

from flashsale.core import orders, payments, webhook_deliveries
from flashsale.server.context import ServerContext, context
from flashsale.server.validation import ApiError

log = logging.getLogger("flashsale.server")
bp = Blueprint("webhooks", __name__)

SIGNATURE_TOLERANCE_S = 300  # Stripe's own default
EVENT_MEMORY_S = 7 * 86400  # longer than Stripe retries an event (3 days)


def refuse(ctx: ServerContext, status: int, outcome: str, message: str) -> ApiError:
    ctx.metrics.webhooks.labels(outcome).inc()
    log.warning("stripe webhook refused (%s): %s", outcome, message)
    return ApiError(status, outcome, message)


@bp.post("/stripe/webhook")
def stripe_webhook() -> Response:
    ctx = context()
    secret = ctx.settings.stripe_webhook_secret
    if not secret:
        raise refuse(ctx, 503, "not_configured", "set STRIPE_WEBHOOK_SECRET to receive events")
    header = request.headers.get("Stripe-Signature", "")
    if not header:
        raise refuse(ctx, 400, "missing_signature", "a Stripe-Signature header is required")
    payload = request.get_data(cache=True)
    try:
        # The stripe library's own check (what Webhook.construct_event runs first); the event
        # is then read as plain JSON: construct_event's StripeObject tree cost 1.16 ms of CPU
        # per event here against 0.03 ms for the check and json.loads (benchmarks/RESULTS.md 8).
        stripe.WebhookSignature.verify_header(payload, header, secret, SIGNATURE_TOLERANCE_S)
        event = read_event(payload)
    except stripe.SignatureVerificationError as error:
        stale = "tolerance" in str(error).lower()
        raise refuse(
            ctx,
            400,
            "stale_signature" if stale else "bad_signature",
            f"signed more than {SIGNATURE_TOLERANCE_S} s ago" if stale else "bad signature",
        ) from None
    except ValueError:
        raise refuse(ctx, 400, "bad_payload", "the body is not a Stripe event") from None
    kind, intent = event["type"], event["data"]["object"]
    finish, decided = final_state(ctx, kind, intent)
    delivery = webhook_deliveries.record(
        ctx.redis,
        signature_digest=hashlib.sha256(header.encode()).hexdigest(),
        event_id=event["id"],
        signature_memory_s=2 * SIGNATURE_TOLERANCE_S,
        event_memory_s=EVENT_MEMORY_S,
        finish=finish,
        outcome=decided,
    )
    outcome = delivery.outcome
    if outcome == webhook_deliveries.REPLAYED_SIGNATURE:
        # A captured delivery sent again, or Stripe's own duplicate signed in the same second
        # (Stripe sends some events twice; the two cannot be told apart): counted, changes
        # nothing, and 200, or Stripe would retry and mark the endpoint failing.
        log.warning("stripe webhook %s: a signed delivery already received", event["id"])
    elif outcome == webhook_deliveries.UNKNOWN_ORDER:
        log.warning(
            "stripe webhook %s for PaymentIntent %s: no such order %r",
            kind,
            intent.get("id"),
            (intent.get("metadata") or {}).get("order_id"),
        )
    elif outcome == webhook_deliveries.PROCESSED and delivery.order is not None:
        order = delivery.order
        log.info(
            "order %s %s %s (webhook %s)", order.order_id, order.status, order.code or "", kind
        )
        ctx.tell_customer(order)
    ctx.metrics.webhooks.labels(outcome).inc()
    return jsonify({"received": True, "outcome": outcome})


def read_event(payload: bytes) -> dict[str, Any]:
    """The event as JSON, with the fields we read; ValueError when it is not one."""
    event = json.loads(payload)
    if not (
        isinstance(event, dict)
        and isinstance(event.get("id"), str)
        and isinstance(event.get("type"), str)
        and isinstance(event.get("data"), dict)
        and isinstance(event["data"].get("object"), dict)
    ):
        raise ValueError("not a Stripe event")
    return event


def final_state(
    ctx: ServerContext, kind: str, intent: Mapping[str, Any]
) -> tuple[webhook_deliveries.Finish | None, str]:
    """What the event does: the final state it gives its order, or the outcome it has without
    one (ignored, unknown_order, not_final). Decided before Redis is asked anything, from the
    signed event: the PaymentIntent's metadata names the order and its sale."""
    if kind not in payments.FINISHING_EVENTS:
        return None, "ignored"
    metadata = intent.get("metadata") or {}
    order_id, sku = metadata.get("order_id"), metadata.get("sku")
    if not isinstance(order_id, str):
        return None, webhook_deliveries.UNKNOWN_ORDER
    if not isinstance(sku, str):
        # Not one of ours as we create them (the worker names the sale): read the order.
        order = orders.find_order(ctx.redis, order_id)
        if order is None:
            return None, webhook_deliveries.UNKNOWN_ORDER
        sku = order.sku
    try:
        outcome = payments.intent_outcome(intent)
    except (payments.StripeUnavailable, KeyError, TypeError):  # not final, or no status at all
        outcome = None
    if outcome is None or not outcome.final:
        log.warning("stripe webhook %s: PaymentIntent %s is not final", kind, intent.get("id"))
        return None, "not_final"
    finish = webhook_deliveries.Finish(order_id=order_id, sku=sku, outcome=outcome)
    return finish, ""

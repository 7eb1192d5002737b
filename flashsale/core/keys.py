"""Every Redis key flashsale uses, in one namespace (the layout is described in core.orders)."""

from __future__ import annotations

import hashlib

PREFIX = "flashsale:"


def order(order_id: str) -> str:
    return f"{PREFIX}order:{order_id}"


def order_index() -> str:
    return f"{PREFIX}orders"


def pending_orders() -> str:
    return f"{PREFIX}orders:pending"


def customer_orders(customer_id: str) -> str:
    return f"{PREFIX}customer:{customer_id}:orders"


def dedupe(customer_id: str, token: str) -> str:
    # The token is hashed so a hostile one cannot make the key long; it is never needed back.
    digest = hashlib.sha256(token.encode()).hexdigest()[:32]
    return f"{PREFIX}dedupe:{customer_id}:{digest}"


def state_counts() -> str:
    return f"{PREFIX}counts"


def notify_seen(nonce: str) -> str:
    """A /notify signature's nonce, kept past its age limit so it is accepted once."""
    return f"{PREFIX}notify-seen:{nonce[:64]}"


def webhook_event_seen(event_id: str) -> str:
    """A Stripe event already applied (Stripe delivers an event again until it hears 200)."""
    return f"{PREFIX}webhook-event:{event_id[:64]}"


def webhook_signature_seen(digest: str) -> str:
    """A Stripe-Signature header already accepted: the same delivery sent again is a replay."""
    return f"{PREFIX}webhook-signature:{digest[:64]}"


def sku_state_counts(sku: str) -> str:
    """Orders per state of one sale (several sales can share a Redis)."""
    return f"{PREFIX}counts:{sku}"


def stock(sku: str) -> str:
    return f"{PREFIX}stock:{sku}"


def initial_stock(sku: str) -> str:
    return f"{PREFIX}stock:{sku}:initial"


# The waiting room of one sale (core.waiting_room describes each).
def room_queue(sku: str) -> str:
    return f"{PREFIX}room:{sku}:queue"


def room_tickets(sku: str) -> str:
    return f"{PREFIX}room:{sku}:tickets"


def room_holds(sku: str) -> str:
    return f"{PREFIX}room:{sku}:holds"


def room_gone(sku: str) -> str:
    return f"{PREFIX}room:{sku}:gone"


def room_state(sku: str) -> str:
    return f"{PREFIX}room:{sku}:state"


def room_retrying(sku: str) -> str:
    return f"{PREFIX}room:{sku}:retrying"

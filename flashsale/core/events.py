"""Socket.IO event names, THE message-queue channel, and the payloads both sides agree on."""

from __future__ import annotations

from typing import Any

# Server and worker must publish/subscribe on the same Redis channel. python-socketio's default
# ("socketio") differs from Flask-SocketIO's ("flask-socketio"): a mismatch silently drops every
# emit, so both sides take this one constant.
CHANNEL = "flashsale-socketio"
NAMESPACE = "/"
# Where clients reach Socket.IO: /socket.io/ (Flask-SocketIO's and the clients' default).
PATH = "socket.io"

# server -> client
JOINED = "joined"  # {"customer_id": ...} once the socket is in its private room
CHARGE_RESULT = "charge_result"  # a final outcome of one order, see charge_result()
STOCK = "stock"  # {"sku": ..., "stock_left": ...} to stock_room(sku), coalesced (core.stock_feed)
# The waiting room (server.waiting_room), to a queued customer's room or socket:
QUEUE = "queue"  # {"position": n, "eta_s": s or None}, at least every QUEUE_UPDATE_S
ADMITTED = "admitted"  # {"admission_token": ..., "hold_s": s}: a unit is held, pay now
SOLD_OUT = "sold_out"  # {"sku": ...} to queue_room(sku): every unit is sold
# {"order_id", "payment_intent", "client_secret"}: the card asks for 3D Secure; the page hands
# the client secret to Stripe.js (handleNextAction), and the order ends once Stripe says so.
ACTION_REQUIRED = "action_required"
HOLD_LAPSED = "hold_lapsed"  # {"sku": ...}: the customer's hold ran out; the unit went back
# client -> server: the customer leaves the queue, or gives back the unit they hold (a declined
# customer who will not try another card), at once rather than after the grace. Data: the
# leaving customer's room_token, and spare=true for a ticket nobody used (a reloaded page's
# freshly rendered identity, the tab kept its stored one): not counted as abandoned.
LEAVE = "leave"

# Final order outcomes as a customer sees them.
SUCCEEDED = "succeeded"
DECLINED = "declined"
FAILED = "failed"
FINAL_STATUSES = (SUCCEEDED, DECLINED, FAILED)
# Not final: the customer must authenticate (3D Secure) before Stripe can say.
REQUIRES_ACTION = "requires_action"


def room_for(customer_id: str) -> str:
    """The private Socket.IO room of one customer."""
    return f"customer:{customer_id}"


def stock_room(sku: str) -> str:
    """The room of sockets that connected with auth watch_stock=true: they get STOCK events."""
    return f"stock:{sku}"


def queue_room(sku: str) -> str:
    """The room of every socket whose customer waits in the sale's queue: SOLD_OUT goes there."""
    return f"queue:{sku}"


def charge_result(
    *,
    order_id: str,
    status: str,
    amount: int,
    currency: str,
    charge_id: str | None = None,
    code: str | None = None,
    decline_code: str | None = None,
    message: str | None = None,
) -> dict[str, Any]:
    """The charge_result payload; every key is always present so clients need no guesswork."""
    if status not in FINAL_STATUSES:
        raise ValueError(f"not a final status: {status!r}")
    return {
        "order_id": order_id,
        "status": status,
        "charge_id": charge_id,
        "amount": amount,
        "currency": currency,
        "code": code,
        "decline_code": decline_code,
        "message": message,
    }


def action_required(order_id: str, client_secret: str) -> dict[str, Any]:
    return {
        "order_id": order_id,
        "payment_intent": client_secret.partition("_secret_")[0],
        "client_secret": client_secret,
    }


def joined(customer_id: str) -> dict[str, Any]:
    return {"customer_id": customer_id}


def stock(sku: str, stock_left: int) -> dict[str, Any]:
    return {"sku": sku, "stock_left": stock_left}


def queue(position: int, eta_s: float | None) -> dict[str, Any]:
    return {"position": position, "eta_s": None if eta_s is None else round(eta_s, 1)}


def admitted(admission_token: str, hold_s: float) -> dict[str, Any]:
    return {"admission_token": admission_token, "hold_s": round(hold_s, 1)}


def sold_out(sku: str) -> dict[str, Any]:
    return {"sku": sku}

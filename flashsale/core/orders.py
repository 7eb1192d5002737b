"""Orders: their states and allowed transitions, and their persistence in Redis.

Redis key layout (every key starts with ``flashsale:``; builders live in ``core.keys``)::

    flashsale:order:<order_id>                 HASH   one order: order_id, customer_id, sku,
                                                      quantity, amount, currency, token, status,
                                                      created_at, updated_at, attempts, charge_id,
                                                      code, decline_code, message, released,
                                                      held (paid with a waiting-room hold)
    flashsale:orders                           ZSET   every order id, scored by creation time (ms)
    flashsale:orders:pending                   ZSET   pending order ids, scored by when they were
                                                      last handed to the queue (ms); the sweeper
                                                      re-queues those left there too long
    flashsale:customer:<customer_id>:orders    LIST   the customer's order ids, oldest first
    flashsale:dedupe:<customer_id>:<sha(token)> STRING order id of that customer+token (SET NX)
    flashsale:counts                           HASH   orders per state (pending, succeeded, ...)
    flashsale:counts:<sku>                     HASH   the same for one sale
    flashsale:stock:<sku>                      STRING units left (see core.inventory)
    flashsale:stock:<sku>:initial              STRING units the sale started with

Placing an order and finalising one are each one Lua script, so stock, the order and the counts
never disagree: a placement reserves stock and records the order together, and a final state is
written once (pending -> final), releasing the stock of a declined or failed order exactly once
(or, for an order on a waiting-room hold, keeping the unit for the customer's retry window).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from redis import Redis

from flashsale.core import events, inventory, keys
from flashsale.errors import InvalidTransition, NotHeld, OrderInProgress, OrderNotFound, SoldOut

PENDING = "pending"
SUCCEEDED = events.SUCCEEDED
DECLINED = events.DECLINED
FAILED = events.FAILED
STATES = (PENDING, SUCCEEDED, DECLINED, FAILED)
# The code of an order failed without Stripe's answer (it never came; see worker settle_later).
NO_STRIPE_ANSWER = "stripe_no_answer"
FINAL_STATES = events.FINAL_STATUSES
# The whole state machine: an order is pending until it gets exactly one final state.
TRANSITIONS: dict[str, tuple[str, ...]] = {PENDING: FINAL_STATES}

_PLACE = (
    inventory.LUA_FUNCTIONS
    + """
-- KEYS: dedupe, stock, order, index, customer orders, counts, pending index, sku counts, holds,
--       retrying
-- ARGV: order id, quantity, created_at ms, held ('1': the waiting room's hold pays for it),
--       customer id, then field/value pairs of the order hash
local existing = redis.call('GET', KEYS[1])
if existing then
  return {'existing', existing}
end
-- The pending index is scored on Redis's clock, the one the sweeper compares it with: a
-- worker whose clock runs ahead must not see fresh orders as stale.
local clock = redis.call('TIME')
local now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local left
if ARGV[4] == '1' then
  -- The unit left the stock when the customer was admitted (core.waiting_room).
  local until_ms = redis.call('ZSCORE', KEYS[9], ARGV[5])
  if not until_ms then
    return {'not_held', redis.call('GET', KEYS[2]) or '0'}
  end
  if until_ms == 'inf' then
    return {'ordering', ''}
  end
  if tonumber(until_ms) <= now_ms then
    return {'not_held', redis.call('GET', KEYS[2]) or '0'}
  end
  redis.call('ZADD', KEYS[9], 'XX', '+inf', ARGV[5])
  redis.call('SREM', KEYS[10], ARGV[5])  -- a new attempt after a decline, if it was one
  left = tonumber(redis.call('GET', KEYS[2]) or '0')
else
  left = reserve(KEYS[2], tonumber(ARGV[2]))
  if left < 0 then
    return {'sold_out', redis.call('GET', KEYS[2]) or '0'}
  end
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[3], unpack(ARGV, 6))
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[7], now_ms, ARGV[1])
redis.call('RPUSH', KEYS[5], ARGV[1])
redis.call('HINCRBY', KEYS[6], 'pending', 1)
redis.call('HINCRBY', KEYS[8], 'pending', 1)
return {'created', tostring(left)}
"""
)

# The final-state rules as one Lua function, so that a script which must finish an order in the
# same atomic step as something else (a webhook delivery recorded: core.webhook_deliveries)
# embeds them instead of repeating them. K and A are the keys and args finalize_call builds.
FINALIZE_LUA = (
    inventory.LUA_FUNCTIONS
    + """
-- K: order, stock, counts, pending index, sku counts, room holds, room state, room retrying
-- A: final status, updated_at, charge_id, code, decline_code, message, order id
-- Returns {outcome, the order hash as stored now}, so the caller needs no second read.
local function finalize_order(K, A)
  local current = redis.call('HGET', K[1], 'status')
  if not current then
    return {'missing'}
  end
  if current ~= 'pending' then
    return {'unchanged', redis.call('HGETALL', K[1])}
  end
  redis.call('HSET', K[1], 'status', A[1], 'updated_at', A[2], 'charge_id', A[3],
    'code', A[4], 'decline_code', A[5], 'message', A[6])
  redis.call('HINCRBY', K[3], 'pending', -1)
  redis.call('HINCRBY', K[3], A[1], 1)
  redis.call('HINCRBY', K[5], 'pending', -1)
  redis.call('HINCRBY', K[5], A[1], 1)
  redis.call('ZREM', K[4], A[7])
  local held = redis.call('HGET', K[1], 'held') == '1'
  local customer = redis.call('HGET', K[1], 'customer_id')
  if A[1] == 'succeeded' then
    if held then
      redis.call('ZREM', K[6], customer)  -- the held unit is sold
    end
  else
    local retry_ms = 0
    if held then
      retry_ms = tonumber(redis.call('HGET', K[7], 'retry_ms') or '0') or 0
    end
    if retry_ms > 0 and redis.call('ZSCORE', K[6], customer) then
      -- The unit stays the customer's for a while, to pay with another card.
      local clock = redis.call('TIME')
      local now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
      redis.call('ZADD', K[6], 'XX', now_ms + retry_ms, customer)
      redis.call('SADD', K[8], customer)
    else
      if held then
        redis.call('ZREM', K[6], customer)
      end
      release(K[2], tonumber(redis.call('HGET', K[1], 'quantity')))
      redis.call('HSET', K[1], 'released', '1')
    end
  end
  return {'transitioned', redis.call('HGETALL', K[1])}
end
"""
)

_FINALIZE = FINALIZE_LUA + "return finalize_order(KEYS, ARGV)"

_CLAIM_STALE = """
-- KEYS: pending index
-- ARGV: age ms, now ms ('' for Redis's own clock), limit
local now = tonumber(ARGV[2])
if not now then
  local clock = redis.call('TIME')
  now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
end
local cutoff = now - tonumber(ARGV[1])
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', cutoff, 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do
  redis.call('ZADD', KEYS[1], 'XX', now, id)
end
return ids
"""

# Fields a client may see; the card token stays on the server.
PUBLIC_FIELDS = (
    "order_id",
    "customer_id",
    "status",
    "sku",
    "quantity",
    "amount",
    "currency",
    "created_at",
    "updated_at",
    "charge_id",
    "code",
    "decline_code",
    "message",
)


@dataclass(frozen=True)
class Order:
    """One order as stored; amounts are minor units, times are Unix seconds."""

    order_id: str
    customer_id: str
    sku: str
    quantity: int
    amount: int
    currency: str
    token: str
    status: str = PENDING
    created_at: float = 0.0
    updated_at: float = 0.0
    attempts: int = 0
    charge_id: str | None = None
    code: str | None = None
    decline_code: str | None = None
    message: str | None = None
    released: bool = False
    # A charge attempt ended without Stripe's answer (timeout, 5xx): Stripe may have charged.
    outcome_unknown: bool = False
    # Placed on a unit the waiting room held for the customer (core.waiting_room).
    held: bool = False
    # The client secret of the PaymentIntent waiting for the customer's 3D Secure, while
    # pending: replayed to the room on a (re)join; never shown by GET /orders.
    action_secret: str | None = None

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATES

    def public(self) -> dict[str, Any]:
        """What GET /orders/<id> shows: everything but the card token."""
        shown = asdict(self)
        return {name: shown[name] for name in PUBLIC_FIELDS}

    def charge_result(self) -> dict[str, Any]:
        """The charge_result event payload of a final order."""
        return events.charge_result(
            order_id=self.order_id,
            status=self.status,
            amount=self.amount,
            currency=self.currency,
            charge_id=self.charge_id,
            code=self.code,
            decline_code=self.decline_code,
            message=self.message,
        )

    def action_required(self) -> dict[str, Any] | None:
        """The action_required payload while the order waits for the customer's 3D Secure."""
        if self.final or not self.action_secret:
            return None
        return events.action_required(self.order_id, self.action_secret)

    @classmethod
    def from_hash(cls, data: Mapping[str, str]) -> Order:
        def optional(name: str) -> str | None:
            return data.get(name) or None

        return cls(
            order_id=data["order_id"],
            customer_id=data["customer_id"],
            sku=data["sku"],
            quantity=int(data["quantity"]),
            amount=int(data["amount"]),
            currency=data["currency"],
            token=data.get("token", ""),
            status=data["status"],
            action_secret=optional("action_secret"),
            created_at=float(data.get("created_at") or 0),
            updated_at=float(data.get("updated_at") or 0),
            attempts=int(data.get("attempts") or 0),
            charge_id=optional("charge_id"),
            code=optional("code"),
            decline_code=optional("decline_code"),
            message=optional("message"),
            released=data.get("released") == "1",
            outcome_unknown=data.get("outcome_unknown") == "1",
            held=data.get("held") == "1",
        )


@dataclass(frozen=True)
class Placement:
    """What placing an order did: created it, or found the same customer+token's order."""

    order: Order
    created: bool
    stock_left: int | None = None


def check_transition(current: str, new: str) -> None:
    """Raise InvalidTransition unless the state machine allows current -> new."""
    if new not in TRANSITIONS.get(current, ()):
        raise InvalidTransition(f"an order cannot go from {current!r} to {new!r}")


def new_order_id() -> str:
    return str(uuid.uuid4())


def place_order(
    redis: Redis,
    *,
    customer_id: str,
    token: str,
    sku: str,
    quantity: int,
    unit_price: int,
    currency: str,
    held: bool = False,
) -> Placement:
    """Reserve stock and record a pending order atomically, once per customer+token.

    Raises SoldOut (nothing reserved, nothing recorded) when the stock cannot cover quantity.
    With `held`, the unit is the one the waiting room holds for the customer (quantity 1):
    NotHeld when there is none (never admitted, or the hold lapsed), OrderInProgress while
    another order of theirs is with Stripe.
    """
    now = time.time()
    order = Order(
        order_id=new_order_id(),
        customer_id=customer_id,
        sku=sku,
        quantity=quantity,
        amount=unit_price * quantity,
        currency=currency,
        token=token,
        created_at=now,
        updated_at=now,
        held=held,
    )
    fields: list[str] = []
    for name, value in _to_hash(order).items():
        fields += [name, value]
    outcome, detail = redis.register_script(_PLACE)(
        keys=[
            keys.dedupe(customer_id, token),
            keys.stock(sku),
            keys.order(order.order_id),
            keys.order_index(),
            keys.customer_orders(customer_id),
            keys.state_counts(),
            keys.pending_orders(),
            keys.sku_state_counts(sku),
            keys.room_holds(sku),
            keys.room_retrying(sku),
        ],
        args=[
            order.order_id,
            quantity,
            int(now * 1000),
            "1" if held else "0",
            customer_id,
            *fields,
        ],
    )
    if outcome == "created":
        return Placement(order=order, created=True, stock_left=int(detail))
    if outcome == "sold_out":
        raise SoldOut(f"sold out: {detail} left of {sku}, {quantity} asked")
    if outcome == "not_held":
        raise NotHeld(f"no unit of {sku} is held for customer {customer_id}")
    if outcome == "ordering":
        raise OrderInProgress(f"customer {customer_id} already has an order with Stripe")
    existing = load_order(redis, detail)
    return Placement(order=existing, created=False)


def load_order(redis: Redis, order_id: str) -> Order:
    data: dict[str, str] = redis.hgetall(keys.order(order_id))  # type: ignore[assignment]
    if not data:
        raise OrderNotFound(f"no order {order_id}")
    return Order.from_hash(data)


def find_order(redis: Redis, order_id: str) -> Order | None:
    data: dict[str, str] = redis.hgetall(keys.order(order_id))  # type: ignore[assignment]
    return Order.from_hash(data) if data else None


def mark_outcome_unknown(redis: Redis, order_id: str) -> None:
    """Remember that Stripe may have charged this order: it must not be failed on a guess."""
    redis.hset(keys.order(order_id), "outcome_unknown", "1")


_RECORD_ACTION = """
if redis.call('HGET', KEYS[1], 'status') == 'pending' then
  redis.call('HSET', KEYS[1], 'action_secret', ARGV[1])
  return 1
end
return 0
"""


def record_action(redis: Redis, order_id: str, client_secret: str) -> bool:
    """Remember, on a pending order only, the PaymentIntent that waits for the customer."""
    return bool(
        redis.register_script(_RECORD_ACTION)(keys=[keys.order(order_id)], args=[client_secret])
    )


def record_attempt(redis: Redis, order_id: str) -> int:
    """Count one charge attempt (status and reconcile show it); returns the count."""
    return int(redis.hincrby(keys.order(order_id), "attempts", 1))


def finalize(
    redis: Redis,
    order_id: str,
    status: str,
    *,
    charge_id: str | None = None,
    code: str | None = None,
    decline_code: str | None = None,
    message: str | None = None,
    sku: str | None = None,
) -> tuple[bool, Order]:
    """Give a pending order its one final state; later calls change nothing.

    Returns (whether this call made the transition, the order as stored now). A declined or
    failed order's stock is released in the same atomic step, so it is released exactly once.
    A caller that knows the order's sku passes it, which saves reading the order first (the
    script names every key it touches, the stock key included).
    """
    check_transition(PENDING, status)
    if sku is None:
        sku = load_order(redis, order_id).sku
    script_keys, args = finalize_call(
        order_id,
        status,
        sku=sku,
        charge_id=charge_id,
        code=code,
        decline_code=decline_code,
        message=message,
    )
    result = redis.register_script(_FINALIZE)(keys=script_keys, args=args)
    if result[0] == "missing":
        raise OrderNotFound(f"no order {order_id}")
    return result[0] == "transitioned", order_from_reply(result[1])


def finalize_call(
    order_id: str,
    status: str,
    *,
    sku: str,
    charge_id: str | None = None,
    code: str | None = None,
    decline_code: str | None = None,
    message: str | None = None,
) -> tuple[list[str], list[str]]:
    """The keys and args of FINALIZE_LUA's finalize_order for this final state."""
    check_transition(PENDING, status)
    script_keys = [
        keys.order(order_id),
        keys.stock(sku),
        keys.state_counts(),
        keys.pending_orders(),
        keys.sku_state_counts(sku),
        keys.room_holds(sku),
        keys.room_state(sku),
        keys.room_retrying(sku),
    ]
    args = [
        status,
        repr(time.time()),
        charge_id or "",
        code or "",
        decline_code or "",
        (message or "")[:500],
        order_id,
    ]
    return script_keys, args


def order_from_reply(fields: list[str]) -> Order:
    """An order from a script's HGETALL reply (a flat field, value list)."""
    return Order.from_hash(dict(zip(fields[::2], fields[1::2], strict=True)))


def claim_stale_pending(
    redis: Redis, older_than_s: float, limit: int = 500, now: float | None = None
) -> list[str]:
    """Pending orders last handed to the queue over older_than_s ago, marked as handed now.

    An order placed but never queued (Redis or the broker failed in between, or the server
    died) would stay pending forever; the caller re-queues what this returns, which is safe
    because the Idempotency-Key is the order id and finalize stores one final state. Claiming
    is atomic: however many workers sweep, each order comes back once per older_than_s.
    Ages are on Redis's clock (`now` only for tests), never on this host's.
    """
    now_ms = "" if now is None else int(now * 1000)
    claimed = redis.register_script(_CLAIM_STALE)(
        keys=[keys.pending_orders()], args=[int(older_than_s * 1000), now_ms, limit]
    )
    return [str(order_id) for order_id in claimed]


def customer_order_ids(redis: Redis, customer_id: str) -> list[str]:
    return [str(order_id) for order_id in redis.lrange(keys.customer_orders(customer_id), 0, -1)]


def orders_to_replay(redis: Redis, customer_id: str) -> list[Order]:
    """The customer's orders with something to tell on every join, oldest first: a final
    state, or a PaymentIntent waiting for the customer's 3D Secure."""
    ids = customer_order_ids(redis, customer_id)
    if not ids:
        return []
    pipe = redis.pipeline(transaction=False)
    for order_id in ids:
        pipe.hgetall(keys.order(order_id))
    found = [Order.from_hash(data) for data in pipe.execute() if data]
    return [order for order in found if order.final or order.action_secret]


def iter_orders(redis: Redis, batch: int = 500) -> Iterator[Order]:
    """Every order, in batches so a large sale does not load at once."""
    ids: list[str] = []
    for order_id, _score in redis.zscan_iter(keys.order_index(), count=batch):
        ids.append(order_id)
        if len(ids) >= batch:
            yield from _load_many(redis, ids)
            ids = []
    if ids:
        yield from _load_many(redis, ids)


def count_orders(redis: Redis) -> int:
    return int(redis.zcard(keys.order_index()))


def count_by_state(redis: Redis, sku: str | None = None) -> dict[str, int]:
    """Orders per state, of one sale or of all sales on this Redis, kept by the placement and
    finalisation scripts (no scan needed)."""
    stored = redis.hgetall(keys.sku_state_counts(sku) if sku else keys.state_counts())
    return {state: int(stored.get(state, 0)) for state in STATES}


def _load_many(redis: Redis, ids: list[str]) -> list[Order]:
    pipe = redis.pipeline(transaction=False)
    for order_id in ids:
        pipe.hgetall(keys.order(order_id))
    return [Order.from_hash(data) for data in pipe.execute() if data]


def _to_hash(order: Order) -> dict[str, str]:
    stored: dict[str, str] = {}
    for name, value in asdict(order).items():
        if value is None:
            stored[name] = ""
        elif isinstance(value, bool):
            stored[name] = "1" if value else "0"
        elif isinstance(value, float):
            stored[name] = repr(value)
        else:
            stored[name] = str(value)
    return stored

"""The waiting room of a sale, in Redis: tickets, holds, the admission budget, one script each.

Every server process runs the same admission step (server.waiting_room) against the same keys,
so several processes and machines keep one queue, one rate and one cap::

    flashsale:room:<sku>:queue    ZSET  queued customer ids, scored by ticket (FIFO)
    flashsale:room:<sku>:tickets  STRING the last ticket handed out
    flashsale:room:<sku>:holds    ZSET  admitted customers, each holding one unit, scored by when
                                        the hold lapses (ms, Redis's clock); +inf while the
                                        customer's order is with Stripe (core.orders)
    flashsale:room:<sku>:gone     ZSET  customers without a socket, scored by since when (ms)
    flashsale:room:<sku>:retrying SET   customers holding their unit after a decline (the
                                        retry window), until they order again or let it go
    flashsale:room:<sku>:state    HASH  the rules (rate, cap, hold_ms, retry_ms, grace_ms, order,
                                        auto: the rate is retuned each second),
                                        opens_at_ms ('closed' until the doors are opened), the
                                        token bucket (tokens, at_ms), `over` once sold out, and
                                        counts (admitted, expired, abandoned_queued,
                                        abandoned_held, left_after_decline, told_sold_out)

A held unit has left `flashsale:stock:<sku>` (the units free): admission takes it, a lapsed or
abandoned hold gives it back, a paid order keeps it and a declined one keeps it for the
customer's retry window (core.orders). So the sale is over, and every queued customer is told
so, exactly when no unit is free and none is held: never while one could still be sold.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from redis import Redis
from redis.exceptions import WatchError

from flashsale.core import keys

QUEUED = "queued"
ADMITTED = "admitted"
ORDERING = "ordering"  # admitted, and its order is with Stripe
SOLD_OUT = "sold_out"
OUT = "out"  # neither queued nor holding: the hold lapsed or the customer left

_NOW_MS = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
"""

_JOIN = (
    _NOW_MS
    + """
-- KEYS: queue, tickets, holds, state, gone    ARGV: customer id, first connect allowance ms
if redis.call('HGET', KEYS[4], 'over') == '1' then
  return {'sold_out', '0', 0}
end
if redis.call('ZSCORE', KEYS[3], ARGV[1]) then
  return {'admitted', '0', 0}
end
local ticket = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not ticket then
  ticket = redis.call('INCR', KEYS[2])
  redis.call('ZADD', KEYS[1], ticket, ARGV[1])
  -- Gone until its socket connects: a ticket whose page never connects is let go, after
  -- the grace and the allowance for a first connect to a server busy with the crowd.
  redis.call('ZADD', KEYS[5], 'NX', now + tonumber(ARGV[2]), ARGV[1])
end
return {'queued', tostring(ticket), redis.call('ZRANK', KEYS[1], ARGV[1]) + 1}
"""
)

_STEP = (
    _NOW_MS
    + """
-- KEYS: queue, holds, gone, state, stock, retrying    ARGV: most customers to admit now
local rules = redis.call('HMGET', KEYS[4], 'rate', 'cap', 'hold_ms', 'grace_ms', 'tokens',
  'at_ms', 'over', 'opens_at_ms')
local rate = tonumber(rules[1]) or 0
local cap = tonumber(rules[2]) or 0
local hold_ms = tonumber(rules[3]) or 120000
local grace_ms = tonumber(rules[4]) or 10000
local tokens = tonumber(rules[5]) or 0
local at = tonumber(rules[6]) or now
local abandoned_queued, abandoned_held, after_decline, expired = 0, 0, 0, 0
-- Customers whose socket has been gone past the grace leave the queue, or give their unit
-- back if they hold one and have no order with Stripe (after a decline: they gave up).
local gone = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now - grace_ms, 'LIMIT', 0, 1000)
for _, id in ipairs(gone) do
  if redis.call('ZREM', KEYS[1], id) == 1 then
    abandoned_queued = abandoned_queued + 1
    redis.call('ZREM', KEYS[3], id)
  else
    local until_ms = redis.call('ZSCORE', KEYS[2], id)
    if until_ms ~= 'inf' then  -- an order with Stripe: looked at again once it is final
      redis.call('ZREM', KEYS[3], id)
      if until_ms then
        redis.call('ZREM', KEYS[2], id)
        redis.call('INCR', KEYS[5])
        if redis.call('SREM', KEYS[6], id) == 1 then
          after_decline = after_decline + 1
        else
          abandoned_held = abandoned_held + 1
        end
      end
    end
  end
end
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 1000)
for _, id in ipairs(lapsed) do
  redis.call('ZREM', KEYS[2], id)
  redis.call('INCR', KEYS[5])
  if redis.call('SREM', KEYS[6], id) == 1 then
    after_decline = after_decline + 1  -- the retry window passed without a new attempt
  else
    expired = expired + 1
  end
end
local free = tonumber(redis.call('GET', KEYS[5]) or '0')
local n = math.min(tonumber(ARGV[1]), free)
local opens = tonumber(rules[8])
if rules[8] == 'closed' or (opens and now < opens) then
  -- The doors are closed: everyone queues, no one is admitted, the bucket stays empty, and
  -- the sale cannot end before it began (free is taken as at least one unit below).
  n, tokens, free = 0, 0, math.max(free, 1)
elseif rate > 0 then
  -- A token bucket of 200 ms: the rate holds across processes and across steps.
  tokens = math.min(math.max(1, rate / 5), tokens + (now - at) * rate / 1000)
  n = math.min(n, math.floor(tokens))
end
if cap > 0 then
  n = math.min(n, cap - redis.call('ZCARD', KEYS[2]))
end
local admitted = {}
if n > 0 then
  local popped = redis.call('ZPOPMIN', KEYS[1], n)
  for i = 1, #popped, 2 do
    redis.call('ZADD', KEYS[2], now + hold_ms, popped[i])
    admitted[#admitted + 1] = popped[i]
  end
  if #admitted > 0 then
    redis.call('DECRBY', KEYS[5], #admitted)
  end
  tokens = tokens - #admitted
end
redis.call('HSET', KEYS[4], 'tokens', tostring(tokens), 'at_ms', now)
redis.call('HINCRBY', KEYS[4], 'admitted', #admitted)
redis.call('HINCRBY', KEYS[4], 'expired', expired)
redis.call('HINCRBY', KEYS[4], 'abandoned_queued', abandoned_queued)
redis.call('HINCRBY', KEYS[4], 'abandoned_held', abandoned_held)
redis.call('HINCRBY', KEYS[4], 'left_after_decline', after_decline)
local told, ended = 0, 0
local over = rules[7] == '1'
if not over and free - #admitted <= 0 and redis.call('ZCARD', KEYS[2]) == 0 then
  over, ended = true, 1
  told = redis.call('ZCARD', KEYS[1])
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[4], 'over', '1')
  redis.call('HINCRBY', KEYS[4], 'told_sold_out', told)
end
return {admitted, over and 1 or 0, ended, told, expired, abandoned_queued, abandoned_held,
  after_decline}
"""
)

_LEAVE = """
-- KEYS: queue, holds, gone, state, stock, retrying    ARGV: customer id, '1' to count it
redis.call('ZREM', KEYS[3], ARGV[1])
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  if ARGV[2] == '1' then
    redis.call('HINCRBY', KEYS[4], 'abandoned_queued', 1)
  end
  return 'queue'
end
local until_ms = redis.call('ZSCORE', KEYS[2], ARGV[1])
if until_ms and until_ms ~= 'inf' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('INCR', KEYS[5])
  if redis.call('SREM', KEYS[6], ARGV[1]) == 1 then
    redis.call('HINCRBY', KEYS[4], 'left_after_decline', 1)
  else
    redis.call('HINCRBY', KEYS[4], 'abandoned_held', 1)
  end
  return 'hold'
end
return 'none'
"""

# A new ticket's page may take this much longer than the grace to connect its socket: under a
# crowd the server answers connects late, and a ticket dropped before its socket arrived is a
# customer who lost their place through no fault of theirs.
FIRST_CONNECT_S = 20.0

COUNTS = (
    "admitted",
    "expired",
    "abandoned_queued",
    "abandoned_held",
    "left_after_decline",
    "told_sold_out",
)


@dataclass(frozen=True)
class Rules:
    """How the room admits: at most `rate` customers a second (0: no rate bound) and at most
    `cap` holding a unit at once (0: no cap); holds last `hold_s`, `retry_s` more after a
    decline; a customer without a socket for `grace_s` leaves (defaults: flashsale.settings,
    the one place they are written). With `doors_closed` nobody is
    admitted before open_doors(), which with `shuffle` puts those already queued in a random
    order (Cloudflare's "random at event start": no one gains by arriving early)."""

    rate: float
    cap: int
    hold_s: float
    retry_s: float
    grace_s: float
    doors_closed: bool  # customers queue until open_doors()
    shuffle: bool  # at open_doors(), those queued so far get a random order
    auto: bool = False  # `rate` is retuned every second (core.auto_admission, set_rate)


@dataclass(frozen=True)
class Ticket:
    """A customer's place: status QUEUED (ticket, position from 1), ADMITTED or SOLD_OUT."""

    status: str
    ticket: int = 0
    position: int = 0


@dataclass(frozen=True)
class Step:
    """What one admission step did."""

    admitted: list[str]
    over: bool
    ended: bool = False  # this step ended the sale (and emptied the queue)
    told_sold_out: int = 0
    expired: int = 0
    abandoned_queued: int = 0
    abandoned_held: int = 0
    left_after_decline: int = 0  # gave their unit back in the retry window, by leaving or not


@dataclass(frozen=True)
class Place:
    """Where one customer stands now: a status, the position when QUEUED, and the ms until
    the hold lapses when ADMITTED."""

    status: str
    position: int = 0
    hold_left_ms: int = 0


def set_rules(redis: Redis, sku: str, rules: Rules) -> None:
    """Store the rules where every server's step and every worker's finalize read them. The
    doors are set only once: a server restarting mid-sale must not close them again."""
    state = keys.room_state(sku)
    pipe = redis.pipeline(transaction=True)
    pipe.hset(
        state,
        mapping={
            "rate": repr(float(rules.rate)),
            "cap": int(rules.cap),
            "hold_ms": int(rules.hold_s * 1000),
            "retry_ms": int(rules.retry_s * 1000),
            "grace_ms": int(rules.grace_s * 1000),
            "order": "shuffle" if rules.shuffle else "fifo",
            "auto": int(rules.auto),
        },
    )
    pipe.hsetnx(state, "opens_at_ms", "closed" if rules.doors_closed else "0")
    pipe.execute()


def set_rate(redis: Redis, sku: str, rate: float) -> None:
    """The admission rate from now on (every process's next step reads it)."""
    redis.hset(keys.room_state(sku), "rate", repr(float(rate)))


def doors(redis: Redis, sku: str) -> str | None:
    """'closed', 'open', or the unix time (ms) they open at; None: the sale has no room."""
    opens_at = redis.hget(keys.room_state(sku), "opens_at_ms")
    if opens_at is None:
        return None
    if opens_at == "closed":
        return "closed"
    return "open" if int(opens_at) <= _redis_ms(redis) else str(opens_at)


def open_doors(redis: Redis, sku: str, at_s: float | None = None) -> int:
    """Open the doors now, or at unix time `at_s`; in a room whose order is 'shuffle', the
    customers queued so far are put in a random order first (their ticket numbers dealt
    again). Returns how many were queued. Opening an open room changes nothing."""
    state, queue = keys.room_state(sku), keys.room_queue(sku)
    opens_at = "0" if at_s is None else str(int(at_s * 1000))
    with redis.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(state, queue)
                if pipe.hget(state, "opens_at_ms") != "closed":
                    return 0
                shuffle = pipe.hget(state, "order") == "shuffle"
                queued: list[tuple[str, float]] = pipe.zrange(queue, 0, -1, withscores=True)  # type: ignore[assignment]
                pipe.multi()
                if shuffle and queued:
                    customers = [str(customer) for customer, _ in queued]
                    secrets.SystemRandom().shuffle(customers)
                    scores = [float(score) for _, score in queued]
                    pipe.zadd(queue, dict(zip(customers, scores, strict=True)))
                pipe.hset(state, "opens_at_ms", opens_at)
                pipe.execute()
                return len(queued)
            except WatchError:
                continue


def join(redis: Redis, sku: str, customer_id: str) -> Ticket:
    """Give the customer a ticket at the back of the queue (or say where it already is)."""
    status, ticket, position = redis.register_script(_JOIN)(
        keys=[
            keys.room_queue(sku),
            keys.room_tickets(sku),
            keys.room_holds(sku),
            keys.room_state(sku),
            keys.room_gone(sku),
        ],
        args=[customer_id, int(FIRST_CONNECT_S * 1000)],
    )
    return Ticket(str(status), int(float(ticket)), int(position))


def step(redis: Redis, sku: str, most: int = 1000) -> Step:
    """Let go of the gone and the lapsed, admit whom the rules allow, and end the sale when
    no unit is free or held. Atomic: any number of processes may call it."""
    reply = redis.register_script(_STEP)(keys=_room_keys(sku), args=[most])
    admitted, over, ended, told, expired, left_queue, left_hold, after_decline = reply
    return Step(
        admitted=[str(customer) for customer in admitted],
        over=bool(over),
        ended=bool(ended),
        told_sold_out=int(told),
        expired=int(expired),
        abandoned_queued=int(left_queue),
        abandoned_held=int(left_hold),
        left_after_decline=int(after_decline),
    )


def leave(redis: Redis, sku: str, customer_id: str, spare: bool = False) -> str:
    """The customer leaves now: out of the queue ('queue'), or their unit back ('hold') unless
    an order of theirs is with Stripe ('none'). A `spare` ticket (nobody's: see events.LEAVE)
    is dropped without counting an abandoned customer."""
    return str(
        redis.register_script(_LEAVE)(
            keys=_room_keys(sku),
            args=[customer_id, "0" if spare else "1"],
        )
    )


def socket_back(redis: Redis, sku: str, customer_id: str) -> None:
    redis.zrem(keys.room_gone(sku), customer_id)


def socket_gone(redis: Redis, sku: str, customer_id: str) -> None:
    redis.zadd(keys.room_gone(sku), {customer_id: _redis_ms(redis)}, nx=True)


def places(redis: Redis, sku: str, customer_ids: Sequence[str]) -> list[Place]:
    """Where each customer stands, in one round trip. They are asked about because a socket
    of theirs is connected: any mark of them as gone is stale (a reloaded page's old socket
    can be forgotten after its new one arrived) and is removed, in one ZREM."""
    pipe = redis.pipeline(transaction=False)
    pipe.hget(keys.room_state(sku), "over")
    pipe.time()
    if customer_ids:
        pipe.zrem(keys.room_gone(sku), *customer_ids)
    for customer_id in customer_ids:
        pipe.zrank(keys.room_queue(sku), customer_id)
        pipe.zscore(keys.room_holds(sku), customer_id)
    over, (seconds, micros), *answers = pipe.execute()
    answers = answers[1:] if customer_ids else answers
    now_ms = seconds * 1000 + micros // 1000
    found = []
    for rank, hold in zip(answers[::2], answers[1::2], strict=True):
        if rank is not None:
            found.append(Place(QUEUED, position=int(rank) + 1))
        elif hold == float("inf"):
            found.append(Place(ORDERING))
        elif hold is not None:
            found.append(Place(ADMITTED, hold_left_ms=max(0, int(hold) - now_ms)))
        else:
            found.append(Place(SOLD_OUT if over == "1" else OUT))
    return found


def counts(redis: Redis, sku: str) -> dict[str, int]:
    """Queued now, holding now, whether the sale is over, and what the room has done so far."""
    pipe = redis.pipeline(transaction=False)
    pipe.zcard(keys.room_queue(sku))
    pipe.zcard(keys.room_holds(sku))
    pipe.hgetall(keys.room_state(sku))
    queued, holding, state = pipe.execute()
    shown = {"queued": int(queued), "holding": int(holding), "over": int(state.get("over", 0))}
    shown.update({name: int(state.get(name, 0)) for name in COUNTS})
    return shown


def units_held(redis: Redis, sku: str) -> int:
    """Units out of the stock for admitted customers without an order at Stripe (an order's
    own unit is the order's: core.orders counts it pending)."""
    return int(redis.zcount(keys.room_holds(sku), "-inf", "(inf"))


def exists(redis: Redis, sku: str) -> bool:
    """Whether the sale ever ran a waiting room."""
    return bool(redis.exists(keys.room_state(sku)))


def _room_keys(sku: str) -> list[str]:
    """The KEYS of the step and leave scripts: queue, holds, gone, state, stock, retrying."""
    return [
        keys.room_queue(sku),
        keys.room_holds(sku),
        keys.room_gone(sku),
        keys.room_state(sku),
        keys.stock(sku),
        keys.room_retrying(sku),
    ]


def _redis_ms(redis: Redis) -> int:
    seconds, micros = redis.time()
    return int(seconds) * 1000 + int(micros) // 1000

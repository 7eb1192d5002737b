"""A Stripe webhook delivery recorded, and its order finished, in one Redis step.

A delivery is looked at in this order: a signature already received (a replay, or Stripe's own
duplicate signed in the same second) changes nothing; an event id already taken changes nothing;
else the order the event names is finished (or the outcome decided without Redis is kept) and
the event id remembered with its outcome. One script: a delivery costs the server one Redis round
trip instead of five, and two server processes given the same event at once cannot both take it.

Redis keys (builders in ``core.keys``)::

    flashsale:webhook-signature:<sha256>   STRING  a signature received (twice the tolerance)
    flashsale:webhook-event:<event id>     STRING  the outcome the event had (a week)
"""

from __future__ import annotations

from dataclasses import dataclass

from redis import Redis

from flashsale.core import keys, orders
from flashsale.core.payments import ChargeOutcome

# Outcomes a delivery can have here; the server decides the others (ignored, not_final,
# unknown_order when the event names no order) before asking Redis.
REPLAYED_SIGNATURE = "replayed_signature"
DUPLICATE = "duplicate"
UNKNOWN_ORDER = "unknown_order"
ALREADY_FINAL = "already_final"
PROCESSED = "processed"

_RECORD = (
    orders.FINALIZE_LUA
    + """
-- KEYS: signature seen, event seen, then finalize_order's keys (none: nothing to finish)
-- ARGV: signature memory s, event memory s, the outcome decided without Redis ('': finish the
--       order), then finalize_order's args
-- Returns {outcome} or {outcome, the order hash as stored now}.
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  return {'replayed_signature'}
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {'duplicate'}
end
local outcome = ARGV[3]
local finished = nil
if outcome == '' then
  local K, A = {}, {}
  for i = 3, #KEYS do K[#K + 1] = KEYS[i] end
  for i = 4, #ARGV do A[#A + 1] = ARGV[i] end
  finished = finalize_order(K, A)
  if finished[1] == 'missing' then
    outcome = 'unknown_order'
  elseif finished[1] == 'unchanged' then
    outcome = 'already_final'
  else
    outcome = 'processed'
  end
end
redis.call('SET', KEYS[2], outcome, 'EX', ARGV[2])
if finished and finished[2] then
  return {outcome, finished[2]}
end
return {outcome}
"""
)


@dataclass(frozen=True)
class Finish:
    """The order a verified event finishes, and how: Stripe's reading of its PaymentIntent."""

    order_id: str
    sku: str
    outcome: ChargeOutcome


@dataclass(frozen=True)
class Delivery:
    outcome: str
    # The order as stored after this delivery, when it named one that exists (finished now or
    # already final); None otherwise.
    order: orders.Order | None = None


def record(
    redis: Redis,
    *,
    signature_digest: str,
    event_id: str,
    signature_memory_s: int,
    event_memory_s: int,
    finish: Finish | None = None,
    outcome: str = "",
) -> Delivery:
    """Take one verified delivery: finish `finish`'s order, or keep `outcome` (decided by the
    caller when there is nothing to finish); a replayed signature or a known event changes
    nothing."""
    if (finish is None) == (not outcome):
        raise ValueError("give either an order to finish or the outcome decided without Redis")
    script_keys = [keys.webhook_signature_seen(signature_digest), keys.webhook_event_seen(event_id)]
    args: list[str | int] = [signature_memory_s, event_memory_s, outcome]
    if finish is not None:
        answer = finish.outcome
        finish_keys, finish_args = orders.finalize_call(
            finish.order_id,
            answer.status,
            sku=finish.sku,
            charge_id=answer.charge_id,
            code=answer.code,
            decline_code=answer.decline_code,
            message=answer.message,
        )
        script_keys += finish_keys
        args += finish_args
    reply = redis.register_script(_RECORD)(keys=script_keys, args=args)
    order = orders.order_from_reply(reply[1]) if len(reply) > 1 else None
    return Delivery(outcome=str(reply[0]), order=order)

"""Stock of the sale in Redis: initialised once, reserved and released atomically (Lua)."""

from __future__ import annotations

from redis import Redis

from flashsale.core import keys

# The reservation rules, as Lua functions that order scripts embed so that reserving stock and
# recording the order (or releasing it and finalising the order) happen in one atomic step.
LUA_FUNCTIONS = """
local function reserve(stock_key, quantity)
  local left = tonumber(redis.call('GET', stock_key) or '0')
  if left < quantity then
    return -1
  end
  return redis.call('DECRBY', stock_key, quantity)
end

local function release(stock_key, quantity)
  return redis.call('INCRBY', stock_key, quantity)
end
"""

_RESERVE = LUA_FUNCTIONS + "return reserve(KEYS[1], tonumber(ARGV[1]))"
_RELEASE = LUA_FUNCTIONS + "return release(KEYS[1], tonumber(ARGV[1]))"


def init_stock(redis: Redis, sku: str, units: int, already_sold: int = 0) -> bool:
    """Set the stock only if the sale has none yet, so a restart never refills it: `units`
    for sale, of which `already_sold` are gone (Stripe charged them; see server.sale).

    Returns True when this call initialised it.
    """
    pipe = redis.pipeline(transaction=True)
    pipe.set(keys.stock(sku), max(0, units - already_sold), nx=True)
    pipe.set(keys.initial_stock(sku), units, nx=True)
    created, _ = pipe.execute()
    return bool(created)


def stock_left(redis: Redis, sku: str) -> int:
    value = redis.get(keys.stock(sku))
    return int(value) if value is not None else 0


def initial_stock(redis: Redis, sku: str) -> int | None:
    value = redis.get(keys.initial_stock(sku))
    return int(value) if value is not None else None


def reserve(redis: Redis, sku: str, quantity: int) -> int | None:
    """Take quantity units; None (and nothing taken) when fewer are left. Returns units left."""
    left = int(redis.register_script(_RESERVE)(keys=[keys.stock(sku)], args=[quantity]))
    return None if left < 0 else left


def release(redis: Redis, sku: str, quantity: int) -> int:
    """Give quantity units back. Returns units left."""
    return int(redis.register_script(_RELEASE)(keys=[keys.stock(sku)], args=[quantity]))

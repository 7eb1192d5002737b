"""The Redis data layer: atomic placement, stock never below zero, one final state, signing."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis

from flashsale.core import events, inventory, keys, orders, signing, store
from flashsale.errors import InvalidTransition, OrderNotFound, SoldOut

SKU = "TEST-SKU"


@pytest.fixture
def client(redis_url: str) -> Any:
    connection = store.connect(redis_url)
    yield connection
    connection.close()


def place(client: Any, customer_id: str | None = None, token: str = "tok_a", quantity: int = 1):
    return orders.place_order(
        client,
        customer_id=customer_id or str(uuid.uuid4()),
        token=token,
        sku=SKU,
        quantity=quantity,
        unit_price=1500,
        currency="eur",
    )


def test_stock_is_initialised_once_and_never_refilled(client: Any) -> None:
    assert inventory.init_stock(client, SKU, 3) is True
    inventory.reserve(client, SKU, 2)
    assert inventory.init_stock(client, SKU, 3) is False  # a restart
    assert inventory.stock_left(client, SKU) == 1
    assert inventory.initial_stock(client, SKU) == 3


def test_reserve_refuses_more_than_is_left(client: Any) -> None:
    inventory.init_stock(client, SKU, 2)
    assert inventory.reserve(client, SKU, 3) is None
    assert inventory.stock_left(client, SKU) == 2
    assert inventory.reserve(client, SKU, 2) == 0
    assert inventory.reserve(client, SKU, 1) is None
    assert inventory.release(client, SKU, 1) == 1


def test_place_order_records_everything_atomically(client: Any) -> None:
    inventory.init_stock(client, SKU, 5)
    customer = str(uuid.uuid4())
    placement = place(client, customer, quantity=2)
    order = placement.order
    assert placement.created and placement.stock_left == 3
    assert order.amount == 3000 and order.currency == "eur" and order.status == orders.PENDING
    stored = orders.load_order(client, order.order_id)
    assert stored == order
    assert orders.customer_order_ids(client, customer) == [order.order_id]
    assert client.zscore(keys.order_index(), order.order_id) is not None
    assert orders.count_by_state(client) == {
        "pending": 1,
        "succeeded": 0,
        "declined": 0,
        "failed": 0,
    }
    assert "token" not in order.public()
    assert all(key.startswith("flashsale:") for key in client.keys("*"))


def test_same_customer_and_token_is_the_same_order(client: Any) -> None:
    inventory.init_stock(client, SKU, 5)
    customer = str(uuid.uuid4())
    first = place(client, customer, token="tok_same")
    again = place(client, customer, token="tok_same")
    assert not again.created and again.order.order_id == first.order.order_id
    assert inventory.stock_left(client, SKU) == 4
    other = place(client, customer, token="tok_other")
    assert other.created and other.order.order_id != first.order.order_id


def test_sold_out_records_nothing(client: Any) -> None:
    inventory.init_stock(client, SKU, 1)
    place(client)
    with pytest.raises(SoldOut):
        place(client)
    assert orders.count_orders(client) == 1
    assert inventory.stock_left(client, SKU) == 0


def test_concurrent_buyers_never_oversell(redis_url: str) -> None:
    setup = store.connect(redis_url)
    inventory.init_stock(setup, SKU, 7)
    pool = redis.ConnectionPool.from_url(redis_url, decode_responses=True)

    def buy(n: int) -> bool:
        try:
            place(redis.Redis(connection_pool=pool), token=f"tok_{n}")
            return True
        except SoldOut:
            return False

    with ThreadPoolExecutor(max_workers=16) as executor:
        bought = list(executor.map(buy, range(60)))
    assert sum(bought) == 7
    assert inventory.stock_left(setup, SKU) == 0
    assert orders.count_by_state(setup)["pending"] == 7


def test_finalize_once_and_release_stock_once(client: Any) -> None:
    inventory.init_stock(client, SKU, 5)
    order = place(client, quantity=2).order
    assert inventory.stock_left(client, SKU) == 3
    changed, stored = orders.finalize(
        client, order.order_id, orders.DECLINED, code="card_declined", decline_code="lost_card"
    )
    assert changed and stored.status == "declined" and stored.released
    assert inventory.stock_left(client, SKU) == 5
    # A redelivered task saying something else changes nothing, and releases nothing again.
    changed, stored = orders.finalize(client, order.order_id, orders.SUCCEEDED, charge_id="ch_1")
    assert not changed and stored.status == "declined" and stored.charge_id is None
    changed, _ = orders.finalize(client, order.order_id, orders.DECLINED)
    assert not changed
    assert inventory.stock_left(client, SKU) == 5
    assert orders.count_by_state(client) == {
        "pending": 0,
        "succeeded": 0,
        "declined": 1,
        "failed": 0,
    }
    assert stored.charge_result() == events.charge_result(
        order_id=order.order_id,
        status="declined",
        amount=3000,
        currency="eur",
        code="card_declined",
        decline_code="lost_card",
    )


def test_finalize_with_the_sku_given_releases_the_same_stock(client: Any) -> None:
    """The worker passes the order's sku along, so finalize need not read the order first."""
    inventory.init_stock(client, SKU, 4)
    order = place(client, quantity=3).order
    changed, stored = orders.finalize(client, order.order_id, orders.FAILED, sku=order.sku)
    assert changed and stored.released and inventory.stock_left(client, SKU) == 4
    changed, _ = orders.finalize(client, order.order_id, orders.FAILED, sku=order.sku)
    assert not changed and inventory.stock_left(client, SKU) == 4
    with pytest.raises(OrderNotFound):
        orders.finalize(client, str(uuid.uuid4()), orders.FAILED, sku=SKU)


def test_concurrent_finalize_picks_exactly_one(redis_url: str) -> None:
    setup = store.connect(redis_url)
    inventory.init_stock(setup, SKU, 1)
    order = place(setup).order
    pool = redis.ConnectionPool.from_url(redis_url, decode_responses=True)
    statuses = [orders.SUCCEEDED, orders.FAILED] * 10

    def finish(status: str) -> bool:
        changed, _ = orders.finalize(redis.Redis(connection_pool=pool), order.order_id, status)
        return changed

    with ThreadPoolExecutor(max_workers=8) as executor:
        changes = list(executor.map(finish, statuses))
    assert sum(changes) == 1
    final = orders.load_order(setup, order.order_id).status
    assert inventory.stock_left(setup, SKU) == (0 if final == "succeeded" else 1)


def test_transitions_are_checked(client: Any) -> None:
    with pytest.raises(InvalidTransition):
        orders.check_transition(orders.SUCCEEDED, orders.FAILED)
    with pytest.raises(InvalidTransition):
        orders.finalize(client, str(uuid.uuid4()), orders.PENDING)
    with pytest.raises(OrderNotFound):
        orders.finalize(client, str(uuid.uuid4()), orders.FAILED)


def test_stale_pending_orders_are_claimed_once_per_window_until_final(client: Any) -> None:
    inventory.init_stock(client, SKU, 10)
    old, fresh, done = (place(client).order for _ in range(3))
    orders.finalize(client, done.order_id, orders.SUCCEEDED, charge_id="ch_1")
    later = old.created_at + 60
    # The fresh order is young at claim time; the final one left the pending index.
    client.zadd(keys.pending_orders(), {fresh.order_id: int((later - 5) * 1000)}, xx=True)
    assert orders.claim_stale_pending(client, 30, now=later) == [old.order_id]
    # Claimed means "handed to the queue now": not again until another window has passed.
    assert orders.claim_stale_pending(client, 30, now=later + 1) == []
    assert set(orders.claim_stale_pending(client, 30, now=later + 31)) == {
        old.order_id,
        fresh.order_id,
    }
    orders.finalize(client, old.order_id, orders.DECLINED, code="card_declined")
    assert orders.claim_stale_pending(client, 30, now=later + 100) == [fresh.order_id]
    assert client.zscore(keys.pending_orders(), done.order_id) is None


def test_iteration_and_replay_lists(client: Any) -> None:
    inventory.init_stock(client, SKU, 50)
    customer = str(uuid.uuid4())
    mine = [place(client, customer, token=f"tok_{n}").order for n in range(3)]
    for n in range(20):
        place(client, token=f"tok_x{n}")
    orders.finalize(client, mine[1].order_id, orders.SUCCEEDED, charge_id="ch_9")
    assert [o.order_id for o in orders.orders_to_replay(client, customer)] == [mine[1].order_id]
    assert len(list(orders.iter_orders(client, batch=7))) == 23
    assert orders.count_by_state(client)["succeeded"] == 1


def test_room_tokens_and_body_signatures() -> None:
    customer = str(uuid.uuid4())
    token = signing.issue_room_token("s3cret", customer)
    assert signing.verify_room_token("s3cret", token, 60) == customer
    assert signing.verify_room_token("other", token, 60) is None
    assert signing.verify_room_token("s3cret", token[:-2] + "xx", 60) is None
    assert signing.verify_room_token("s3cret", None, 60) is None
    assert signing.verify_room_token("s3cret", token, -1) is None  # expired
    body = b'{"order_id": "x"}'
    assert signing.verify_body("k", body, signing.sign_body("k", body))
    assert not signing.verify_body("k", body + b" ", signing.sign_body("k", body))
    assert not signing.verify_body("k", body, None)


def test_the_sweeper_judges_age_on_redis_clock_not_its_own(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker whose clock ran 10 minutes ahead re-queued orders seconds old."""
    inventory.init_stock(client, SKU, 10)
    fresh = place(client).order
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 600)
    assert orders.claim_stale_pending(client, 30) == []
    monkeypatch.setattr(time, "time", real)
    client.zadd(keys.pending_orders(), {fresh.order_id: 0}, xx=True)  # handed over long ago
    assert orders.claim_stale_pending(client, 30) == [fresh.order_id]

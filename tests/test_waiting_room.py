"""The waiting room against the real stack: tickets, admission by rate and cap, FIFO, holds,
retries after a decline, sold out told to the whole queue, two servers sharing one room, a
server restart, and every kind of bad admission token refused.

Each test opens its own sale (its own SKU, so its own stock and room) on a server of its own
beside the module's pipeline; the worker charges every sale.
"""

from __future__ import annotations

import io
import itertools
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import itsdangerous
import pytest
import redis
import socketio
from pipeline_fixtures import TEST_SECRET, Pipeline, receive_results
from rich.console import Console

from flashsale.core import events, keys, signing
from flashsale.core import waiting_room as room
from flashsale.loadgen.client import loop
from flashsale.loadgen.coordinator import Coordinator
from flashsale.loadgen.fleet.inprocess import InProcess
from flashsale.loadgen.scenario import LoadConfig, build_schedule, parse_cards, parse_patience
from flashsale.loadgen.stats import OVERTOOK
from flashsale.ops.processes import flashsale_argv

_skus = itertools.count(1)
DECLINED_CARD = "4000000000000002"


@pytest.fixture(scope="module")
def pipeline(pipeline_factory: Callable[..., Pipeline]) -> Pipeline:
    return pipeline_factory()


def room_flags(sku: str, stock: int, *flags: str) -> tuple[str, ...]:
    return ("--sku", sku, "--stock", str(stock), "--ignore-ledger", "--waiting-room", "on", *flags)


def open_sale(pipeline: Pipeline, stock: int, *flags: str) -> tuple[str, str]:
    """A server with the waiting room on for a fresh SKU; returns (its URL, the SKU)."""
    sku = f"ROOM-{next(_skus)}-{time.monotonic_ns()}"
    return pipeline.add_server(*room_flags(sku, stock, *flags)), sku


class Shopper:
    """One customer in the room: a session, a socket, and the events it received, in order."""

    def __init__(self, pipeline: Pipeline, url: str) -> None:
        self.pipeline = pipeline
        self.url = url
        self.session = pipeline.session(url)
        self.ticket: dict[str, Any] = self.session["waiting_room"]
        self.socket: socketio.SimpleClient | None = None
        self.seen: list[tuple[float, str, Any]] = []

    @property
    def customer_id(self) -> str:
        return str(self.session["customer_id"])

    def connect(self, watch_stock: bool = False) -> Shopper:
        # No reconnecting on its own: a client left reconnecting after a restart would be a
        # second tab of the customer, present to the room.
        client = socketio.SimpleClient(reconnection=False)
        client.connect(
            self.url,
            auth={"room_token": self.session["room_token"], "watch_stock": watch_stock},
            transports=["websocket"],
            wait_timeout=10,
        )
        self.socket = client
        self.next(events.JOINED)
        return self

    def next(self, *names: str, timeout_s: float = 20) -> tuple[str, Any]:
        """The next event named one of names (others are recorded and skipped)."""
        assert self.socket is not None
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {names} within {timeout_s}s; saw {self.names()}")
            try:
                name, data = self.socket.receive(timeout=left)
            except socketio.exceptions.TimeoutError:
                continue
            self.seen.append((time.monotonic(), name, data))
            if name in names:
                return name, data

    def wait_position(self, position: int, timeout_s: float = 10) -> None:
        """Until a queue update puts this customer at `position` (they come every 4 s)."""
        deadline = time.monotonic() + timeout_s
        while True:
            _, data = self.next(events.QUEUE, timeout_s=max(0.1, deadline - time.monotonic()))
            if data["position"] == position:
                return

    def names(self) -> list[str]:
        return [name for _, name, _ in self.seen]

    def admitted(self, timeout_s: float = 20) -> str:
        name, data = self.next(events.ADMITTED, events.SOLD_OUT, timeout_s=timeout_s)
        assert name == events.ADMITTED, self.names()
        return str(data["admission_token"])

    def pay(self, admission: str | None, card: str = "4242424242424242") -> httpx.Response:
        extra = {} if admission is None else {"admission_token": admission}
        return self.pipeline.charge(self.session, self.pipeline.tokenize(card), self.url, **extra)

    def result(self) -> dict[str, Any]:
        assert self.socket is not None
        return receive_results(self.socket, 1)[0]

    def close(self) -> None:
        if self.socket is not None:
            self.socket.disconnect()
            self.socket = None


def redis_of(pipeline: Pipeline) -> redis.Redis[Any]:
    return redis.Redis.from_url(pipeline.redis_url, decode_responses=True)


def test_queued_then_admitted_then_paid(pipeline: Pipeline) -> None:
    url, sku = open_sale(pipeline, 5)
    shopper = Shopper(pipeline, url)
    assert shopper.ticket["status"] == room.QUEUED
    assert shopper.ticket["position"] >= 1 and shopper.ticket["ticket"] >= 1
    shopper.connect()
    admission = shopper.admitted()
    answer = shopper.pay(admission)
    assert answer.status_code == 202, answer.text
    result = shopper.result()
    assert result["status"] == events.SUCCEEDED
    counts = room.counts(redis_of(pipeline), sku)
    assert counts["admitted"] == 1 and counts["holding"] == 0  # the held unit is sold
    shopper.close()


def test_charges_refuse_missing_forged_and_foreign_admission_tokens(pipeline: Pipeline) -> None:
    url, _ = open_sale(pipeline, 5)
    alice = Shopper(pipeline, url).connect()
    bob = Shopper(pipeline, url).connect()
    alices = alice.admitted()
    bob.admitted()
    refused = {
        "missing": (alice.pay(None), 403, "not_admitted"),
        "forged": (alice.pay(alices[:-4] + "AAAA"), 403, "invalid_admission_token"),
        # Bob's room token with Alice's admission: an admission is its customer's alone.
        "foreign": (bob.pay(alices), 403, "forbidden"),
        "room-token salt": (
            alice.pay(signing.issue_room_token(TEST_SECRET, alice.customer_id)),
            403,
            "invalid_admission_token",
        ),
    }
    for what, (answer, status, code) in refused.items():
        assert answer.status_code == status, (what, answer.text)
        assert answer.json()["error"]["code"] == code, what
    # Nothing was ordered: Alice can still pay with her own admission.
    assert alice.pay(alices).status_code == 202
    assert alice.result()["status"] == events.SUCCEEDED
    alice.close()
    bob.close()


class TwoHoursAgo(itsdangerous.TimestampSigner):
    def get_timestamp(self) -> int:
        return int(time.time()) - 7200


def test_expired_admission_token_refused(pipeline: Pipeline) -> None:
    url, _ = open_sale(pipeline, 5)
    shopper = Shopper(pipeline, url).connect()
    fresh = shopper.admitted()
    # Genuine (our secret, the admission salt) but issued two hours ago: past the 1 h lifetime.
    stale = itsdangerous.URLSafeTimedSerializer(
        TEST_SECRET, salt=signing._ADMISSION_SALT, signer=TwoHoursAgo
    ).dumps(shopper.customer_id)
    answer = shopper.pay(stale)
    assert answer.status_code == 403, answer.text
    assert answer.json()["error"]["code"] == "invalid_admission_token"
    assert shopper.pay(fresh).status_code == 202
    shopper.close()


def test_admission_rate_holds_within_ten_percent(pipeline: Pipeline) -> None:
    rate, crowd = 20.0, 60
    url, sku = open_sale(pipeline, crowd, "--admit-rate", f"{rate:g}/s")
    # Joined with their sockets first, then the ones admitted meanwhile are left out: the
    # rate is measured from the admissions of a queue that never ran dry.
    shoppers = [Shopper(pipeline, url) for _ in range(crowd)]
    for shopper in shoppers:
        shopper.connect()
    for shopper in shoppers:
        shopper.admitted(timeout_s=30)
    # When the server admitted each, on Redis's clock (a hold lapses hold_ms after it): the
    # test's own threads may hear of it late on a busy machine.
    client = redis_of(pipeline)
    hold_ms = int(client.hget(keys.room_state(sku), "hold_ms") or 0)
    holds = client.zrange(keys.room_holds(sku), 0, -1, withscores=True)
    times = sorted((score - hold_ms) / 1000 for _, score in holds)
    assert len(times) == crowd
    middle = times[10:-5]  # admissions while every socket was in and the queue was not empty
    measured = (len(middle) - 1) / (middle[-1] - middle[0])
    assert abs(measured - rate) / rate < 0.10, f"admitted {measured:.1f}/s at {rate:g}/s"
    for shopper in shoppers:
        shopper.close()


def test_fifo_order_and_the_cap_on_customers_holding(pipeline: Pipeline) -> None:
    cap, crowd = 3, 9
    url, sku = open_sale(pipeline, crowd, "--admit-rate", "0", "--admit-cap", str(cap))
    client = redis_of(pipeline)
    shoppers = [Shopper(pipeline, url).connect() for _ in range(crowd)]
    tickets = [shopper.ticket["ticket"] for shopper in shoppers]
    assert tickets == sorted(tickets)
    admitted_order: list[int] = []
    pending = list(range(crowd))
    while pending:
        # The cap: never more than `cap` customers hold a unit, and no one else is let in.
        holding = client.zcard(keys.room_holds(sku))
        assert holding <= cap
        for index in list(pending):
            shopper = shoppers[index]
            try:
                name, data = shopper.next(events.ADMITTED, timeout_s=0.2)
            except AssertionError:
                continue
            admitted_order.append(index)
            pending.remove(index)
            assert client.zcard(keys.room_holds(sku)) <= cap
            if len(admitted_order) % cap == 0:
                # Those admitted pay; one is admitted as one finishes.
                for paid in admitted_order[-cap:]:
                    assert (
                        shoppers[paid]
                        .pay(shoppers[paid].seen[-1][2]["admission_token"])
                        .status_code
                        == 202
                    )
    # First come, first served, in groups of the cap: the admissions follow the tickets.
    for group in range(0, crowd, cap):
        assert sorted(admitted_order[group : group + cap]) == list(range(group, group + cap))
    for shopper in shoppers:
        shopper.close()


def test_a_declined_customer_retries_within_the_window_and_pays(pipeline: Pipeline) -> None:
    url, sku = open_sale(pipeline, 1, "--retry-window", "30s")
    first = Shopper(pipeline, url).connect()
    second = Shopper(pipeline, url).connect()
    admission = first.admitted()
    assert first.pay(admission, DECLINED_CARD).status_code == 202
    assert first.result()["status"] == events.DECLINED
    # The unit stays the first customer's: the second waits, not told sold out.
    client = redis_of(pipeline)
    assert client.get(keys.stock(sku)) == "0"
    assert client.zscore(keys.room_holds(sku), first.customer_id) is not None
    assert client.sismember(keys.room_retrying(sku), first.customer_id)
    answer = first.pay(admission)  # another card, a new attempt
    assert answer.status_code == 202, answer.text
    assert not client.sismember(keys.room_retrying(sku), first.customer_id)
    assert first.result()["status"] == events.SUCCEEDED
    name, _ = second.next(events.SOLD_OUT, events.ADMITTED)
    assert name == events.SOLD_OUT
    first.close()
    second.close()


def test_a_retry_window_that_passes_gives_the_unit_to_the_next_customer(
    pipeline: Pipeline,
) -> None:
    """Declined, no new attempt: when the window passes the unit goes to the next in line, and
    the room counts a customer who left after a decline (not an expired admission)."""
    url, sku = open_sale(pipeline, 1, "--retry-window", "5s")
    declined = Shopper(pipeline, url).connect()
    patient = Shopper(pipeline, url).connect()
    admission = declined.admitted()
    assert declined.pay(admission, DECLINED_CARD).status_code == 202
    assert declined.result()["status"] == events.DECLINED
    client = redis_of(pipeline)
    assert client.sismember(keys.room_retrying(sku), declined.customer_id)
    answer = patient.pay(patient.admitted(timeout_s=15))
    assert answer.status_code == 202, answer.text
    assert patient.result()["status"] == events.SUCCEEDED
    counts = room.counts(client, sku)
    assert (counts["left_after_decline"], counts["expired"], counts["abandoned_held"]) == (1, 0, 0)
    assert not client.exists(keys.room_retrying(sku))
    declined.close()
    patient.close()


def test_a_lapsed_hold_admits_the_next_customer(pipeline: Pipeline) -> None:
    url, sku = open_sale(pipeline, 1, "--hold", "5s")
    idle = Shopper(pipeline, url).connect()
    patient = Shopper(pipeline, url).connect()
    admission = idle.admitted()
    name, _ = idle.next(events.HOLD_LAPSED, timeout_s=15)  # never paid
    assert name == events.HOLD_LAPSED
    answer = idle.pay(admission)
    assert answer.status_code == 403 and answer.json()["error"]["code"] == "hold_lapsed"
    patient_admission = patient.admitted(timeout_s=10)
    assert patient.pay(patient_admission).status_code == 202
    assert patient.result()["status"] == events.SUCCEEDED
    assert room.counts(redis_of(pipeline), sku)["expired"] == 1
    idle.close()
    patient.close()


def test_sold_out_is_told_to_the_whole_queue(pipeline: Pipeline) -> None:
    stock, crowd = 2, 12
    url, sku = open_sale(pipeline, stock)
    shoppers = [Shopper(pipeline, url).connect() for _ in range(crowd)]
    buyers = shoppers[:stock]
    for buyer in buyers:
        assert buyer.pay(buyer.admitted()).status_code == 202
        assert buyer.result()["status"] == events.SUCCEEDED
    for shopper in shoppers[stock:]:
        name, _ = shopper.next(events.SOLD_OUT, events.ADMITTED, timeout_s=10)
        assert name == events.SOLD_OUT
    counts = room.counts(redis_of(pipeline), sku)
    assert counts["over"] == 1 and counts["queued"] == 0
    assert counts["told_sold_out"] == crowd - stock
    # A latecomer is told at once, and cannot order.
    late = Shopper(pipeline, url)
    assert late.ticket == {"status": room.SOLD_OUT}
    for shopper in shoppers:
        shopper.close()


def test_two_servers_share_one_room(pipeline: Pipeline) -> None:
    url, sku = open_sale(pipeline, 4, "--admit-rate", "0", "--admit-cap", "1")
    other = pipeline.add_server(*room_flags(sku, 4, "--admit-rate", "0", "--admit-cap", "1"))
    shoppers = [Shopper(pipeline, (url, other)[index % 2]).connect() for index in range(4)]
    assert [s.ticket["ticket"] for s in shoppers] == sorted(s.ticket["ticket"] for s in shoppers)
    for shopper in shoppers:  # one at a time, in ticket order, whichever server it is on
        answer = shopper.pay(shopper.admitted())
        assert answer.status_code == 202, answer.text
        assert shopper.result()["status"] == events.SUCCEEDED
    for shopper in shoppers:
        shopper.close()


def test_the_queue_survives_a_server_restart(pipeline: Pipeline) -> None:
    rules = ("--admit-rate", "0", "--admit-cap", "1", "--room-grace", "2s")
    url, sku = open_sale(pipeline, 1, *rules)
    first = Shopper(pipeline, url).connect()
    waiting = Shopper(pipeline, url).connect()
    admission = first.admitted()
    waiting.wait_position(1)
    pipeline.local.server().stop()
    port = int(url.rsplit(":", 1)[1])
    pipeline.local.start_server(*room_flags(sku, 1, *rules), port=port)
    # Tickets and holds are in Redis: the paying customer's admission still stands, and the
    # one waiting reconnects to the same place.
    first.close()
    waiting.close()
    first.connect()
    waiting.connect()
    _, told = waiting.next(events.QUEUE, timeout_s=10)  # told on joining, not at the next update
    assert told["position"] == 1
    assert first.pay(admission, DECLINED_CARD).status_code == 202
    assert first.result()["status"] == events.DECLINED
    first.close()  # gives up: after the grace the unit goes to the next in line
    answer = waiting.pay(waiting.admitted(timeout_s=30))
    assert answer.status_code == 202, answer.text
    assert waiting.result()["status"] == events.SUCCEEDED
    counts = room.counts(redis_of(pipeline), sku)
    # Declined, then gone: a customer who gave up after a decline, not one who abandoned a
    # checkout before paying.
    assert (counts["left_after_decline"], counts["abandoned_held"]) == (1, 0)
    waiting.close()


def test_doors_closed_then_opened_with_the_early_crowd_shuffled(pipeline: Pipeline) -> None:
    crowd = 16
    # One at a time (a cap of 1), each leaving at once: the admissions show the order.
    rules = ("--admit-rate", "0", "--admit-cap", "1", "--room-doors", "closed")
    url, sku = open_sale(pipeline, 1, *rules, "--room-order", "shuffle")
    client = redis_of(pipeline)
    early = [Shopper(pipeline, url).connect() for _ in range(crowd)]
    # The admission step runs (its bucket's clock moves) and admits no one while closed.
    seen_at = client.hget(keys.room_state(sku), "at_ms")
    deadline = time.monotonic() + 10
    while client.hget(keys.room_state(sku), "at_ms") == seen_at:
        assert time.monotonic() < deadline, "the admission step does not run"
        time.sleep(0.05)
    assert client.zcard(keys.room_holds(sku)) == 0
    assert all(name != events.ADMITTED for s in early for name in s.names())
    assert room.open_doors(client, sku) == crowd
    assert room.open_doors(client, sku) == 0  # opening an open room changes nothing
    late = Shopper(pipeline, url).connect()
    order = admissions(early + [late])
    assert order[-1] is late  # behind the whole early crowd
    tickets = [shopper.ticket["ticket"] for shopper in order[:-1]]
    assert sorted(tickets) == [shopper.ticket["ticket"] for shopper in early]
    assert tickets != sorted(tickets), "admitted in arrival order: the early crowd was not shuffled"
    for shopper in order:
        shopper.close()


def admissions(shoppers: list[Shopper], timeout_s: float = 30) -> list[Shopper]:
    """The order the room admits these shoppers in, one at a time: each leaves when admitted,
    which gives its unit to the next."""
    order: list[Shopper] = []
    waiting = list(shoppers)
    deadline = time.monotonic() + timeout_s
    while waiting:
        assert time.monotonic() < deadline, f"{len(waiting)} never admitted"
        for shopper in list(waiting):
            try:
                shopper.next(events.ADMITTED, timeout_s=0.05)
            except AssertionError:
                continue
            order.append(shopper)
            waiting.remove(shopper)
            assert shopper.socket is not None
            shopper.socket.emit(events.LEAVE, {"room_token": shopper.session["room_token"]})
    return order


def test_loadgen_customers_retry_after_a_decline_and_every_unit_sells(pipeline: Pipeline) -> None:
    stock, crowd = 10, 30
    url, sku = open_sale(pipeline, stock, "--admit-rate", "50/s")
    config = LoadConfig(
        url=url,
        schedule=build_schedule(customers=crowd, rate="100/s"),
        cards=parse_cards("visa=50,generic_decline=50"),
        retry_after_decline=1.0,
        timeout_s=20,
        max_cpu_percent=101,  # a shared 2-core test box
        max_lag_s=5,
    )
    fleet = InProcess(keep_journeys=True)
    result = loop.run(Coordinator(config, fleet, Console(file=io.StringIO())).run())
    report = result.report
    # Every declined customer paid again with another card for the unit held for them.
    assert report.outcomes["succeeded"] == stock, report.outcomes
    assert report.outcomes["sold_out"] == crowd - stock
    assert report.outcomes["declined"] == 0
    assert report.room["queued"] == crowd
    assert report.room["waited_then_sold_out"] == crowd - stock
    assert report.room["retried_after_decline"] >= 1
    assert report.latency_ms["queue"]["count"] == crowd
    assert report.latency_ms["checkout"]["count"] == stock
    counts = room.counts(redis_of(pipeline), sku)
    assert counts["over"] == 1 and counts["holding"] == 0 and counts["admitted"] == stock
    paid = [c for c in pipeline.sim_charges() if c["metadata"].get("sku") == sku]
    assert sum(c["status"] == "succeeded" for c in paid) == stock
    assert sum(c["status"] == "failed" for c in paid) == report.room["retried_after_decline"]


def room_run(url: str, crowd: int, rate: str, patience: str = "10m") -> Coordinator:
    """Loadgen customers arriving at `rate`, each paying with the first card it is given."""
    config = LoadConfig(
        url=url,
        schedule=build_schedule(customers=crowd, rate=rate),
        cards=parse_cards("visa=100"),
        patience=parse_patience(patience),
        timeout_s=30,
        max_cpu_percent=101,  # a shared 2-core test box
        max_lag_s=5,
    )
    return Coordinator(config, InProcess(), Console(file=io.StringIO()))


def test_fifo_admits_no_one_ahead_of_an_earlier_arrival(pipeline: Pipeline) -> None:
    # 40 arrive over 2 s and are admitted at 10/s: most wait, in the order they came.
    crowd = 40
    url, _ = open_sale(pipeline, crowd, "--admit-rate", "10/s")
    report = loop.run(room_run(url, crowd, "20/s").run()).report
    assert report.outcomes["succeeded"] == crowd, report.outcomes
    assert report.latency_ms["queue"]["p90"] > 1000, "nobody waited: nothing to be fair about"
    assert report.room[OVERTOOK] == 0


def test_a_shuffled_opening_is_counted_as_overtaking(pipeline: Pipeline) -> None:
    """The fairness count sees disorder: customers arriving over ~2 s before the doors open
    (the generator has no doors of its own, so each one's arrival is its own) are admitted
    in a drawn order, so some overtake customers who came more than a second earlier."""
    crowd = 30
    rules = ("--admit-rate", "10/s", "--room-doors", "closed", "--room-order", "shuffle")
    url, sku = open_sale(pipeline, crowd, *rules)
    client = redis_of(pipeline)
    opened: list[int] = []

    def open_when_all_queued() -> None:
        deadline = time.monotonic() + 30
        while client.zcard(keys.room_queue(sku)) < crowd and time.monotonic() < deadline:
            time.sleep(0.05)
        opened.append(room.open_doors(client, sku))

    opener = threading.Thread(target=open_when_all_queued)
    opener.start()
    report = loop.run(room_run(url, crowd, "15/s").run()).report
    opener.join()
    assert opened == [crowd]
    assert report.outcomes["succeeded"] == crowd, report.outcomes
    assert report.room[OVERTOOK] > 0


def test_impatient_customers_leave_the_queue_and_the_room_counts_them(pipeline: Pipeline) -> None:
    # 12 arrive at once, 2 are admitted a second, and each waits 2 s at most.
    crowd = 12
    url, sku = open_sale(pipeline, crowd, "--admit-rate", "2/s")
    report = loop.run(room_run(url, crowd, "100/s", patience="2s").run()).report
    left = report.outcomes["abandoned"]
    assert 3 <= left <= crowd - 3, report.outcomes
    assert report.outcomes["succeeded"] == crowd - left
    assert report.room["abandoned"] == left
    # Each told the room it left: out of the queue at once, not after the socket's grace.
    counts = room.counts(redis_of(pipeline), sku)
    assert counts["abandoned_queued"] == left and counts["queued"] == 0


def test_open_doors_command_opens_a_closed_room_once(pipeline: Pipeline) -> None:
    url, sku = open_sale(pipeline, 3, "--admit-rate", "50/s", "--room-doors", "closed")
    early = [Shopper(pipeline, url).connect() for _ in range(3)]

    def open_doors(*flags: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            flashsale_argv("open-doors", "--redis-url", pipeline.redis_url, *flags),
            capture_output=True,
            text=True,
            timeout=60,
        )

    opened = open_doors("--sku", sku)
    assert opened.returncode == 0, opened.stderr
    assert f"the doors of {sku} open now: 3 customers in line" in opened.stdout
    for shopper in early:
        shopper.admitted()
    again = open_doors("--sku", sku)
    assert again.returncode == 0 and "no change" in again.stdout
    nowhere = open_doors("--sku", "NO-SUCH-SALE")
    assert nowhere.returncode == 1 and "no waiting room for sale 'NO-SUCH-SALE'" in nowhere.stderr
    for shopper in early:
        shopper.close()


def test_stock_watchers_see_units_taken_by_admission_and_given_back(pipeline: Pipeline) -> None:
    """No order is placed: the count moves because the room takes units for the admitted
    and a customer who leaves gives theirs back, and watchers hear both."""
    url, sku = open_sale(pipeline, 2, "--room-doors", "closed")
    watcher = Shopper(pipeline, url).connect(watch_stock=True)
    leaver = Shopper(pipeline, url).connect()

    def stock_reaches(count: int) -> None:
        while True:
            _, data = watcher.next(events.STOCK, timeout_s=10)
            if data["stock_left"] == count:
                return

    stock_reaches(2)  # on joining: the doors are closed, nobody holds a unit
    room.open_doors(redis_of(pipeline), sku)
    leaver.admitted()
    stock_reaches(0)  # both admitted, each holding one
    assert leaver.socket is not None
    leaver.socket.emit(events.LEAVE, {"room_token": leaver.session["room_token"]})
    stock_reaches(1)
    assert room.counts(redis_of(pipeline), sku)["abandoned_held"] == 1
    watcher.close()
    leaver.close()


def sockets_connected(url: str) -> int:
    metrics = httpx.get(f"{url}/metrics", timeout=5).text
    line = next(x for x in metrics.splitlines() if x.startswith("flashsale_sockets_connected"))
    return int(float(line.split()[-1]))


def test_a_reload_whose_old_socket_goes_last_is_not_gone(pipeline: Pipeline) -> None:
    """A reloaded page's new socket can arrive before the old one is forgotten: the customer
    is not marked gone while a socket of theirs is here, and a mark another process left
    late is cleared by the next update, long before the grace would drop them."""
    url, sku = open_sale(pipeline, 1, "--admit-rate", "0", "--admit-cap", "1")
    holder = Shopper(pipeline, url).connect()
    holder.admitted()
    old_tab = Shopper(pipeline, url).connect()
    new_tab = Shopper(pipeline, url)
    new_tab.session = old_tab.session  # the same customer, from the reloaded page
    new_tab.connect()
    client = redis_of(pipeline)
    before = sockets_connected(url)
    old_tab.close()
    deadline = time.monotonic() + 10
    while sockets_connected(url) != before - 1:
        assert time.monotonic() < deadline, "the old socket's disconnect was never seen"
        time.sleep(0.05)
    assert client.zscore(keys.room_gone(sku), new_tab.customer_id) is None
    # As another server process would leave it: marked gone after the new socket arrived.
    seconds, micros = client.time()
    client.zadd(keys.room_gone(sku), {new_tab.customer_id: seconds * 1000 + micros // 1000})
    deadline = time.monotonic() + 10
    while client.zscore(keys.room_gone(sku), new_tab.customer_id) is not None:
        assert time.monotonic() < deadline, "the stale mark outlived the next update"
        time.sleep(0.05)
    assert client.zscore(keys.room_queue(sku), new_tab.customer_id) is not None
    holder.close()
    new_tab.close()

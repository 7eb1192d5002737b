"""The waiting room in a server process: tickets for /session, the admission loop, queue news.

The state is in Redis (core.waiting_room), so any number of server processes share one queue.
Each process runs the same admission step ten times a second and tells the admitted through
the message queue (their socket may be on another process); every UPDATE_S another loop tells
its own queued sockets where they stand, which repairs any emit the message queue dropped.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import redis
from flask_socketio import SocketIO

from flashsale.core import events, orders, rate_budget, signing, waiting_room
from flashsale.core.auto_admission import AutoAdmission, Reading
from flashsale.core.stock_feed import StockFeed
from flashsale.core.waiting_room import Place
from flashsale.server.metrics import ServerMetrics
from flashsale.settings import Settings

log = logging.getLogger("flashsale.server")

STEP_S = 0.1
# Queued customers hear where they stand at least this often (the page promises every 5 s).
UPDATE_S = 4.0
TUNE_S = 1.0  # --admit-rate auto: the rate is measured and set this often
# A Redis outage is logged once per this many seconds, not ten times a second.
OUTAGE_LOG_S = 10.0


class WaitingRoom:
    """One process's part of the sale's waiting room."""

    def __init__(
        self,
        settings: Settings,
        client: redis.Redis,
        socketio: SocketIO,
        metrics: ServerMetrics,
        stock_feed: StockFeed,
    ) -> None:
        self.settings = settings
        self.sku = settings.sale_sku
        self.redis = client
        self.socketio = socketio
        self.metrics = metrics
        # Admission takes units out of the free stock and a hold given back returns them:
        # the sale's stock watchers are told of both, as of an order's.
        self.stock_feed = stock_feed
        self.here: dict[str, str] = {}  # sid -> customer id, this process's sockets in the room
        self.sockets_of: Counter[str] = Counter()  # customer id -> their sockets in `here`
        self.admitted_seen: tuple[float, int] | None = None  # (when, the room's admitted count)
        self.admit_rate = 0.0  # admissions a second, measured over the last update
        self.outage_logged = 0.0  # when a Redis outage was last logged
        self.auto = (
            AutoAdmission(rate_budget.admission_budget(settings)) if settings.room_auto else None
        )

    def rules(self) -> waiting_room.Rules:
        settings = self.settings
        return waiting_room.Rules(
            rate=self.auto.rate if self.auto else settings.room_rate,
            cap=settings.room_cap,
            hold_s=settings.room_hold_s,
            retry_s=settings.room_retry_s,
            grace_s=settings.room_grace_s,
            doors_closed=settings.room_doors == "closed",
            shuffle=settings.room_order == "shuffle",
            auto=self.auto is not None,
        )

    def start(self) -> None:
        rules = self.rules()
        waiting_room.set_rules(self.redis, self.sku, rules)
        self.metrics.room_admit_rate.set(rules.rate)
        if self.auto is not None:
            budget = self.auto.budget
            log.info(
                "waiting room: admission auto, starting at %.4g/s (Stripe budget %s)",
                rules.rate,
                f"{budget:.4g} charges/s" if budget else "unknown: set --stripe-limit",
            )
        self.socketio.start_background_task(self.run_admission)
        self.socketio.start_background_task(self.run_updates)

    # -- what customers ask --------------------------------------------------------------------

    def ticket(self, customer_id: str) -> dict[str, Any]:
        """The `waiting_room` part of a new session: queued with a position, or sold out."""
        ticket = waiting_room.join(self.redis, self.sku, customer_id)
        shown: dict[str, Any] = {"status": ticket.status}
        if ticket.status == waiting_room.QUEUED:
            shown.update(
                ticket=ticket.ticket,
                position=ticket.position,
                eta_s=self.eta(ticket.position),
                # 'shuffle': the place of everyone queued before the doors is drawn at opening
                order=self.settings.room_order,
            )
        return shown

    def eta(self, position: int) -> float | None:
        """Seconds until this position is admitted at the rate measured lately; None while
        admission is paused (every unit held) or not measured yet."""
        rate = self.admit_rate or (self.settings.room_rate if self.admitted_seen is None else 0)
        return round(position / rate, 1) if rate > 0 else None

    def admission_token(self, customer_id: str) -> str:
        return signing.issue_admission_token(self.settings.secret, customer_id)

    def admitted_customer(self, token: object) -> str | None:
        """The customer an admission token was issued to; None when forged or expired."""
        return signing.verify_admission_token(
            self.settings.secret, token, self.settings.room_token_ttl_s
        )

    def is_over(self) -> bool:
        return bool(waiting_room.counts(self.redis, self.sku)["over"])

    # -- sockets -------------------------------------------------------------------------------

    def on_connect(self, sid: str, customer_id: str) -> None:
        """A socket of a customer with a ticket or a hold is followed until it leaves."""
        waiting_room.socket_back(self.redis, self.sku, customer_id)
        self.follow(sid, customer_id)
        self.socketio.server.enter_room(
            sid, events.queue_room(self.sku), namespace=events.NAMESPACE
        )

    def welcome(self, sid: str, customer_id: str) -> None:
        """Tell a socket that just joined where its customer stands (after JOINED)."""
        if sid in self.here:
            self.tell(sid, customer_id, waiting_room.places(self.redis, self.sku, [customer_id])[0])

    def on_leave(self, sid: str, data: object = None) -> None:
        """The customer's `leave` event: out of the queue, or the unit they hold back.

        It names its customer by room token: a customer leaves and hangs up at once, and
        python-socketio may run this handler after the disconnect that forgot the socket. A
        reloaded page names the spare ticket it was rendered with (events.LEAVE): the socket
        then stays followed as the tab's own customer."""
        token = data.get("room_token") if isinstance(data, dict) else None
        spare = isinstance(data, dict) and data.get("spare") is True
        customer_id = signing.verify_room_token(
            self.settings.secret, token, self.settings.room_token_ttl_s
        )
        if self.here.get(sid) == customer_id:
            self.unfollow(sid)
        if customer_id is not None:
            try:
                if waiting_room.leave(self.redis, self.sku, customer_id, spare=spare) == "hold":
                    self.stock_feed.changed(self.sku)
            except redis.RedisError as error:  # the grace after its disconnect does it then
                log.warning("waiting room: could not let %s leave: %s", customer_id, error)

    def on_disconnect(self, sid: str) -> None:
        """Gone, not left: the customer may be reloading the page; the grace decides. A
        customer with another socket here (the reloaded page's, connected first) is not gone;
        one whose other socket is on another process is put right by that process's next
        update (places() clears the mark), well within the grace."""
        customer_id = self.unfollow(sid)
        if customer_id is not None and not self.sockets_of[customer_id]:
            try:
                waiting_room.socket_gone(self.redis, self.sku, customer_id)
            except redis.RedisError as error:  # the hold then lapses on its own time
                log.warning("waiting room: could not mark %s gone: %s", customer_id, error)

    def follow(self, sid: str, customer_id: str) -> None:
        if self.here.get(sid) != customer_id:
            self.unfollow(sid)
            self.here[sid] = customer_id
            self.sockets_of[customer_id] += 1

    def unfollow(self, sid: str) -> str | None:
        customer_id = self.here.pop(sid, None)
        if customer_id is not None:
            self.sockets_of[customer_id] -= 1
            if self.sockets_of[customer_id] <= 0:
                del self.sockets_of[customer_id]
        return customer_id

    def tell(self, sid: str, customer_id: str, place: Place) -> None:
        name, payload = self.news(customer_id, place)
        if name is None:
            return
        if name in (events.SOLD_OUT, events.HOLD_LAPSED):
            self.unfollow(sid)  # nothing more will happen to this customer here
        self.socketio.emit(name, payload, to=sid, namespace=events.NAMESPACE, ignore_queue=True)
        self.metrics.emits.labels(name).inc()

    def news(self, customer_id: str, place: Place) -> tuple[str | None, dict[str, Any]]:
        if place.status == waiting_room.QUEUED:
            return events.QUEUE, events.queue(place.position, self.eta(place.position))
        if place.status == waiting_room.ADMITTED:
            token = self.admission_token(customer_id)
            return events.ADMITTED, events.admitted(token, place.hold_left_ms / 1000)
        if place.status == waiting_room.SOLD_OUT:
            return events.SOLD_OUT, events.sold_out(self.sku)
        if place.status == waiting_room.OUT:
            return events.HOLD_LAPSED, events.sold_out(self.sku)
        return None, {}  # ordering: its charge_result is on the way

    # -- the loop ------------------------------------------------------------------------------

    def run_admission(self) -> None:
        """Admit every STEP_S (and retune an auto rate every TUNE_S), whatever else is busy."""
        next_tune = time.monotonic() + TUNE_S
        while True:
            with self.guarded("admission"):
                if self.auto is not None and time.monotonic() >= next_tune:
                    next_tune = time.monotonic() + TUNE_S
                    self.tune(self.auto)
                self.admit()
            self.socketio.sleep(STEP_S)

    def run_updates(self) -> None:
        """Tell queued sockets where they stand every UPDATE_S: its own loop, because telling
        10,000 sockets takes about a second and admission must not wait for it."""
        due = time.monotonic() + UPDATE_S
        while True:
            self.socketio.sleep(max(0.0, due - time.monotonic()))
            due = time.monotonic() + UPDATE_S  # every UPDATE_S from start to start
            with self.guarded("queue updates"):
                self.update()

    @contextlib.contextmanager
    def guarded(self, what: str) -> Iterator[None]:
        """A loop's round that failed is logged (a Redis outage once per OUTAGE_LOG_S) and the
        loop goes on."""
        try:
            yield
        except redis.RedisError as error:
            if time.monotonic() - self.outage_logged > OUTAGE_LOG_S:
                self.outage_logged = time.monotonic()
                log.warning("waiting room: Redis unavailable, %s paused: %s", what, error)
        except Exception:
            log.exception("waiting room: %s failed", what)

    def admit(self) -> None:
        step = waiting_room.step(self.redis, self.sku)
        hold_s = self.settings.room_hold_s
        for customer_id in step.admitted:
            # Through the message queue: the customer's socket may be on another process.
            payload = events.admitted(self.admission_token(customer_id), hold_s)
            self.socketio.emit(
                events.ADMITTED,
                payload,
                to=events.room_for(customer_id),
                namespace=events.NAMESPACE,
            )
            self.metrics.emits.labels(events.ADMITTED).inc()
        if step.admitted or step.expired or step.abandoned_held or step.left_after_decline:
            self.stock_feed.changed(self.sku)
        if step.ended:
            log.info("sale %s sold out: %d queued customers told", self.sku, step.told_sold_out)
            self.socketio.emit(
                events.SOLD_OUT,
                events.sold_out(self.sku),
                to=events.queue_room(self.sku),
                namespace=events.NAMESPACE,
            )
            self.metrics.emits.labels(events.SOLD_OUT).inc()

    def tune(self, auto: AutoAdmission) -> None:
        """--admit-rate auto: one reading of the sale's counters, the rate it allows, set."""
        room, by_state = (
            waiting_room.counts(self.redis, self.sku),
            orders.count_by_state(self.redis, self.sku),
        )
        reading = Reading(
            at_s=time.monotonic(),
            admitted=room["admitted"],
            holding=waiting_room.units_held(self.redis, self.sku),
            placed=sum(by_state.values()),
            pending=by_state[orders.PENDING],
        )
        rate = auto.update(reading)
        waiting_room.set_rate(self.redis, self.sku, rate)
        self.metrics.room_admit_rate.set(rate)

    def update(self) -> None:
        """Measure the admission rate, and tell this process's sockets where they stand."""
        admitted = waiting_room.counts(self.redis, self.sku)["admitted"]
        now = time.monotonic()
        if self.admitted_seen is not None:
            then, before = self.admitted_seen
            self.admit_rate = (admitted - before) / max(1e-3, now - then)
        self.admitted_seen = (now, admitted)
        followed = list(self.here.items())
        for start in range(0, len(followed), 500):
            batch = followed[start : start + 500]
            found = waiting_room.places(self.redis, self.sku, [cid for _, cid in batch])
            for (sid, customer_id), place in zip(batch, found, strict=True):
                self.tell(sid, customer_id, place)

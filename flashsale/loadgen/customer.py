"""One simulated customer's journey over HTTP and Socket.IO, timed phase by phase."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from flashsale.core import events
from flashsale.loadgen.client.connection import WireError, describe
from flashsale.loadgen.client.socketio import RoomSocket, SocketError, SocketRefused
from flashsale.loadgen.crowd import Kit
from flashsale.loadgen.scenario import TestCard
from flashsale.loadgen.stats import ANSWERED, Journey

FALLBACK_POLL_S = 0.2


# A restarting server (a deploy, a crash) refuses or cuts connections for a moment, or answers
# 503 while its Redis is away: like a checkout page, a customer tries again within the phase's
# timeout. Retrying POST /charges is safe: the same customer + card token is the same order.
RETRY_PAUSE_S = 0.25
RETRYABLE_STATUS = frozenset({502, 503, 504})
# Pub/sub emits are fire-and-forget: one published while the server's listener reconnects is
# lost although the socket stays up. A customer still waiting this long asks GET /orders/<id>.
RESULT_CHECK_S = 5.0
# What a failed HTTP exchange raises: no answer in time, or the connection refused or cut.
HTTP_ERRORS = (WireError, TimeoutError)
# How a socket the server accepted is counted under the "connect" endpoint.
CONNECTED = "connected"


@dataclass(frozen=True)
class Answer:
    """An HTTP response read whole: its status and its JSON object body ({} if not one)."""

    status: int
    body: dict[str, Any]


class JourneyStop(Exception):
    """Ends a journey early with its outcome already set on the Journey."""


class Customer:
    """One customer: page, card token, socket joined, submit, then the result in the room."""

    def __init__(self, kit: Kit, index: int, card: TestCard, scheduled: float) -> None:
        self.kit = kit
        self.card = card
        self.paying_with = card  # the card of the attempt in progress (a retry may change it)
        self.journey = Journey(index=index, card=card.name, scheduled=scheduled, started=scheduled)
        self.phase: str | None = None
        self.phase_started = 0.0
        self.socket: RoomSocket | None = None
        self.joined = asyncio.Event()
        self.news = asyncio.Event()  # a result arrived or the socket dropped
        self.dropped = False
        self.counted = False  # in kit.sockets, the live gauge of open sockets
        self.hanging_up = False
        self.results: dict[str, dict[str, Any]] = {}
        # The waiting room's news (see events): the admission token, sold out, a lapsed hold.
        self.admission: str | None = None
        self.told_sold_out = False
        self.lapsed = False
        self.at_the_doors = False  # counted ready (Doors.arrive_ready)
        # 3D Secure: the PaymentIntents the server said wait for this customer, and those done.
        self.actions: dict[str, dict[str, Any]] = {}
        self.authenticated: set[str] = set()

    # -- timing ----------------------------------------------------------------------------

    def enter(self, phase: str | None) -> None:
        now = self.kit.now()
        if self.phase is not None:
            self.kit.in_flight[self.phase] -= 1
        self.phase = phase
        self.phase_started = now
        if phase is not None:
            self.kit.in_flight[phase] += 1

    def done(self, phase: str) -> None:
        """Close the current phase's clock; the phase stays 'current' until the next enter()."""
        self.journey.phases[phase] = self.kit.now() - self.phase_started

    def finish(self, outcome: str, error: str | None = None) -> JourneyStop:
        self.journey.outcome = outcome
        self.journey.error = error
        self.journey.finished = self.kit.now()
        return JourneyStop(outcome)

    # -- the journey -----------------------------------------------------------------------

    async def run(self) -> Journey:
        self.journey.started = self.kit.now()
        try:
            session = await self.load_page()
            if "waiting_room" in session:
                await self.through_the_room(session)
            token = await self.tokenize(session)
            await self.connect(session)
            if self.kit.doors is not None:
                await self.wait_for_doors()
            order_id = await self.submit(session, token)
            await self.wait_for_result(session, order_id)
        except JourneyStop:
            pass
        finally:
            self.enter(None)
            if self.kit.doors is not None and not self.at_the_doors:
                self.kit.doors.drop_out()
            await self.hang_up()
        return self.journey

    async def load_page(self) -> dict[str, Any]:
        self.enter("session")
        try:
            answer = await self.request("session", "GET", f"{self.kit.target.url}/session")
        except HTTP_ERRORS as error:
            raise self.finish("error", f"session: {describe(error)}") from None
        if answer.status != 200:
            raise self.finish("error", f"session: http {answer.status}")
        session = answer.body
        if not isinstance(session.get("room_token"), str) or "customer_id" not in session:
            raise self.finish("error", "session: malformed response")
        self.done("session")
        self.kit.last_sale = session.get("sale") or self.kit.last_sale
        return session

    async def tokenize(self, session: dict[str, Any], card: TestCard | None = None) -> str:
        """The card as Stripe holds it: a token (tok_...) or, where the server's session says
        `"payments": "intents"`, a PaymentMethod (pm_...), made as Stripe.js makes them from
        the card's number, or the test alias real test mode accepts instead."""
        card = self.paying_with = card or self.card
        api_base = str(session.get("stripe_api_base", "")).rstrip("/")
        intents = session.get("payments") == "intents"
        if tokenize_with_alias(self.kit.target.tokenize, api_base):
            if card.token is None:
                raise self.finish("error", f"tokenize: test card {card.name} has no tok_ alias")
            return "pm_card_" + card.token[4:] if intents else card.token
        self.enter("tokenize")
        year = datetime.date.today().year + 3
        try:
            answer = await self.send(
                "tokenize",
                "POST",
                f"{api_base}/v1/payment_methods" if intents else f"{api_base}/v1/tokens",
                form=(b"type=card&" if intents else b"") + card_form(card.number, year),
                headers=(("Authorization", f"Bearer {session.get('publishable_key', '')}"),),
            )
        except HTTP_ERRORS as error:
            raise self.finish("error", f"tokenize: {describe(error)}") from None
        body = answer.body
        made = str(body.get("id", ""))
        if answer.status == 200 and made.startswith("pm_" if intents else "tok_"):
            self.done("tokenize")
            return made
        stripe_error: dict[str, Any] = _error_of(body)
        if answer.status == 402 and stripe_error.get("type") == "card_error":
            # Stripe refused the card itself (e.g. incorrect_number): the customer is declined.
            self.done("tokenize")
            self.journey.code = stripe_error.get("code")
            self.journey.decline_code = stripe_error.get("decline_code") or stripe_error.get("code")
            raise self.finish("declined")
        code = stripe_error.get("code") or stripe_error.get("type") or ""
        raise self.finish("error", f"tokenize: http {answer.status} {code}".strip())

    async def connect(self, session: dict[str, Any]) -> None:
        self.enter("connect")
        socket = RoomSocket(self.on_event, self.on_drop)
        self.socket = socket
        timeout = self.kit.target.timeout_s
        deadline = time.perf_counter() + timeout
        while True:
            try:
                await socket.connect(
                    self.kit.target.url,
                    {"room_token": session["room_token"]},
                    max(1.0, deadline - time.perf_counter()),
                )
                self.journey.calls[("connect", CONNECTED)] += 1
                break
            except SocketRefused as refused:
                # A refused room token is final; a server that is not there (yet) is not.
                self.journey.calls[("connect", "refused")] += 1
                raise self.finish("error", f"connect: refused: {refused}"[:120]) from None
            except SocketError as error:
                self.journey.calls[("connect", str(error)[:80])] += 1
                if time.perf_counter() + RETRY_PAUSE_S >= deadline:
                    raise self.finish("error", f"connect: {error}"[:120]) from None
            self.journey.retries["connect"] += 1
            await asyncio.sleep(RETRY_PAUSE_S)
        self.counted = True
        self.kit.sockets += 1
        self.kit.peak_sockets = max(self.kit.peak_sockets, self.kit.sockets)
        try:
            async with asyncio.timeout(max(0.0, deadline - time.perf_counter())):
                await self.joined.wait()
        except TimeoutError:
            raise self.finish("error", "connect: no joined event") from None
        self.done("connect")

    async def wait_for_doors(self, lag_phase: str = "submit") -> None:
        doors = self.kit.doors
        assert doors is not None
        self.enter("waiting")
        self.at_the_doors = True
        doors.arrive_ready()
        await doors.opened.wait()
        assert doors.opened_at is not None
        # The customer's clock now starts at the doors; the wait to get going is charged to
        # the phase that follows (submit, or the page with a waiting room) in the corrected view.
        self.journey.scheduled = doors.opened_at - self.kit.clock0
        self.journey.started = self.kit.now()
        self.journey.lag_phase = lag_phase

    # -- the waiting room --------------------------------------------------------------------

    async def through_the_room(self, session: dict[str, Any]) -> None:
        """Ticket, socket, (doors,) queue, admitted, card, submit, result; a declined customer
        may try another card while the unit is held for them (Target.retry_after_decline).

        With doors, the room opens when they do (rehearse opens both at one instant); the
        wait for the doors is the customer's own, charged to no phase. Ends with JourneyStop."""
        ticket = session["waiting_room"]
        if not isinstance(ticket, dict) or ticket.get("status") == "sold_out":
            raise self.finish("sold_out")
        self.journey.room["queued"] += 1
        arrived = time.time()
        await self.connect(session)
        if self.kit.doors is not None:
            await self.wait_for_doors(lag_phase="queue")
            if ticket.get("order") == "shuffle":
                arrived = time.time()  # the early crowd's order is drawn when the doors open
        try:
            admission = await self.wait_for_admission(session)
        finally:
            self.journey.queue_span = (arrived, time.time(), self.admission is not None)
        admitted_at = self.kit.now()
        card, retried = self.card, False
        while True:
            try:
                token = await self.tokenize(session, card)
                order_id = await self.submit(session, token, admission)
                await self.wait_for_result(session, order_id)
            except JourneyStop:
                if self.journey.outcome in ANSWERED:
                    # What the room promises: from admitted to the answer, queue left out.
                    self.journey.phases["checkout"] = self.kit.now() - admitted_at
                if retried or self.journey.outcome != "declined" or not self.retries():
                    self.leave(session)  # gives the held unit back (after a decline) at once
                    raise
            retried = True
            self.journey.room["retried_after_decline"] += 1
            card = self.kit.retry_card or self.card
            self.journey.finished = None

    def leave(self, session: dict[str, Any]) -> None:
        """Tell the waiting room this customer is done: the unit they hold goes to the next."""
        if self.socket is not None:
            self.socket.emit(events.LEAVE, {"room_token": session["room_token"]})

    def retries(self) -> bool:
        """Whether this declined customer tries another card (Target.retry_after_decline)."""
        share = self.kit.target.retry_after_decline
        return share > 0 and self.kit.rng.random() < share

    async def wait_for_admission(self, session: dict[str, Any]) -> str:
        """In the queue until admitted (the admission token), told sold out, or out of
        patience; a dropped socket reconnects and keeps its place."""
        self.enter("queue")
        deadline = time.perf_counter() + self.kit.target.patience.sample(self.kit.rng)
        while self.admission is None and not self.told_sold_out:
            if self.lapsed:
                raise self.finish("error", "queue: hold lapsed before the customer paid")
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                self.journey.room["abandoned"] += 1
                self.leave(session)
                raise self.finish("abandoned")
            if self.dropped:
                self.journey.retries["connect"] += 1
                await self.hang_up()
                self.hanging_up = self.dropped = False
                self.joined.clear()
                await self.connect(session)
                self.enter("queue")
                continue
            self.news.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self.news.wait()
        self.done("queue")
        if self.admission is None:
            self.journey.room["waited_then_sold_out"] += 1
            raise self.finish("sold_out")
        return self.admission

    async def submit(
        self, session: dict[str, Any], token: str, admission: str | None = None
    ) -> str:
        self.enter("submit")
        self.journey.submit_started = self.phase_started
        self.kit.submit_starts.append(self.phase_started)
        order = {
            "customer_id": session["customer_id"],
            "room_token": session["room_token"],
            ("payment_method" if token.startswith("pm_") else "token"): token,
            "quantity": 1,
        }
        if admission is not None:
            order["admission_token"] = admission
        try:
            answer = await self.request(
                "submit", "POST", f"{self.kit.target.url}/charges", json_body=order
            )
        except HTTP_ERRORS as failure:
            raise self.finish("error", f"submit: {describe(failure)}") from None
        body = answer.body
        error = _error_of(body)
        if answer.status in (200, 202) and body.get("order_id"):
            self.done("submit")
            self.journey.order_id = str(body["order_id"])
            return self.journey.order_id
        if answer.status == 409 and error.get("code") == "sold_out":
            self.done("submit")
            raise self.finish("sold_out")
        code = error.get("code") or ""
        raise self.finish("error", f"submit: http {answer.status} {code}".strip())

    async def wait_for_result(self, session: dict[str, Any], order_id: str) -> None:
        self.enter("result")
        deadline = time.perf_counter() + self.kit.target.timeout_s
        check_at = time.perf_counter() + RESULT_CHECK_S
        while order_id not in self.results and not self.dropped:
            if order_id in self.actions and order_id not in self.authenticated:
                await self.authenticate(session, self.actions[order_id])
                self.authenticated.add(order_id)
                self.enter("result")
                continue
            now = time.perf_counter()
            remaining = deadline - now
            if remaining <= 0:
                raise self.finish("timeout")
            if self.kit.target.fallback and now >= check_at:
                check_at = now + RESULT_CHECK_S
                result = await self.check_order(session, order_id)
                if result is not None:
                    self.done("result")
                    self.journey.fallback = True
                    raise self.settle(result)
                continue
            self.news.clear()
            wait = min(remaining, check_at - now) if self.kit.target.fallback else remaining
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self.news.wait()
        if order_id in self.results:
            self.done("result")
            raise self.settle(self.results[order_id])
        # The socket dropped before the result: ask for it over HTTP, as the checkout page does.
        self.journey.disconnected = True
        if self.kit.target.fallback:
            result = await self.poll_order(session, order_id, deadline)
            if result is not None:
                self.done("result")
                self.journey.fallback = True
                raise self.settle(result)
        raise self.finish("disconnected")

    async def check_order(self, session: dict[str, Any], order_id: str) -> dict[str, Any] | None:
        """The order's final result from GET /orders/<id>, or None (pending, or no answer)."""
        url = f"{self.kit.target.url}/orders/{order_id}"
        try:
            # The header, not ?room_token=: a credential in a URL ends up in access logs.
            token = (("X-Room-Token", str(session["room_token"])),)
            answer = await self.send("order_check", "GET", url, headers=token)
        except HTTP_ERRORS:
            return None
        if answer.status == 200 and answer.body.get("status") in events.FINAL_STATUSES:
            return answer.body
        return None

    async def send(
        self,
        endpoint: str,
        method: str,
        url: str,
        *,
        form: bytes | None = None,
        json_body: dict[str, Any] | None = None,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> Answer:
        """One HTTP exchange, its body read whole (raises one of HTTP_ERRORS); `form` is an
        urlencoded body. Counted under `endpoint` with its status or its transport error."""
        body = b""
        if form is not None:
            body = form
            headers += (("Content-Type", "application/x-www-form-urlencoded"),)
        elif json_body is not None:
            body = json.dumps(json_body).encode()
            headers += (("Content-Type", "application/json"),)
        try:
            async with asyncio.timeout(self.kit.target.timeout_s):
                response = await self.kit.http.request(method, url, body, headers)
        except HTTP_ERRORS as error:
            self.journey.calls[(endpoint, describe(error))] += 1
            raise
        self.journey.calls[(endpoint, str(response.status))] += 1
        return Answer(response.status, _json(response.body))

    async def request(self, endpoint: str, method: str, url: str, **options: Any) -> Answer:
        """One HTTP request, tried again while the server is briefly away (see RETRY_PAUSE_S);
        every try is counted, and every retry too (a retry is never hidden)."""
        deadline = time.perf_counter() + self.kit.target.timeout_s
        while True:
            try:
                answer = await self.send(endpoint, method, url, **options)
            except HTTP_ERRORS:
                if time.perf_counter() + RETRY_PAUSE_S >= deadline:
                    raise
            else:
                late = time.perf_counter() + RETRY_PAUSE_S >= deadline
                if answer.status not in RETRYABLE_STATUS or late:
                    return answer
            self.journey.retries[endpoint] += 1
            await asyncio.sleep(RETRY_PAUSE_S)

    async def authenticate(self, session: dict[str, Any], action: dict[str, Any]) -> None:
        """Answer the card's 3D Secure challenge as the customer would in Stripe.js: the
        simulator hosts it (POST .../complete or .../fail). Real Stripe's challenge needs a
        browser. A customer whose card says `abandon` leaves the page instead."""
        challenge = self.paying_with.challenge or "complete"
        if challenge == "abandon":
            raise self.finish("abandoned")
        self.enter("authenticate")
        api_base = str(session.get("stripe_api_base", "")).rstrip("/")
        intent = str(action.get("payment_intent", ""))
        secret = str(action.get("client_secret", ""))
        try:
            answer = await self.send(
                "authenticate",
                "POST",
                f"{api_base}/3d_secure/{intent}/{challenge}",
                form=urlencode({"client_secret": secret}).encode(),
                headers=(("Accept", "application/json"),),
            )
        except HTTP_ERRORS as error:
            raise self.finish("error", f"authenticate: {describe(error)}") from None
        if answer.status != 200:
            raise self.finish("error", f"authenticate: http {answer.status}")
        self.done("authenticate")

    async def poll_order(
        self, session: dict[str, Any], order_id: str, deadline: float
    ) -> dict[str, Any] | None:
        while time.perf_counter() < deadline:
            result = await self.check_order(session, order_id)
            if result is not None:
                return result
            await asyncio.sleep(FALLBACK_POLL_S)
        return None

    def settle(self, result: dict[str, Any]) -> JourneyStop:
        self.journey.code = result.get("code")
        self.journey.decline_code = result.get("decline_code")
        status = result.get("status")
        if status not in events.FINAL_STATUSES:
            return self.finish("error", f"result: unknown status {status!r}")
        return self.finish(str(status))

    async def hang_up(self) -> None:
        self.hanging_up = True
        socket, self.socket = self.socket, None
        self.uncount()
        if socket is not None:
            # Best effort on the way out: the outcome is already decided.
            await socket.close()

    # -- socket events ---------------------------------------------------------------------

    def on_event(self, name: str, data: Any) -> None:
        if name == events.JOINED:
            self.joined.set()
        elif name == events.CHARGE_RESULT:
            self.on_result(data)
        elif name == events.ACTION_REQUIRED:
            if isinstance(data, dict) and isinstance(data.get("order_id"), str):
                self.actions.setdefault(data["order_id"], data)
                self.news.set()
        elif name == events.QUEUE:
            self.journey.room["position_updates"] += 1
        elif name == events.ADMITTED:
            if isinstance(data, dict) and isinstance(data.get("admission_token"), str):
                self.admission = data["admission_token"]
                self.news.set()
        elif name == events.SOLD_OUT:
            self.told_sold_out = True
            self.news.set()
        elif name == events.HOLD_LAPSED:
            self.lapsed = True
            self.news.set()

    def on_result(self, data: Any) -> None:
        if not isinstance(data, dict) or not data.get("order_id"):
            return
        order_id = str(data["order_id"])
        earlier = self.results.get(order_id)
        if earlier is not None and _final_view(earlier) != _final_view(data):
            # Results are re-sent on every join, so duplicates are normal; a different final
            # answer for the same order is not.
            self.journey.integrity = (
                f"order {order_id}: {_final_view(earlier)} then {_final_view(data)}"
            )
        self.results.setdefault(order_id, data)
        self.news.set()

    def uncount(self) -> None:
        if self.counted:
            self.counted = False
            self.kit.sockets -= 1

    def on_drop(self, reason: str) -> None:
        if not self.hanging_up:
            # A real drop (the server or the transport), not our hang-up.
            self.journey.drop_reason = reason or "unknown"
        self.uncount()
        self.dropped = True
        self.news.set()


@functools.lru_cache(maxsize=64)
@functools.lru_cache(maxsize=64)
def card_form(number: str, year: int) -> bytes:
    """The card fields Stripe.js posts for a test card (American Express takes a 4-digit CVC),
    encoded once per card."""
    return urlencode(
        {
            "card[number]": number,
            "card[exp_month]": "12",
            "card[exp_year]": str(year),
            "card[cvc]": "1234" if number.startswith(("34", "37")) else "123",
        }
    ).encode()


def _final_view(result: dict[str, Any]) -> tuple[Any, ...]:
    return (result.get("status"), result.get("charge_id"), result.get("decline_code"))


def tokenize_with_alias(mode: str, api_base: str) -> bool:
    """Whether a customer uses the card's tok_ alias instead of sending its number: asked for,
    or `auto` against real Stripe, whose test mode refuses raw numbers from non-Stripe.js code."""
    if mode == "auto":
        host = urlsplit(api_base).hostname or ""
        return host == "stripe.com" or host.endswith(".stripe.com")
    return mode == "test-tokens"


def _json(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _error_of(body: dict[str, Any]) -> dict[str, Any]:
    """The Stripe-shaped {"error": {...}} object of a response body, or {}."""
    error = body.get("error")
    return error if isinstance(error, dict) else {}

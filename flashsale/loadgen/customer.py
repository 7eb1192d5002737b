"""One simulated customer's journey over HTTP and Socket.IO, timed phase by phase."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import ssl
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import httpx
import socketio

from flashsale.core import events
from flashsale.loadgen.scenario import TestCard
from flashsale.loadgen.stats import Journey

FALLBACK_POLL_S = 0.2


class CountingHandler(logging.Handler):
    """Counts the socket client libraries' log lines instead of printing them.

    Under overload engineio logs "packet queue is empty, aborting" per socket (its write loop
    gave up waiting for the server's pings) straight onto the dashboard; the run reports the
    counts, and the drops themselves are counted per journey with their reason.
    """

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[f"{record.name}: {record.getMessage()}"[:120]] += 1

    def drain(self) -> Counter[str]:
        counts, self.counts = self.counts, Counter()
        return counts


CLIENT_LOG = CountingHandler()


def _quiet_logger(name: str) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.propagate = False
    logger.setLevel(logging.WARNING)
    logger.addHandler(CLIENT_LOG)
    return logger


SOCKETIO_LOG = _quiet_logger("flashsale.loadgen.socketio")
ENGINEIO_LOG = _quiet_logger("flashsale.loadgen.engineio")
# A restarting server (a deploy, a crash) refuses or cuts connections for a moment, or answers
# 503 while its Redis is away: like a checkout page, a customer tries again within the phase's
# timeout. Retrying POST /charges is safe: the same customer + card token is the same order.
RETRY_PAUSE_S = 0.25
RETRYABLE_STATUS = frozenset({502, 503, 504})
# Pub/sub emits are fire-and-forget: one published while the server's listener reconnects is
# lost although the socket stays up. A customer still waiting this long asks GET /orders/<id>.
RESULT_CHECK_S = 5.0
# httpcore scans its whole pool on every request start and end, so one pool of thousands of
# connections costs O(n) per request; customers are spread over many small pools instead.
HTTP_POOLS = 32


@dataclass
class Target:
    """Where customers go and how they behave there."""

    url: str
    tokenize: str = "raw"  # raw | test-tokens
    timeout_s: float = 30.0
    fallback: bool = True


class Doors:
    """Doors-open mode: customers get ready, then all submit the moment the last one is ready.

    In a multi-process run each process only knows its own customers: `on_ready` then tells
    the coordinator, which opens every process's doors at one agreed instant (`open(at=)`).
    """

    def __init__(self, on_ready: Callable[[], None] | None = None) -> None:
        self.expected: int | None = None  # known once every arrival has been dispatched
        self.ready = 0
        self.dropped_out = 0
        self.opened = asyncio.Event()
        self.opened_at: float | None = None
        self.last_ready_at: float | None = None
        self.on_ready = on_ready
        self.all_ready = False

    def arrive_ready(self) -> None:
        self.ready += 1
        self.last_ready_at = time.perf_counter()
        self.check()

    def drop_out(self) -> None:
        self.dropped_out += 1
        self.check()

    def check(self) -> None:
        if self.opened.is_set() or self.expected is None or self.all_ready:
            return
        if self.ready + self.dropped_out >= self.expected:
            if self.on_ready is None:
                self.open()
            else:
                self.all_ready = True
                self.on_ready()

    def open(self, at: float | None = None) -> None:
        """Open now, or record the agreed instant `at` (perf_counter) that was just reached."""
        if not self.opened.is_set():
            self.opened_at = time.perf_counter() if at is None else at
            self.opened.set()


@dataclass
class Kit:
    """What every customer of a run shares: connection pools, the run clock, live gauges."""

    target: Target
    http_pools: list[httpx.AsyncClient]
    ws_http: aiohttp.ClientSession
    clock0: float
    doors: Doors | None = None
    in_flight: Counter[str] = field(default_factory=Counter)
    sockets: int = 0
    peak_sockets: int = 0
    last_sale: dict[str, Any] | None = None
    submit_starts: list[float] = field(default_factory=list)

    def now(self) -> float:
        """Seconds on the run clock."""
        return time.perf_counter() - self.clock0

    def http_for(self, index: int) -> httpx.AsyncClient:
        return self.http_pools[index % len(self.http_pools)]


def create_kit(target: Target, clock0: float, doors: Doors | None = None) -> Kit:
    """Pools sized for thousands of customers: the defaults (100 connections) would queue them."""
    timeout = httpx.Timeout(target.timeout_s)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=100)
    # One TLS context for all pools: each costs ~20 ms of CPU to load the CA bundle.
    tls = ssl.create_default_context()
    pools = [
        httpx.AsyncClient(timeout=timeout, limits=limits, verify=tls) for _ in range(HTTP_POOLS)
    ]
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    ws_http = aiohttp.ClientSession(connector=connector)
    return Kit(target=target, http_pools=pools, ws_http=ws_http, clock0=clock0, doors=doors)


async def close_kit(kit: Kit) -> None:
    for pool in kit.http_pools:
        await pool.aclose()
    await kit.ws_http.close()


class JourneyStop(Exception):
    """Ends a journey early with its outcome already set on the Journey."""


class Customer:
    """One customer: page, card token, socket joined, submit, then the result in the room."""

    def __init__(self, kit: Kit, index: int, card: TestCard, scheduled: float) -> None:
        self.kit = kit
        self.http = kit.http_for(index)
        self.card = card
        self.journey = Journey(index=index, card=card.name, scheduled=scheduled, started=scheduled)
        self.phase: str | None = None
        self.phase_started = 0.0
        self.sio: socketio.AsyncClient | None = None
        self.joined = asyncio.Event()
        self.news = asyncio.Event()  # a result arrived or the socket dropped
        self.dropped = False
        self.counted = False  # in kit.sockets, the live gauge of open sockets
        self.hanging_up = False
        self.results: dict[str, dict[str, Any]] = {}

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
        ready = False
        try:
            session = await self.load_page()
            token = await self.tokenize(session)
            await self.connect(session)
            if self.kit.doors is not None:
                ready = True
                await self.wait_for_doors()
            order_id = await self.submit(session, token)
            await self.wait_for_result(session, order_id)
        except JourneyStop:
            pass
        finally:
            self.enter(None)
            if self.kit.doors is not None and not ready:
                self.kit.doors.drop_out()
            await self.hang_up()
        return self.journey

    async def load_page(self) -> dict[str, Any]:
        self.enter("session")
        try:
            response = await self.request("GET", f"{self.kit.target.url}/session")
        except httpx.HTTPError as error:
            raise self.finish("error", f"session: {type(error).__name__}") from None
        if response.status_code != 200:
            raise self.finish("error", f"session: http {response.status_code}")
        try:
            session = response.json()
            session["room_token"], session["customer_id"]  # noqa: B018 - must be there
        except (ValueError, KeyError, TypeError):
            raise self.finish("error", "session: malformed response") from None
        self.done("session")
        self.kit.last_sale = session.get("sale") or self.kit.last_sale
        return session

    async def tokenize(self, session: dict[str, Any]) -> str:
        if self.kit.target.tokenize == "test-tokens":
            assert self.card.token is not None  # parse_cards refuses cards without one
            return self.card.token
        self.enter("tokenize")
        api_base = str(session.get("stripe_api_base", "")).rstrip("/")
        year = datetime.date.today().year + 3
        try:
            response = await self.http.post(
                f"{api_base}/v1/tokens",
                data={
                    "card[number]": self.card.number,
                    "card[exp_month]": "12",
                    "card[exp_year]": str(year),
                    "card[cvc]": "123",
                },
                headers={"Authorization": f"Bearer {session.get('publishable_key', '')}"},
            )
        except httpx.HTTPError as error:
            raise self.finish("error", f"tokenize: {type(error).__name__}") from None
        body = _json(response)
        if response.status_code == 200 and str(body.get("id", "")).startswith("tok_"):
            self.done("tokenize")
            return str(body["id"])
        stripe_error: dict[str, Any] = _error_of(body)
        if response.status_code == 402 and stripe_error.get("type") == "card_error":
            # Stripe refused the card itself (e.g. incorrect_number): the customer is declined.
            self.done("tokenize")
            self.journey.code = stripe_error.get("code")
            self.journey.decline_code = stripe_error.get("decline_code") or stripe_error.get("code")
            raise self.finish("declined")
        code = stripe_error.get("code") or stripe_error.get("type") or ""
        raise self.finish("error", f"tokenize: http {response.status_code} {code}".strip())

    async def connect(self, session: dict[str, Any]) -> None:
        self.enter("connect")
        sio = socketio.AsyncClient(
            logger=SOCKETIO_LOG,
            engineio_logger=ENGINEIO_LOG,
            reconnection=False,
            handle_sigint=False,
            http_session=self.kit.ws_http,
            request_timeout=self.kit.target.timeout_s,
        )
        self.sio = sio
        sio.on(events.JOINED, self.on_joined)
        sio.on(events.CHARGE_RESULT, self.on_result)
        sio.on("disconnect", self.on_disconnect)
        timeout = self.kit.target.timeout_s
        deadline = time.perf_counter() + timeout
        while True:
            try:
                await sio.connect(
                    self.kit.target.url,
                    auth={"room_token": session["room_token"]},
                    transports=["websocket"],
                    wait_timeout=max(1.0, deadline - time.perf_counter()),
                )
                break
            except (TimeoutError, socketio.exceptions.SocketIOError, OSError) as error:
                # A refused room token is final; a server that is not there (yet) is not.
                refused = "namespaces failed to connect" in str(error)
                if refused or time.perf_counter() + RETRY_PAUSE_S >= deadline:
                    raise self.finish("error", f"connect: {_describe(error)}") from None
            await asyncio.sleep(RETRY_PAUSE_S)
        self.counted = True
        self.kit.sockets += 1
        self.kit.peak_sockets = max(self.kit.peak_sockets, self.kit.sockets)
        try:
            await asyncio.wait_for(self.joined.wait(), timeout)
        except TimeoutError:
            raise self.finish("error", "connect: no joined event") from None
        self.done("connect")

    async def wait_for_doors(self) -> None:
        doors = self.kit.doors
        assert doors is not None
        self.enter("waiting")
        doors.arrive_ready()
        await doors.opened.wait()
        assert doors.opened_at is not None
        # The customer's clock now starts at the doors; the wait to get going is charged to
        # the submit phase in the corrected view.
        self.journey.scheduled = doors.opened_at - self.kit.clock0
        self.journey.started = self.kit.now()
        self.journey.lag_phase = "submit"

    async def submit(self, session: dict[str, Any], token: str) -> str:
        self.enter("submit")
        self.journey.submit_started = self.phase_started
        self.kit.submit_starts.append(self.phase_started)
        try:
            response = await self.request(
                "POST",
                f"{self.kit.target.url}/charges",
                json={
                    "customer_id": session["customer_id"],
                    "room_token": session["room_token"],
                    "token": token,
                    "quantity": 1,
                },
            )
        except httpx.HTTPError as failure:
            raise self.finish("error", f"submit: {type(failure).__name__}") from None
        body = _json(response)
        error = _error_of(body)
        if response.status_code in (200, 202) and body.get("order_id"):
            self.done("submit")
            self.journey.order_id = str(body["order_id"])
            return self.journey.order_id
        if response.status_code == 409 and error.get("code") == "sold_out":
            self.done("submit")
            raise self.finish("sold_out")
        code = error.get("code") or ""
        raise self.finish("error", f"submit: http {response.status_code} {code}".strip())

    async def wait_for_result(self, session: dict[str, Any], order_id: str) -> None:
        self.enter("result")
        deadline = time.perf_counter() + self.kit.target.timeout_s
        check_at = time.perf_counter() + RESULT_CHECK_S
        while order_id not in self.results and not self.dropped:
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
                await asyncio.wait_for(self.news.wait(), wait)
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
            response = await self.http.get(url, params={"room_token": session["room_token"]})
        except httpx.HTTPError:
            return None
        body = _json(response)
        if response.status_code == 200 and body.get("status") in events.FINAL_STATUSES:
            return body
        return None

    async def request(self, method: str, url: str, **options: Any) -> httpx.Response:
        """One HTTP request, tried again while the server is briefly away (see RETRY_PAUSE_S)."""
        deadline = time.perf_counter() + self.kit.target.timeout_s
        while True:
            try:
                response = await self.http.request(method, url, **options)
            except httpx.TransportError:
                if time.perf_counter() + RETRY_PAUSE_S >= deadline:
                    raise
            else:
                late = time.perf_counter() + RETRY_PAUSE_S >= deadline
                if response.status_code not in RETRYABLE_STATUS or late:
                    return response
            await asyncio.sleep(RETRY_PAUSE_S)

    async def poll_order(
        self, session: dict[str, Any], order_id: str, deadline: float
    ) -> dict[str, Any] | None:
        url = f"{self.kit.target.url}/orders/{order_id}"
        while time.perf_counter() < deadline:
            try:
                response = await self.http.get(url, params={"room_token": session["room_token"]})
                body = _json(response)
                if response.status_code == 200 and body.get("status") in events.FINAL_STATUSES:
                    return body
            except httpx.HTTPError:
                pass
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
        sio, self.sio = self.sio, None
        self.uncount()
        if sio is None:
            return
        if sio.connected:
            # Best effort on the way out: the outcome is already decided.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sio.disconnect(), 5)

    # -- socket events ---------------------------------------------------------------------

    async def on_joined(self, data: Any = None) -> None:
        self.joined.set()

    async def on_result(self, data: Any = None) -> None:
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

    async def on_disconnect(self, reason: Any = None) -> None:
        if not self.hanging_up:
            # A real drop (server, transport, or the client library giving up), not our hang-up.
            self.journey.drop_reason = str(reason or "unknown")
        self.uncount()
        self.dropped = True
        self.news.set()


def _final_view(result: dict[str, Any]) -> tuple[Any, ...]:
    return (result.get("status"), result.get("charge_id"), result.get("decline_code"))


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _error_of(body: dict[str, Any]) -> dict[str, Any]:
    """The Stripe-shaped {"error": {...}} object of a response body, or {}."""
    error = body.get("error")
    return error if isinstance(error, dict) else {}


def _describe(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text}"[:120] if text else type(error).__name__

"""Webhook endpoints and deliveries, signed exactly as Stripe signs them.

Each event goes to every enabled endpoint that wants its type, as a POST of the event's JSON
with `Stripe-Signature: t=<unix time>,v1=<HMAC-SHA256 of "t.payload" under the whsec_ secret>`
(signed afresh on each attempt), so `stripe.Webhook.construct_event` verifies it. A delivery that
fails (no answer, or not 2xx) is retried with backoff, like Stripe's, only on a rehearsal's
clock. Faults a rehearsal injects: delay, drop, duplicate, out of order (see SimConfig).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import random
import secrets
import time
from collections import Counter, deque
from collections.abc import Callable
from urllib.parse import urlsplit

import aiohttp

from flashsale.errors import ConfigError
from flashsale.stripe_sim.api_errors import invalid, no_such
from flashsale.stripe_sim.auth import Caller
from flashsale.stripe_sim.config import SimConfig
from flashsale.stripe_sim.endpoints import Result
from flashsale.stripe_sim.events import Event, render_event
from flashsale.stripe_sim.ledger import ALPHABET, new_id
from flashsale.stripe_sim.params import Params, get_metadata, get_str, refuse_unknown

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
SECRET_PREFIX = "whsec_"
MAX_ATTEMPTS = 10  # Stripe retries for three days; a rehearsal gives up after ~4 minutes
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 60.0
DELIVERY_TIMEOUT_S = 10.0
OUT_OF_ORDER_HOLD_S = 1.0  # how long an out-of-order event is held so later ones overtake it
MAX_IN_FLIGHT = 64  # concurrent POSTs across all endpoints
LAGS_KEPT = 1000
CREATE_PARAMS = {"url", "enabled_events", "description", "metadata", "api_version", "expand"}


def sign(payload: bytes, secret: str, timestamp: int) -> str:
    """The Stripe-Signature header for one delivery attempt."""
    signed = f"{timestamp}.".encode() + payload
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def new_secret() -> str:
    return SECRET_PREFIX + "".join(secrets.choice(ALPHABET) for _ in range(32))


def check_url(url: str) -> str:
    """Webhooks go to loopback only: a rehearsal never sends events off this machine."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or parts.hostname not in LOOPBACK_HOSTS:
        raise ConfigError(
            f"webhook URL {url!r} must be http(s)://127.0.0.1:PORT/... (stripe-sim delivers to "
            "loopback only)"
        )
    return url


class WebhookEndpoint:
    __slots__ = ("id", "url", "secret", "enabled_events", "created", "description", "metadata")

    def __init__(
        self,
        url: str,
        secret: str,
        enabled_events: tuple[str, ...],
        description: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> None:
        self.id = new_id("we_")
        self.url = url
        self.secret = secret
        self.enabled_events = enabled_events
        self.created = int(time.time())
        self.description = description
        self.metadata = metadata

    def wants(self, event_type: str) -> bool:
        return "*" in self.enabled_events or event_type in self.enabled_events

    def render(self, with_secret: bool = False) -> dict[str, object]:
        body: dict[str, object] = {
            "id": self.id,
            "object": "webhook_endpoint",
            "api_version": None,
            "application": None,
            "created": self.created,
            "description": self.description,
            "enabled_events": list(self.enabled_events),
            "livemode": False,
            "metadata": self.metadata or {},
            "status": "enabled",
            "url": self.url,
        }
        if with_secret:  # Stripe shows the secret once, when the endpoint is created
            body["secret"] = self.secret
        return body


class Rendered:
    """A rendered body for a route result (the endpoint's JSON, secret included once)."""

    def __init__(self, body: dict[str, object]) -> None:
        self.body = body

    def render(self) -> dict[str, object]:
        return self.body


class Webhooks:
    """Registered endpoints and every delivery to them, counted for /_sim/stats."""

    def __init__(self, config: Callable[[], SimConfig]) -> None:
        self.config = config
        self.endpoints: dict[str, WebhookEndpoint] = {}
        self.counts: Counter[str] = Counter()
        self.pending = 0
        self.lags: deque[float] = deque(maxlen=LAGS_KEPT)  # event created -> delivered, s
        self.tasks: set[asyncio.Task[None]] = set()
        self.session: aiohttp.ClientSession | None = None
        self.slots: asyncio.Semaphore | None = None

    def add(
        self, url: str, secret: str | None = None, events: tuple[str, ...] = ("*",)
    ) -> WebhookEndpoint:
        endpoint = WebhookEndpoint(check_url(url), secret or new_secret(), events)
        self.endpoints[endpoint.id] = endpoint
        return endpoint

    # --- /v1/webhook_endpoints ---------------------------------------------------------------

    def create_endpoint(self, params: Params, ident: str | None, caller: Caller) -> Result:
        refuse_unknown(params, CREATE_PARAMS)
        url = get_str(params, "url", required=True)
        assert url is not None
        events = params.get("enabled_events")
        if isinstance(events, dict):
            events = list(events.values())
        if (
            not isinstance(events, list)
            or not events
            or not all(isinstance(e, str) for e in events)
        ):
            raise invalid(
                "Missing required param: enabled_events.", "enabled_events", "parameter_missing"
            )
        try:
            check_url(url)
        except ConfigError as error:
            raise invalid(str(error), "url", "url_invalid") from None
        endpoint = WebhookEndpoint(
            url, new_secret(), tuple(events), get_str(params, "description"), get_metadata(params)
        )
        self.endpoints[endpoint.id] = endpoint
        return 200, Rendered(endpoint.render(with_secret=True))

    def get_endpoint(self, params: Params, ident: str | None, caller: Caller) -> Result:
        refuse_unknown(params, {"expand"})
        return 200, Rendered(self._endpoint(ident).render())

    def delete_endpoint(self, params: Params, ident: str | None, caller: Caller) -> Result:
        refuse_unknown(params, set())
        endpoint = self._endpoint(ident)
        del self.endpoints[endpoint.id]
        return 200, {"id": endpoint.id, "object": "webhook_endpoint", "deleted": True}

    def list_endpoints(self, params: Params, ident: str | None, caller: Caller) -> Result:
        refuse_unknown(params, {"limit", "expand"})
        data = [endpoint.render() for endpoint in reversed(self.endpoints.values())]
        return 200, {
            "object": "list",
            "data": data,
            "has_more": False,
            "url": "/v1/webhook_endpoints",
        }

    def _endpoint(self, ident: str | None) -> WebhookEndpoint:
        assert ident is not None
        endpoint = self.endpoints.get(ident)
        if endpoint is None:
            raise no_such("webhook endpoint", ident, "id")
        return endpoint

    # --- deliveries -------------------------------------------------------------------------

    def on_event(self, event: Event) -> None:
        """Schedule the event's deliveries, with the faults in force at the time it happened."""
        config = self.config()
        for endpoint in self.endpoints.values():
            if not endpoint.wants(event.type):
                continue
            if config.webhook_drop_rate and random.random() < config.webhook_drop_rate:
                self.counts["dropped"] += 1
                continue
            copies = 1
            if config.webhook_duplicate_rate and random.random() < config.webhook_duplicate_rate:
                self.counts["duplicated"] += 1
                copies = 2
            for _ in range(copies):
                delay = config.webhook_latency.sample()
                if (
                    config.webhook_out_of_order_rate
                    and random.random() < config.webhook_out_of_order_rate
                ):
                    self.counts["held_back"] += 1
                    delay += OUT_OF_ORDER_HOLD_S
                task = asyncio.get_running_loop().create_task(self.deliver(endpoint, event, delay))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)

    async def deliver(self, endpoint: WebhookEndpoint, event: Event, delay: float) -> None:
        self.pending += 1
        try:
            if delay > 0:
                await asyncio.sleep(delay)
            payload = json.dumps(render_event(event, pending_webhooks=1)).encode()
            backoff = BACKOFF_FIRST_S
            for attempt in range(MAX_ATTEMPTS):
                if attempt:
                    self.counts["retries"] += 1
                if await self.post(endpoint, payload):
                    self.counts["delivered"] += 1
                    self.lags.append(time.time() - event.at)
                    return
                self.counts["failed_attempts"] += 1
                if attempt + 1 < MAX_ATTEMPTS:
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX_S)
            self.counts["gave_up"] += 1
        finally:
            self.pending -= 1

    async def post(self, endpoint: WebhookEndpoint, payload: bytes) -> bool:
        if self.session is None:
            self.session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=DELIVERY_TIMEOUT_S)
            )
            self.slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        assert self.slots is not None
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
            "Stripe-Signature": sign(payload, endpoint.secret, int(time.time())),
        }
        async with self.slots:
            try:
                async with self.session.post(endpoint.url, data=payload, headers=headers) as answer:
                    return 200 <= answer.status < 300
            except (TimeoutError, aiohttp.ClientError, OSError):
                return False

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.session is not None:
            await self.session.close()

    def stats(self) -> dict[str, object]:
        lags = sorted(self.lags)
        return {
            "endpoints": len(self.endpoints),
            "pending": self.pending,
            **{
                name: self.counts[name]
                for name in (
                    "delivered",
                    "retries",
                    "failed_attempts",
                    "gave_up",
                    "dropped",
                    "duplicated",
                    "held_back",
                )
            },
            "lag_s": {}
            if not lags
            else {
                "median": round(lags[len(lags) // 2], 3),
                "max": round(lags[-1], 3),
            },
        }

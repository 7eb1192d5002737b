"""The simulator's HTTP server: routing, API keys, idempotency, limits, latency and injected faults.

It runs on aiohttp's low-level server (one handler, no router or middleware chain) because the
point of the simulator is to stay fast at any ledger size: every request is constant work.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import gc
import itertools
import json
import logging
import random
import secrets
import signal
import statistics
import time
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from aiohttp import web

from flashsale.errors import ConfigError, ServiceError
from flashsale.stripe_sim.api_errors import StripeApiError, invalid
from flashsale.stripe_sim.config import SimConfig
from flashsale.stripe_sim.endpoints import Caller, Endpoints, Result, render
from flashsale.stripe_sim.idempotency import IN_FLIGHT, MAX_KEY_LENGTH, IdempotencyStore
from flashsale.stripe_sim.ledger import ALPHABET, Ledger
from flashsale.stripe_sim.limits import TokenBucket
from flashsale.stripe_sim.params import Params, parse_form

log = logging.getLogger("flashsale.stripe_sim")

STATIC = Path(__file__).parent / "static"
FREEZE_EVERY = 8192  # requests between gc.freeze() calls
DELAYS_KEPT = 1000  # the latency held on the last this many delayed requests, for /_sim/stats
SECRET_PREFIXES = ("sk_test_", "rk_test_")
PUBLISHABLE_PREFIX = "pk_test_"
SUPPORT = "Please see https://stripe.com/docs or we can help at https://support.stripe.com/."
NO_KEY = (
    "You did not provide an API key. You need to provide your API key in the Authorization "
    "header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY'). See "
    "https://stripe.com/docs/api#authentication for details, or we can help at "
    "https://support.stripe.com/."
)
PUBLISHABLE_REFUSED = (
    "This API call cannot be made with a publishable API key. Please use a secret API key. You "
    "can find a list of your API keys at https://dashboard.stripe.com/account/apikeys."
)
RATE_LIMITED = (
    "Request rate limit exceeded. You can learn more about rate limits here "
    "https://stripe.com/docs/rate-limits."
)
CONCURRENCY_LIMITED = (
    "This request was rate limited because too many concurrent requests were in flight. You "
    "can learn more about rate limits here https://stripe.com/docs/rate-limits."
)
API_ERROR = (
    "Sorry, something went wrong. We've already been notified of the problem, but if you need "
    "any help, you can reach us at support.stripe.com/contact. (injected by stripe-sim "
    "--error-rate)"
)
CONFIG_USAGE = 'POST /_sim/config takes a JSON object, e.g. {"latency": "50ms", "error_rate": 0.1}'
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": "Request-Id, Idempotent-Replayed, Stripe-Should-Retry, "
    "Stripe-Rate-Limited-Reason",
}

Handler = Callable[[Params, str | None, Caller], Result]


class Route(NamedTuple):
    label: str  # for /_sim/stats
    handler: Handler
    publishable_ok: bool
    droppable: bool  # the charge endpoint: its connection may be dropped after committing


class Dropped(Exception):
    """The connection was aborted on purpose after the work was committed."""


class Simulator:
    """All state of one simulator process: ledger, idempotency keys, limits and counters."""

    def __init__(self, config: SimConfig) -> None:
        self.ledger = Ledger()
        self.endpoints = Endpoints(self.ledger)
        self.idempotency = IdempotencyStore()
        self.config = config
        self.bucket: TokenBucket | None = None
        self.set_config(config)
        self.in_flight = 0
        # The delays latency added to the last requests (seconds held), for /_sim/stats.
        self.delays: deque[float] = deque(maxlen=DELAYS_KEPT)
        self.started = time.time()
        self.counts: Counter[tuple[str, str]] = Counter()
        self.rate_limited: Counter[str] = Counter()
        self.events: Counter[str] = Counter()
        self._request_ids = itertools.count(1)
        self._request_prefix = "req_" + "".join(secrets.choice(ALPHABET) for _ in range(6))
        stripe_js = STATIC / "stripe.js"
        self.stripe_js = stripe_js.read_bytes() if stripe_js.exists() else None
        e = self.endpoints
        self.routes: dict[tuple[str, str, bool], Route] = {
            ("POST", "tokens", False): Route("POST /v1/tokens", e.create_token, True, False),
            ("GET", "tokens", True): Route("GET /v1/tokens/:id", e.get_token, False, False),
            ("POST", "charges", False): Route("POST /v1/charges", e.create_charge, False, True),
            ("GET", "charges", False): Route("GET /v1/charges", e.list_charges, False, False),
            ("GET", "charges", True): Route("GET /v1/charges/:id", e.get_charge, False, False),
            ("POST", "refunds", False): Route("POST /v1/refunds", e.create_refund, False, False),
            ("GET", "refunds", True): Route("GET /v1/refunds/:id", e.get_refund, False, False),
        }

    def set_config(self, config: SimConfig) -> None:
        self.config = config
        rate = config.rate_per_s
        self.bucket = None if rate is None else TokenBucket(rate, time.monotonic())

    # --- entry point ------------------------------------------------------------------------

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """Every request; whatever happens inside, the answer is Stripe-shaped and counted."""
        number = next(self._request_ids)
        request_id = f"{self._request_prefix}{number:010d}"
        if number % FREEZE_EVERY == 0:
            # Ledger records live until exit: move them out of the cyclic GC's reach, or each
            # full collection would walk the whole ledger and p99 would grow with its size.
            gc.freeze()
        label = "other"
        try:
            path = request.path
            if path.startswith("/v1/"):
                method = request.method
                parts = path[4:].split("/")
                if len(parts) > 2 or not parts[0] or (len(parts) == 2 and not parts[1]):
                    raise unrecognized(method, path)
                if method == "OPTIONS":
                    label = "OPTIONS /v1/*"
                    response = preflight(request, request_id)
                else:
                    route = self.routes.get((method, parts[0], len(parts) == 2))
                    if route is None:
                        raise unrecognized(method, path)
                    label = route.label
                    ident = parts[1] if len(parts) == 2 else None
                    response = await self.api(request, route, ident, path, request_id)
            elif path.startswith("/_sim/"):
                label = f"{request.method} {path}"
                response = await self.control(request, path, request_id)
            elif path in ("/v3/stripe.js", "/v3", "/v3/") and request.method == "GET":
                label = "GET /v3/stripe.js"
                response = self.serve_stripe_js(request_id)
            else:
                raise unrecognized(request.method, path)
        except StripeApiError as error:
            response = self.error_response(error, request_id)
        except Dropped:
            # The transport is already aborted; aiohttp discards whatever we hand back.
            self.counts[label, "dropped"] += 1
            return web.Response(status=499)
        except Exception:  # a bug: still answer like Stripe would, and say so in the log
            log.exception("stripe-sim failed on %s %s", request.method, request.path)
            response = self.error_response(
                StripeApiError(500, "Internal simulator error.", type="api_error"), request_id
            )
        self.counts[label, str(response.status)] += 1
        return response

    async def api(
        self, request: web.BaseRequest, route: Route, ident: str | None, path: str, request_id: str
    ) -> web.Response:
        """Limits and faults first (like Stripe's edge), then params, key, idempotency, work."""
        method = request.method
        config = self.config
        self.in_flight += 1
        try:
            if config.concurrency_limit and self.in_flight > config.concurrency_limit:
                raise self.limited("global-concurrency", CONCURRENCY_LIMITED)
            query = request.query_string
            params: Params = parse_form(query) if query else {}
            if method == "POST":
                body = await read_body(request)
                if body:
                    parse_form(body, params)
            caller = self.authenticate(request, params, route.publishable_ok)
            # The rate limit and injected errors shape the account's server-side budget (secret
            # keys). Customers' browsers tokenizing with the publishable key are exempt, so a
            # rehearsal measures the pipeline's Stripe calls, not a guess at Stripe.js limits.
            if not caller.publishable:
                if self.bucket is not None and not self.bucket.take(time.monotonic()):
                    raise self.limited("global-rate", RATE_LIMITED)
                if config.error_rate and random.random() < config.error_rate:
                    self.events["injected_errors"] += 1
                    raise StripeApiError(
                        500, API_ERROR, type="api_error", headers={"Stripe-Should-Retry": "true"}
                    )
            key = request.headers.get("Idempotency-Key") if method == "POST" else None
            if key is not None:
                return await self.idempotent(
                    request, route, key, path, params, ident, caller, request_id
                )
            await self.pause()
            status, payload = route.handler(params, ident, caller)
            if route.droppable:
                self.maybe_drop(request)
            return self.json_response(status, render(status, payload), request_id)
        finally:
            self.in_flight -= 1

    async def idempotent(
        self,
        request: web.BaseRequest,
        route: Route,
        key: str,
        path: str,
        params: Params,
        ident: str | None,
        caller: Caller,
        request_id: str,
    ) -> web.Response:
        """Stripe's rules: replay a finished key, 400 on other params, 409 while in flight."""
        if not key or len(key) > MAX_KEY_LENGTH:
            raise invalid(
                "Invalid Idempotency-Key: it must be between 1 and 255 characters long.",
                "Idempotency-Key",
            )
        now = time.monotonic()
        ttl = self.config.idempotency_ttl_s
        store = self.idempotency
        store.sweep(now, ttl)
        fingerprint = hash((path, freeze(params)))
        entry = store.lookup(key, now, ttl)
        if entry is not None:
            if entry.status == IN_FLIGHT:
                self.events["idempotency_conflicts"] += 1
                raise StripeApiError(
                    409,
                    "There is currently another in-progress request using this Idempotent Key "
                    "(that probably means you submitted twice, and the other request is still "
                    f"going through): {key}. Please try again later.",
                    type="idempotency_error",
                    code="idempotency_key_in_use",
                )
            if entry.fingerprint != fingerprint:
                self.events["idempotency_mismatches"] += 1
                raise StripeApiError(
                    400,
                    "Keys for idempotent requests can only be used with the same parameters they "
                    f"were first used with. Try using a key other than '{key}' if you meant to "
                    "execute a different request.",
                    type="idempotency_error",
                )
            self.events["idempotent_replays"] += 1
            response = self.json_response(
                entry.status, render(entry.status, entry.payload), request_id
            )
            response.headers["Idempotent-Replayed"] = "true"
            response.headers["Idempotency-Key"] = key
            return response
        entry = store.begin(key, fingerprint, now)
        saved = False
        try:
            await self.pause()
            status, payload = route.handler(params, ident, caller)
            # Stripe saves a result once the endpoint ran: successes and card declines alike.
            store.finish(key, entry, status, payload)
            saved = True
        finally:
            if not saved:
                store.abandon(key, entry)
        if route.droppable:
            self.maybe_drop(request)
        response = self.json_response(status, render(status, payload), request_id)
        response.headers["Idempotency-Key"] = key
        return response

    async def pause(self) -> None:
        delay = self.config.latency.sample()
        if delay > 0:
            began = time.monotonic()
            await asyncio.sleep(delay)
            self.delays.append(time.monotonic() - began)

    def maybe_drop(self, request: web.BaseRequest) -> None:
        """After the charge is committed, sometimes hang up instead of answering."""
        rate = self.config.drop_rate
        if rate and random.random() < rate:
            self.events["dropped_connections"] += 1
            transport = request.transport
            if transport is not None:
                transport.abort()
            raise Dropped()

    def limited(self, reason: str, message: str) -> StripeApiError:
        self.rate_limited[reason] += 1
        return StripeApiError(
            429,
            message,
            code="rate_limit",
            headers={"Stripe-Rate-Limited-Reason": reason},
        )

    def authenticate(
        self, request: web.BaseRequest, params: Params, publishable_ok: bool
    ) -> Caller:
        """Bearer or Basic auth like the Stripe API, or `key=` in the params like Stripe.js."""
        key: object = params.pop("key", None)
        header = request.headers.get("Authorization")
        if header:
            scheme, _, value = header.strip().partition(" ")
            scheme = scheme.lower()
            if scheme == "bearer":
                key = value.strip()
            elif scheme == "basic":
                try:
                    key = base64.b64decode(value.strip(), validate=True).decode().partition(":")[0]
                except (binascii.Error, UnicodeDecodeError):
                    key = ""
            else:
                raise StripeApiError(
                    401,
                    "Invalid authorization header: use 'Authorization: Bearer YOUR_SECRET_KEY'.",
                )
        if not key:
            raise StripeApiError(401, NO_KEY)
        if not isinstance(key, str):
            raise StripeApiError(401, f"Invalid API Key provided: {key!r}")
        if key.startswith(SECRET_PREFIXES) and len(key) > 8:
            return Caller(False, request.remote)
        if key.startswith(PUBLISHABLE_PREFIX) and len(key) > 8:
            if not publishable_ok:
                raise StripeApiError(401, PUBLISHABLE_REFUSED)
            return Caller(True, request.remote)
        raise StripeApiError(401, f"Invalid API Key provided: {mask_key(key)}")

    # --- responses --------------------------------------------------------------------------

    def json_response(self, status: int, body: object, request_id: str) -> web.Response:
        headers = {"Content-Type": "application/json", "Request-Id": request_id, **CORS_HEADERS}
        return web.Response(body=json.dumps(body).encode(), status=status, headers=headers)

    def error_response(self, error: StripeApiError, request_id: str) -> web.Response:
        response = self.json_response(error.status, error.body(), request_id)
        response.headers.update(error.headers)
        return response

    def serve_stripe_js(self, request_id: str) -> web.Response:
        if self.stripe_js is None:
            raise unrecognized("GET", "/v3/stripe.js")
        headers = {
            "Content-Type": "application/javascript; charset=utf-8",
            "Request-Id": request_id,
            "Cache-Control": "no-cache",
            **CORS_HEADERS,
        }
        return web.Response(body=self.stripe_js, headers=headers)

    # --- rehearsal controls -----------------------------------------------------------------

    async def control(self, request: web.BaseRequest, path: str, request_id: str) -> web.Response:
        method = request.method
        if path == "/_sim/stats" and method == "GET":
            return self.json_response(200, self.stats(), request_id)
        if path == "/_sim/config" and method == "GET":
            return self.json_response(200, self.config.as_dict(), request_id)
        if path == "/_sim/config" and method == "POST":
            try:
                changes = json.loads(await read_body(request) or b"{}")
            except ValueError:
                raise invalid(CONFIG_USAGE) from None
            if not isinstance(changes, dict):
                raise invalid(CONFIG_USAGE)
            try:
                config = self.config.with_changes(changes)
            except ConfigError as error:
                raise invalid(str(error)) from None
            self.set_config(config)
            log.warning("stripe-sim settings now: %s", config.describe())
            return self.json_response(200, config.as_dict(), request_id)
        raise unrecognized(method, path)

    def stats(self) -> dict[str, object]:
        requests: dict[str, dict[str, int]] = {}
        for (label, status), count in sorted(self.counts.items()):
            requests.setdefault(label, {})[status] = count
        ledger = self.ledger
        return {
            "requests": requests,
            "requests_total": sum(self.counts.values()),
            "rate_limited": {"total": sum(self.rate_limited.values()), **self.rate_limited},
            "charges": {
                "total": len(ledger.charges),
                "by_outcome": dict(sorted(self.endpoints.outcomes.items())),
            },
            "ledger": {
                "charges": len(ledger.charges),
                "tokens": len(ledger.tokens),
                "refunds": len(ledger.refunds),
                "idempotency_keys": len(self.idempotency),
            },
            "injected_errors": self.events["injected_errors"],
            "dropped_connections": self.events["dropped_connections"],
            "idempotent_replays": self.events["idempotent_replays"],
            "idempotency_conflicts": self.events["idempotency_conflicts"],
            "idempotency_mismatches": self.events["idempotency_mismatches"],
            "in_flight": self.in_flight,
            "latency_added_ms": latency_added(self.delays),
            "config": self.config.as_dict(),
            "uptime_s": round(time.time() - self.started, 3),
        }


async def read_body(request: web.BaseRequest) -> bytes:
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise StripeApiError(413, "Request body too large (the limit is 1 MiB).") from None


def freeze(value: object) -> object:
    """A hashable, order-free form of parsed params: equal params, equal fingerprint."""
    if isinstance(value, dict):
        return frozenset((name, freeze(item)) for name, item in value.items())
    if isinstance(value, list):
        return tuple(freeze(item) for item in value)
    return value


def unrecognized(method: str, path: str) -> StripeApiError:
    return StripeApiError(404, f"Unrecognized request URL ({method}: {path}). {SUPPORT}")


def preflight(request: web.BaseRequest, request_id: str) -> web.Response:
    """Browsers ask before Stripe.js posts card data cross-origin from the checkout page."""
    asked = request.headers.get("Access-Control-Request-Headers", "")
    headers = {
        **CORS_HEADERS,
        "Access-Control-Allow-Methods": "GET, POST, DELETE, OPTIONS",
        "Access-Control-Allow-Headers": asked or "Authorization, Content-Type, Idempotency-Key",
        "Access-Control-Max-Age": "600",
        # Chrome's private-network preflight, for a checkout page not itself on loopback.
        "Access-Control-Allow-Private-Network": "true",
        "Request-Id": request_id,
    }
    return web.Response(status=204, headers=headers)


def mask_key(key: str) -> str:
    """Stripe shows a refused key's prefix and last four characters only."""
    if len(key) <= 12:
        return "*" * len(key)
    prefix = key[: key.find("_", 3) + 1] if key.count("_") >= 2 else ""
    return prefix + "*" * (len(key) - len(prefix) - 4) + key[-4:]


async def serve(host: str, port: int, config: SimConfig) -> None:
    """Listen until SIGTERM or SIGINT, printing the one 'listening on' line supervisors wait for."""
    simulator = Simulator(config)
    server = web.Server(simulator.handle, access_log=None)
    loop = asyncio.get_running_loop()
    try:
        listener = await loop.create_server(server, host, port, backlog=2048)
    except OSError as error:
        raise ServiceError(
            f"stripe-sim cannot listen on {host}:{port}: {error.strerror or error}"
        ) from None
    bound = listener.sockets[0].getsockname()[1]
    print(f"stripe-sim listening on http://{host}:{bound} ({config.describe()})", flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    listener.close()
    await server.shutdown(2.0)
    print("stripe-sim stopped", flush=True)


def run(host: str, port: int, config: SimConfig) -> None:
    """Run the simulator in the foreground (the `flashsale stripe-sim` command)."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(serve(host, port, config))


def latency_added(delays: deque[float]) -> dict[str, float | int]:
    """What --latency held the last (at most DELAYS_KEPT) delayed requests for, in ms, as the
    simulator's own clock saw it; /_sim itself never waits."""
    if not delays:
        return {"requests": 0}
    held = sorted(delays)
    return {
        "requests": len(held),
        "min": round(held[0] * 1000, 3),
        "median": round(statistics.median(held) * 1000, 3),
        "max": round(held[-1] * 1000, 3),
    }

"""The simulator's HTTP server: one handler that routes each request through the roles in order.

Edge limits (limits.py), params, the key (auth.py), faults (faults.py), idempotency
(idempotency.py), then the endpoint; the control plane is control.py. It runs on aiohttp's
low-level server (no router or middleware chain) because the point of the simulator is to stay
fast at any ledger size: every request is constant work.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import secrets
import signal
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NamedTuple

from aiohttp import web

from flashsale.errors import ServiceError
from flashsale.stripe_sim.api_errors import StripeApiError
from flashsale.stripe_sim.auth import Caller, authenticate
from flashsale.stripe_sim.config import SimConfig
from flashsale.stripe_sim.control import control
from flashsale.stripe_sim.endpoints import Endpoints, Result, render
from flashsale.stripe_sim.events import Events
from flashsale.stripe_sim.faults import Dropped, Faults
from flashsale.stripe_sim.follow_ups import FollowUps
from flashsale.stripe_sim.idempotency import Idempotency
from flashsale.stripe_sim.intents import CHALLENGE_PATH, IntentEndpoints
from flashsale.stripe_sim.ledger import ALPHABET, Ledger
from flashsale.stripe_sim.limits import Limits
from flashsale.stripe_sim.params import Params, parse_form
from flashsale.stripe_sim.responses import (
    CORS_HEADERS,
    api_version,
    error_response,
    for_version,
    json_response,
    preflight,
    read_body,
    script_response,
    unrecognized,
)
from flashsale.stripe_sim.scopes import require
from flashsale.stripe_sim.webhooks import Webhooks

log = logging.getLogger("flashsale.stripe_sim")

STATIC = Path(__file__).parent / "static"
FREEZE_EVERY = 8192  # requests between gc.freeze() calls
# What the challenge frame shows once answered; the Stripe.js look-alike waits for its message.
CHALLENGE_DONE = (
    '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Done</title></head>'
    "<body><p>Authentication answered. You can close this window.</p><script>"
    'if (window.parent !== window) window.parent.postMessage("stripe-sim-3ds-done", "*");'
    "</script></body></html>"
)

Handler = Callable[[Params, str | None, Caller], Result]


class Route(NamedTuple):
    label: str  # for /_sim/stats
    handler: Handler
    publishable_ok: bool
    droppable: bool  # the charge endpoint: its connection may be dropped after committing


class Simulator:
    """All state of one simulator process: ledger, idempotency keys, limits, faults, counters."""

    def __init__(
        self, config: SimConfig, restricted_keys: Mapping[str, frozenset[str]] | None = None
    ) -> None:
        self.restricted_keys = dict(restricted_keys or {})
        self.ledger = Ledger()
        self.events = Events()
        self.webhooks = Webhooks(lambda: self.config)
        self.events.listeners.append(self.webhooks.on_event)
        self.endpoints = Endpoints(self.ledger, self.events)
        self.idempotency = Idempotency()
        self.limits = Limits(config)
        self.faults = Faults()
        self.config = config
        self.started = time.time()
        self.counts: Counter[tuple[str, str]] = Counter()
        self._request_ids = itertools.count(1)
        self._request_prefix = "req_" + "".join(secrets.choice(ALPHABET) for _ in range(6))
        stripe_js = STATIC / "stripe.js"
        self.stripe_js = stripe_js.read_bytes() if stripe_js.exists() else None
        self.intents = IntentEndpoints(self.ledger, self.endpoints)
        self.follow_ups = FollowUps(self.ledger, self.events)
        e, i, v, w, f = self.endpoints, self.intents, self.events, self.webhooks, self.follow_ups
        # (method, resource, with an id, action after the id) -> route
        self.routes: dict[tuple[str, str, bool, str | None], Route] = {
            ("POST", "tokens", False, None): Route("POST /v1/tokens", e.create_token, True, False),
            ("GET", "tokens", True, None): Route("GET /v1/tokens/:id", e.get_token, False, False),
            ("POST", "charges", False, None): Route(
                "POST /v1/charges", e.create_charge, False, True
            ),
            ("GET", "charges", False, None): Route("GET /v1/charges", e.list_charges, False, False),
            ("GET", "charges", True, None): Route(
                "GET /v1/charges/:id", e.get_charge, False, False
            ),
            ("POST", "refunds", False, None): Route(
                "POST /v1/refunds", e.create_refund, False, False
            ),
            ("POST", "charges", True, "capture"): Route(
                "POST /v1/charges/:id/capture", e.capture_charge, False, False
            ),
            ("GET", "refunds", False, None): Route("GET /v1/refunds", e.list_refunds, False, False),
            ("GET", "refunds", True, None): Route(
                "GET /v1/refunds/:id", e.get_refund, False, False
            ),
            ("POST", "payment_methods", False, None): Route(
                "POST /v1/payment_methods", i.create_payment_method, True, False
            ),
            ("GET", "payment_methods", True, None): Route(
                "GET /v1/payment_methods/:id", i.get_payment_method, False, False
            ),
            ("POST", "payment_intents", False, None): Route(
                "POST /v1/payment_intents", i.create_intent, False, True
            ),
            ("GET", "payment_intents", False, None): Route(
                "GET /v1/payment_intents", i.list_intents, False, False
            ),
            ("GET", "payment_intents", True, None): Route(
                "GET /v1/payment_intents/:id", i.get_intent, True, False
            ),
            ("POST", "payment_intents", True, "confirm"): Route(
                "POST /v1/payment_intents/:id/confirm", i.confirm_intent, True, True
            ),
            ("POST", "payment_intents", True, "cancel"): Route(
                "POST /v1/payment_intents/:id/cancel", i.cancel_intent, False, False
            ),
            ("POST", "payment_intents", True, "capture"): Route(
                "POST /v1/payment_intents/:id/capture", i.capture_intent, False, False
            ),
            ("GET", "disputes", False, None): Route(
                "GET /v1/disputes", f.list_disputes, False, False
            ),
            ("GET", "disputes", True, None): Route(
                "GET /v1/disputes/:id", f.get_dispute, False, False
            ),
            ("GET", "events", False, None): Route("GET /v1/events", v.list_events, False, False),
            ("GET", "events", True, None): Route("GET /v1/events/:id", v.get_event, False, False),
            ("POST", "webhook_endpoints", False, None): Route(
                "POST /v1/webhook_endpoints", w.create_endpoint, False, False
            ),
            ("GET", "webhook_endpoints", False, None): Route(
                "GET /v1/webhook_endpoints", w.list_endpoints, False, False
            ),
            ("GET", "webhook_endpoints", True, None): Route(
                "GET /v1/webhook_endpoints/:id", w.get_endpoint, False, False
            ),
            ("DELETE", "webhook_endpoints", True, None): Route(
                "DELETE /v1/webhook_endpoints/:id", w.delete_endpoint, False, False
            ),
        }

    def set_config(self, config: SimConfig) -> None:
        self.config = config
        self.limits.configure(config)

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
        response: web.StreamResponse
        try:
            path = request.path
            if path.startswith("/v1/"):
                method = request.method
                parts = path[4:].split("/")
                if len(parts) > 3 or not all(parts):
                    raise unrecognized(method, path)
                if method == "OPTIONS":
                    label = "OPTIONS /v1/*"
                    response = preflight(request, request_id)
                else:
                    action = parts[2] if len(parts) == 3 else None
                    route = self.routes.get((method, parts[0], len(parts) >= 2, action))
                    if route is None:
                        raise unrecognized(method, path)
                    label = route.label
                    ident = parts[1] if len(parts) >= 2 else None
                    response = await self.api(request, route, ident, path, request_id)
            elif path.startswith(CHALLENGE_PATH):
                label = f"{request.method} {CHALLENGE_PATH}:id"
                response = await self.challenge(request, path[len(CHALLENGE_PATH) :], request_id)
            elif path.startswith("/_sim/"):
                label = f"{request.method} {path}"
                response = await control(self, request, path, request_id)
            elif path in ("/v3/stripe.js", "/v3", "/v3/") and request.method == "GET":
                label = "GET /v3/stripe.js"
                if self.stripe_js is None:
                    raise unrecognized("GET", path)
                response = script_response(self.stripe_js, request_id)
            else:
                raise unrecognized(request.method, path)
        except StripeApiError as error:
            response = error_response(error, request_id)
        except Dropped:
            # The transport is already aborted; aiohttp discards whatever we hand back.
            self.counts[label, "dropped"] += 1
            return web.Response(status=499)
        except Exception:  # a bug: still answer like Stripe would, and say so in the log
            log.exception("stripe-sim failed on %s %s", request.method, request.path)
            response = error_response(
                StripeApiError(500, "Internal simulator error.", type="api_error"), request_id
            )
        self.counts[label, str(response.status)] += 1
        return response

    async def challenge(
        self, request: web.BaseRequest, rest: str, request_id: str
    ) -> web.StreamResponse:
        """The hosted 3D Secure page (GET) and its two answers (POST .../complete or .../fail).

        A browser gets HTML or its redirect back to the shop; a caller that accepts JSON (the
        load generator) gets the PaymentIntent as it stands after the answer.
        """
        ident, _, verdict = rest.partition("/")
        if request.method == "GET" and not verdict:
            page = self.intents.challenge_page(ident, request.query.get("client_secret"))
            return web.Response(text=page, content_type="text/html", headers=CORS_HEADERS)
        if request.method != "POST" or verdict not in ("complete", "fail"):
            raise unrecognized(request.method, request.path)
        form = parse_form(await read_body(request))
        secret = form.get("client_secret")
        status, payload = self.intents.finish_challenge(
            ident, secret if isinstance(secret, str) else None, verdict == "complete"
        )
        if "application/json" in request.headers.get("Accept", ""):
            return json_response(200, render(status, payload), request_id)
        back = self.intents.after_challenge_url(ident)
        if back is not None:
            return web.Response(status=303, headers={"Location": back, **CORS_HEADERS})
        return web.Response(text=CHALLENGE_DONE, content_type="text/html", headers=CORS_HEADERS)

    async def api(
        self, request: web.BaseRequest, route: Route, ident: str | None, path: str, request_id: str
    ) -> web.Response:
        """Limits first (like Stripe's edge), then params, key, faults, idempotency, work."""
        method = request.method
        config = self.config
        limits = self.limits
        endpoint = route.label
        try:
            limits.enter(endpoint)
            query = request.query_string
            params: Params = parse_form(query) if query else {}
            if method == "POST":
                body = await read_body(request)
                if body:
                    parse_form(body, params)
            caller = authenticate(
                request.headers,
                request.remote,
                params,
                route.publishable_ok,
                config.allow_raw_cards,
            )
            require(
                caller.key,
                self.restricted_keys.get(caller.key),
                method,
                endpoint.split(" ")[1].split("/")[2],
            )
            version = api_version(request.headers.get("Stripe-Version"))
            # The rate limit and injected errors shape the account's server-side budget (secret
            # keys). Customers' browsers tokenizing with the publishable key are exempt, so a
            # rehearsal measures the pipeline's Stripe calls, not a guess at Stripe.js limits.
            if not caller.publishable:
                limits.take_rate(endpoint)
                self.faults.maybe_fail(config)
            if method == "POST" and ident is not None and ident.startswith("pi_"):
                limits.count_update(ident)

            async def work() -> Result:
                # Changes to one object are serialized, as Stripe locks it for each update.
                async with limits.object_lock(ident if method == "POST" else None):
                    await self.faults.pause(config)
                    return route.handler(params, ident, caller)

            key = request.headers.get("Idempotency-Key") if method == "POST" else None
            original = request_id
            if key is not None:
                status, payload, original = await self.idempotency.run(
                    key, path, params, config.idempotency_ttl_s, work, request_id
                )
            else:
                status, payload = await work()
            replayed = original != request_id
            if route.droppable and not replayed:
                self.faults.maybe_drop(request, config)
            shown = for_version(render(status, payload), version, params)
            response = json_response(status, shown, request_id)
            response.headers["Stripe-Version"] = version
            if key is not None:
                response.headers["Idempotency-Key"] = key
                response.headers["Original-Request"] = original
                if replayed:
                    response.headers["Idempotent-Replayed"] = "true"
            return response
        finally:
            limits.leave(endpoint)


async def serve(
    host: str,
    port: int,
    config: SimConfig,
    webhooks: tuple[str, ...] = (),
    webhook_secret: str | None = None,
    restricted_keys: Mapping[str, frozenset[str]] | None = None,
) -> None:
    """Listen until SIGTERM or SIGINT, printing the one 'listening on' line supervisors wait for.

    Each `webhooks` URL is registered for every event type, signed with `webhook_secret` (or a
    generated one, printed so the receiving server can be told it).
    """
    simulator = Simulator(config, restricted_keys)
    for url in webhooks:
        endpoint = simulator.webhooks.add(url, webhook_secret)
        shown = "as given" if webhook_secret else endpoint.secret
        print(f"stripe-sim webhook {endpoint.id} -> {url} (secret {shown})", flush=True)
    server = web.Server(simulator.handle, access_log=None)
    loop = asyncio.get_running_loop()
    try:
        listener = await loop.create_server(server, host, port, backlog=2048)
    except OSError as error:
        raise ServiceError(
            f"stripe-sim cannot listen on {host}:{port}: {error.strerror or error}"
        ) from None
    bound = listener.sockets[0].getsockname()[1]
    simulator.intents.public_url = f"http://{host}:{bound}"
    print(f"stripe-sim listening on http://{host}:{bound} ({config.describe()})", flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    listener.close()
    await simulator.webhooks.close()
    await server.shutdown(2.0)
    print("stripe-sim stopped", flush=True)


def run(
    host: str,
    port: int,
    config: SimConfig,
    webhooks: tuple[str, ...] = (),
    webhook_secret: str | None = None,
    restricted_keys: Mapping[str, frozenset[str]] | None = None,
) -> None:
    """Run the simulator in the foreground (the `flashsale stripe-sim` command)."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(serve(host, port, config, webhooks, webhook_secret, restricted_keys))

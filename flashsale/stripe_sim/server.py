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
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from aiohttp import web

from flashsale.errors import ServiceError
from flashsale.stripe_sim.api_errors import StripeApiError
from flashsale.stripe_sim.auth import Caller, authenticate
from flashsale.stripe_sim.config import SimConfig
from flashsale.stripe_sim.control import control
from flashsale.stripe_sim.endpoints import Endpoints, Result, render
from flashsale.stripe_sim.faults import Dropped, Faults
from flashsale.stripe_sim.idempotency import Idempotency
from flashsale.stripe_sim.ledger import ALPHABET, Ledger
from flashsale.stripe_sim.limits import Limits
from flashsale.stripe_sim.params import Params, parse_form
from flashsale.stripe_sim.responses import (
    error_response,
    json_response,
    preflight,
    read_body,
    script_response,
    unrecognized,
)

log = logging.getLogger("flashsale.stripe_sim")

STATIC = Path(__file__).parent / "static"
FREEZE_EVERY = 8192  # requests between gc.freeze() calls

Handler = Callable[[Params, str | None, Caller], Result]


class Route(NamedTuple):
    label: str  # for /_sim/stats
    handler: Handler
    publishable_ok: bool
    droppable: bool  # the charge endpoint: its connection may be dropped after committing


class Simulator:
    """All state of one simulator process: ledger, idempotency keys, limits, faults, counters."""

    def __init__(self, config: SimConfig) -> None:
        self.ledger = Ledger()
        self.endpoints = Endpoints(self.ledger)
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

    async def api(
        self, request: web.BaseRequest, route: Route, ident: str | None, path: str, request_id: str
    ) -> web.Response:
        """Limits first (like Stripe's edge), then params, key, faults, idempotency, work."""
        method = request.method
        config = self.config
        limits = self.limits
        try:
            limits.enter()
            query = request.query_string
            params: Params = parse_form(query) if query else {}
            if method == "POST":
                body = await read_body(request)
                if body:
                    parse_form(body, params)
            caller = authenticate(request.headers, request.remote, params, route.publishable_ok)
            # The rate limit and injected errors shape the account's server-side budget (secret
            # keys). Customers' browsers tokenizing with the publishable key are exempt, so a
            # rehearsal measures the pipeline's Stripe calls, not a guess at Stripe.js limits.
            if not caller.publishable:
                limits.take_rate()
                self.faults.maybe_fail(config)

            async def work() -> Result:
                await self.faults.pause(config)
                return route.handler(params, ident, caller)

            key = request.headers.get("Idempotency-Key") if method == "POST" else None
            if key is None:
                status, payload = await work()
                replayed = False
            else:
                status, payload, replayed = await self.idempotency.run(
                    key, path, params, config.idempotency_ttl_s, work
                )
            if route.droppable and not replayed:
                self.faults.maybe_drop(request, config)
            response = json_response(status, render(status, payload), request_id)
            if key is not None:
                response.headers["Idempotency-Key"] = key
                if replayed:
                    response.headers["Idempotent-Replayed"] = "true"
            return response
        finally:
            limits.leave()


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

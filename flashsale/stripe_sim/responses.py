"""How the simulator answers: Stripe's JSON, headers and CORS, and the 404 for unknown URLs."""

from __future__ import annotations

import json
import re

from aiohttp import web

from flashsale.stripe_sim.api_errors import StripeApiError, invalid
from flashsale.stripe_sim.params import Params, get_list

# The version the simulated account is pinned to (the one stripe-python 16 sends), and the
# shape of any other: a release date, then the release name since 2024-09-30.acacia.
API_VERSION = "2026-10-28.endive"
FIRST_VERSION = "2011-01-01"
VERSION_SHAPE = re.compile(r"^(\d{4}-\d{2}-\d{2})(\.[a-z]+)?$")

SUPPORT = "Please see https://stripe.com/docs or we can help at https://support.stripe.com/."
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": "Request-Id, Idempotent-Replayed, Original-Request, "
    "Stripe-Should-Retry, Stripe-Rate-Limited-Reason, Stripe-Version",
}


def json_response(status: int, body: object, request_id: str) -> web.Response:
    headers = {"Content-Type": "application/json", "Request-Id": request_id, **CORS_HEADERS}
    return web.Response(body=json.dumps(body).encode(), status=status, headers=headers)


def error_response(error: StripeApiError, request_id: str) -> web.Response:
    response = json_response(error.status, error.body(), request_id)
    response.headers.update(error.headers)
    return response


def script_response(body: bytes, request_id: str) -> web.Response:
    headers = {
        "Content-Type": "application/javascript; charset=utf-8",
        "Request-Id": request_id,
        "Cache-Control": "no-cache",
        **CORS_HEADERS,
    }
    return web.Response(body=body, headers=headers)


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


def unrecognized(method: str, path: str) -> StripeApiError:
    return StripeApiError(404, f"Unrecognized request URL ({method}: {path}). {SUPPORT}")


async def read_body(request: web.BaseRequest) -> bytes:
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise StripeApiError(413, "Request body too large (the limit is 1 MiB).") from None


# Since this version a charge's `refunds` list is left out unless asked for with expand[].
REFUNDS_EXPANDABLE_SINCE = "2022-11-15"


def for_version(body: dict[str, object], version: str, params: Params) -> dict[str, object]:
    """A rendered object as the request's API version shows it."""
    if (
        body.get("object") == "charge"
        and version[:10] >= REFUNDS_EXPANDABLE_SINCE
        and "refunds" not in (get_list(params, "expand") or ())
    ):
        body = {key: value for key, value in body.items() if key != "refunds"}
    return body


def api_version(asked: str | None) -> str:
    """The Stripe-Version a request runs under: the one asked for if it is one, else the
    account's. A malformed or pre-2011 version is refused as Stripe refuses it; a later one
    than the simulator knows is accepted (a newer stripe library must not lock a rehearsal
    out) and answered in this simulator's shapes."""
    if asked is None or asked == "":
        return API_VERSION
    match = VERSION_SHAPE.match(asked.strip())
    if not match or match.group(1) < FIRST_VERSION:
        raise invalid(
            f"Invalid Stripe API version: {asked}. The current version is {API_VERSION}; see "
            "https://docs.stripe.com/api/versioning.",
            "Stripe-Version",
        )
    return asked.strip()

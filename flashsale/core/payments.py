"""Charging an order through the stripe library, and turning Stripe's answers into outcomes."""

from __future__ import annotations

import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import stripe
import urllib3

from flashsale.core import events
from flashsale.core.orders import Order
from flashsale.errors import StripeAuthError, StripeUnavailable
from flashsale.settings import Settings


@dataclass(frozen=True)
class ChargeOutcome:
    """Stripe's answer about one order: final, or (requires_action) waiting for the customer."""

    status: str  # succeeded | declined | failed | requires_action
    charge_id: str | None = None
    code: str | None = None
    decline_code: str | None = None
    message: str | None = None
    client_secret: str | None = None  # requires_action: what the page gives Stripe.js

    @property
    def final(self) -> bool:
        return self.status in events.FINAL_STATUSES

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChargeOutcome:
        return cls(
            status=str(data["status"]),
            charge_id=data.get("charge_id"),
            code=data.get("code"),
            decline_code=data.get("decline_code"),
            message=data.get("message"),
            client_secret=data.get("client_secret"),
        )


class Urllib3Client(stripe.HTTPClient):
    """stripe's HTTP calls on a urllib3 pool: what its RequestsClient does, without requests.

    requests' layer over urllib3 (session merging, hooks, cookies, the environment scan for
    proxies and ~/.netrc) was ~a quarter of a charge's CPU in the worker. The pool is shared by
    the worker's threads (urllib3 pools are thread-safe) and keeps connections alive. Proxies
    are read from the environment once, here; TLS is verified against stripe's own CA bundle,
    as stripe's clients do. Nothing is retried here: Celery retries, with backoff. Streaming
    endpoints (request_stream) are left to the base class, which refuses them: none is called.
    """

    name = "urllib3"

    def __init__(self, api_base: str, timeout: float, pool_size: int = 64) -> None:
        super().__init__()
        options: dict[str, Any] = {
            "timeout": urllib3.Timeout(connect=timeout, read=timeout),
            "retries": False,
            # More threads than connections only costs a new connection, never a wait.
            "maxsize": pool_size,
            "block": False,
            "cert_reqs": "CERT_REQUIRED",
            "ca_certs": stripe.ca_bundle_path,
        }
        proxy = environment_proxy(api_base)
        self.pool: urllib3.PoolManager = (
            urllib3.ProxyManager(proxy, **options) if proxy else urllib3.PoolManager(**options)
        )

    def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        post_data: Any = None,
        *,
        _usage: list[str] | None = None,
    ) -> tuple[str, int, Mapping[str, str]]:
        try:
            response = self.pool.request(
                method.upper(), url, body=post_data, headers=dict(headers or {}), redirect=False
            )
        except urllib3.exceptions.HTTPError as error:
            # Like stripe's own clients: a certificate problem is not retried; a timeout, a
            # refused or dropped connection is (safe for charges: the Idempotency-Key).
            retry = not isinstance(error, urllib3.exceptions.SSLError) and isinstance(
                error,
                (
                    urllib3.exceptions.TimeoutError,
                    urllib3.exceptions.ProtocolError,
                    urllib3.exceptions.NewConnectionError,
                    urllib3.exceptions.ProxyError,
                ),
            )
            raise stripe.APIConnectionError(
                f"Could not talk to Stripe ({type(error).__name__}: {error})",
                should_retry=retry,
            ) from error
        return response.data.decode("utf-8"), response.status, response.headers

    def close(self) -> None:
        self.pool.clear()


def environment_proxy(url: str) -> str | None:
    """The proxy the standard variables (HTTP(S)_PROXY, NO_PROXY) name for url, if any."""
    scheme, host = urllib.parse.urlsplit(url)[:2]
    if urllib.request.proxy_bypass(host):
        return None
    return urllib.request.getproxies().get(scheme)


def make_client(settings: Settings) -> stripe.StripeClient:
    """A Stripe client with our timeouts and no retries of its own: Celery retries, with backoff."""
    return stripe.StripeClient(
        settings.stripe_secret_key,
        base_addresses={"api": settings.stripe_api_base},
        max_network_retries=0,
        http_client=Urllib3Client(settings.stripe_api_base, settings.stripe_timeout_s),
    )


def idempotency_key(order_id: str) -> str:
    """One key per order, so a redelivered or retried task replays the first charge."""
    return f"flashsale-order-{order_id}"


def charge_params(order: Order) -> dict[str, Any]:
    """Exactly the same parameters on every attempt (Stripe rejects a key reused with others)."""
    return {
        "amount": order.amount,
        "currency": order.currency,
        "source": order.token,
        "description": f"{order.sku} x{order.quantity}",
        "metadata": {
            "order_id": order.order_id,
            "customer_id": order.customer_id,
            "sku": order.sku,
            "quantity": str(order.quantity),
        },
    }


def intent_params(order: Order) -> dict[str, Any]:
    """One PaymentIntent created and confirmed in one call for the order's PaymentMethod; a card
    that asks for 3D Secure leaves it requires_action, for the customer's page to finish."""
    charge = charge_params(order)
    return {
        "amount": charge["amount"],
        "currency": charge["currency"],
        "payment_method": order.token,
        "payment_method_types": ["card"],
        "confirm": True,
        "description": charge["description"],
        "metadata": charge["metadata"],
    }


def payment_request(order: Order) -> tuple[str, dict[str, Any]]:
    """The one Stripe call that pays the order: a PaymentIntent for a PaymentMethod (pm_...),
    the seed's charge for a token (tok_...)."""
    if order.token.startswith("pm_"):
        return "/v1/payment_intents", intent_params(order)
    return "/v1/charges", charge_params(order)


def charge_order(client: stripe.StripeClient, order: Order) -> ChargeOutcome:
    """Pay for the order once (idempotently): a charge, or a PaymentIntent confirmed at once.

    Returns a final outcome (succeeded, declined, or failed for requests Stripe will never
    accept). Raises StripeUnavailable when a retry may succeed, StripeAuthError when the key is
    refused (retrying cannot help).
    """
    try:
        # The same POST /v1/charges as client.v1.charges.create, errors raised the same way, but
        # the four fields we read come from the JSON: building stripe's object tree of the charge
        # (a dozen objects, ~100 conversions) cost a quarter of the worker's time in Stripe calls.
        path, params = payment_request(order)
        response = client.raw_request(
            "post",
            path,
            **params,
            idempotency_key=idempotency_key(order.order_id),
            usage=["stripe_client"],
        )
    except stripe.CardError as error:
        details = error.error
        return ChargeOutcome(
            status=events.DECLINED,
            charge_id=getattr(details, "charge", None) if details else None,
            code=error.code,
            decline_code=getattr(details, "decline_code", None) if details else None,
            message=error.user_message or _message(error),
        )
    except stripe.AuthenticationError as error:
        raise StripeAuthError(
            f"Stripe refused the secret key ({error.http_status}): {_message(error)}"
        ) from error
    except stripe.StripeError as error:
        # A 5xx is never a final answer, even one Stripe says not to retry: the charge may
        # have been made (docs.stripe.com/error-low-level treats a 500 as indeterminate).
        if _should_retry(error) or (error.http_status or 0) >= 500:
            raise StripeUnavailable(_describe(error), not_processed(error)) from error
        return ChargeOutcome(
            status=events.FAILED, code=error.code or _error_type(error), message=_message(error)
        )
    paid = response.data
    if paid.get("object") == "payment_intent":
        return intent_outcome(paid)
    charge = paid
    if charge["status"] == "failed":
        return ChargeOutcome(
            status=events.DECLINED,
            charge_id=charge["id"],
            code=charge.get("failure_code"),
            message=charge.get("failure_message"),
        )
    return ChargeOutcome(status=events.SUCCEEDED, charge_id=charge["id"])


def intent_outcome(intent: Mapping[str, Any]) -> ChargeOutcome:
    """A confirmed PaymentIntent's answer (a decline came as a CardError, handled above)."""
    charge = intent.get("latest_charge")
    charge_id = charge.get("id") if isinstance(charge, Mapping) else charge
    if intent["status"] == "succeeded":
        return ChargeOutcome(status=events.SUCCEEDED, charge_id=charge_id)
    if intent["status"] == "requires_action":
        return ChargeOutcome(status=events.REQUIRES_ACTION, client_secret=intent["client_secret"])
    if intent["status"] == "canceled":
        abandoned = intent.get("cancellation_reason") == "abandoned"
        return ChargeOutcome(
            status=events.FAILED,
            charge_id=charge_id,
            code=ABANDONED if abandoned else CANCELED,
            message="The payment was not authenticated in time and was canceled."
            if abandoned
            else "The payment was canceled.",
        )
    error = intent.get("last_payment_error") or {}
    if intent["status"] == "requires_payment_method" and error:
        return ChargeOutcome(
            status=events.DECLINED,
            charge_id=charge_id,
            code=error.get("code"),
            decline_code=error.get("decline_code"),
            message=error.get("message"),
        )
    # processing, or anything else not final: ask again later with the same idempotent call.
    raise StripeUnavailable(
        f"PaymentIntent {intent.get('id')} is {intent['status']}, not final yet", False
    )


# The Stripe events that end a PaymentIntent: what the server's /stripe/webhook acts on, and so
# the only ones its endpoint subscribes to (Stripe: "only subscribe to the events your
# integration requires"; every other delivery costs the server a request for nothing).
FINISHING_EVENTS = (
    "payment_intent.succeeded",
    "payment_intent.payment_failed",
    "payment_intent.canceled",
)
ABANDONED = "authentication_abandoned"  # we canceled it: the customer left 3D Secure
CANCELED = "payment_intent_canceled"  # canceled for any other reason (e.g. in the Dashboard)


def current_intent(client: stripe.StripeClient, client_secret: str) -> ChargeOutcome:
    """Where the order's PaymentIntent stands now (after the customer's 3D Secure). A replay
    of the creating call would not say: Stripe answers a replay as it answered the first."""
    intent_id = client_secret.partition("_secret_")[0]
    try:
        response = client.raw_request(
            "get", f"/v1/payment_intents/{intent_id}", usage=["stripe_client"]
        )
    except stripe.StripeError as error:
        raise StripeUnavailable(_describe(error), not_processed(error)) from error
    return intent_outcome(response.data)


def cancel_abandoned(client: stripe.StripeClient, client_secret: str) -> ChargeOutcome:
    """Cancel a PaymentIntent whose customer never finished 3D Secure (its unit goes back);
    when the customer finished meanwhile, Stripe refuses the cancel and its state is read."""
    intent_id = client_secret.partition("_secret_")[0]
    try:
        response = client.raw_request(
            "post",
            f"/v1/payment_intents/{intent_id}/cancel",
            cancellation_reason="abandoned",
            usage=["stripe_client"],
        )
    except stripe.InvalidRequestError as error:
        if error.code != "payment_intent_unexpected_state":
            raise StripeUnavailable(_describe(error)) from error
        response = client.raw_request(
            "get", f"/v1/payment_intents/{intent_id}", usage=["stripe_client"]
        )
    except stripe.StripeError as error:
        raise StripeUnavailable(_describe(error), not_processed(error)) from error
    return intent_outcome(response.data)


def not_processed(error: stripe.StripeError) -> bool:
    """Whether Stripe certainly did not act on the request: a 429 (refused before any work),
    or a connection that was never made. A timeout, a dropped answer or a 5xx leave the outcome
    unknown (docs.stripe.com/error-low-level: retry with the same Idempotency-Key to learn it)."""
    if isinstance(error, stripe.RateLimitError) or error.http_status == 429:
        return True
    cause = error.__cause__ or error.__context__
    return isinstance(error, stripe.APIConnectionError) and isinstance(
        cause, urllib3.exceptions.NewConnectionError
    )


def _should_retry(error: stripe.StripeError) -> bool:
    """Stripe-Should-Retry wins; otherwise retry rate limits, conflicts, 5xx and network errors."""
    headers = {str(name).lower(): str(value) for name, value in (error.headers or {}).items()}
    advice = headers.get("stripe-should-retry")
    if advice == "true":
        return True
    if advice == "false":
        return False
    if isinstance(error, stripe.APIConnectionError):
        return error.should_retry
    if isinstance(error, stripe.RateLimitError):
        return True
    status = error.http_status or 0
    # 409: a concurrent request with the same Idempotency-Key is still running.
    return status == 409 or status >= 500


def _message(error: stripe.StripeError) -> str:
    return getattr(error, "_message", None) or str(error)


def _error_type(error: stripe.StripeError) -> str | None:
    details = error.error
    return getattr(details, "type", None) if details else None


def _describe(error: stripe.StripeError) -> str:
    status = error.http_status or "no response"
    return f"{type(error).__name__} ({status}): {_message(error)}"

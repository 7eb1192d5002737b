"""Charging an order through the stripe library, and turning Stripe's answers into outcomes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import requests
import stripe

from flashsale.core import events
from flashsale.core.orders import Order
from flashsale.errors import StripeAuthError, StripeUnavailable
from flashsale.settings import Settings


@dataclass(frozen=True)
class ChargeOutcome:
    """A final answer from Stripe about one order."""

    status: str  # succeeded | declined | failed
    charge_id: str | None = None
    code: str | None = None
    decline_code: str | None = None
    message: str | None = None

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
        )


class RequestsClient(stripe.RequestsClient):
    """stripe's requests client (a keep-alive session per thread) reading the environment once.

    requests scans every environment variable for proxies and reads ~/.netrc on every request
    of a session that trusts the environment (~10% of a charge's CPU). The proxies for the API
    are resolved once here instead; the CA bundle never came from the environment, stripe
    passes its own; a ~/.netrc entry no longer replaces the secret key's Authorization header.
    """

    def __init__(self, api_base: str, timeout: float) -> None:
        found = requests.utils.get_environ_proxies(api_base)
        proxies = {scheme: url for scheme, url in found.items() if scheme in ("http", "https")}
        super().__init__(timeout=timeout, proxy=proxies or None)  # type: ignore[arg-type]

    def _request_internal(self, *args: Any, **kwargs: Any) -> Any:
        if getattr(self._thread_local, "session", None) is None:
            session = requests.Session()
            session.trust_env = False
            self._thread_local.session = session
        return super()._request_internal(*args, **kwargs)


def make_client(settings: Settings) -> stripe.StripeClient:
    """A Stripe client with our timeouts and no retries of its own: Celery retries, with backoff."""
    return stripe.StripeClient(
        settings.stripe_secret_key,
        base_addresses={"api": settings.stripe_api_base},
        max_network_retries=0,
        http_client=RequestsClient(settings.stripe_api_base, settings.stripe_timeout_s),
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


def charge_order(client: stripe.StripeClient, order: Order) -> ChargeOutcome:
    """Charge the order once (idempotently).

    Returns a final outcome (succeeded, declined, or failed for requests Stripe will never
    accept). Raises StripeUnavailable when a retry may succeed, StripeAuthError when the key is
    refused (retrying cannot help).
    """
    try:
        # The same POST /v1/charges as client.v1.charges.create, errors raised the same way, but
        # the four fields we read come from the JSON: building stripe's object tree of the charge
        # (a dozen objects, ~100 conversions) cost a quarter of the worker's time in Stripe calls.
        response = client.raw_request(
            "post",
            "/v1/charges",
            **charge_params(order),
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
        if _should_retry(error):
            raise StripeUnavailable(_describe(error)) from error
        return ChargeOutcome(
            status=events.FAILED, code=error.code or _error_type(error), message=_message(error)
        )
    charge = response.data
    if charge["status"] == "failed":
        return ChargeOutcome(
            status=events.DECLINED,
            charge_id=charge["id"],
            code=charge.get("failure_code"),
            message=charge.get("failure_message"),
        )
    return ChargeOutcome(status=events.SUCCEEDED, charge_id=charge["id"])


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

"""API keys as Stripe checks them: Bearer or Basic auth, or `key=` in the params like Stripe.js."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass

from flashsale.stripe_sim.api_errors import StripeApiError
from flashsale.stripe_sim.params import Params

SECRET_PREFIXES = ("sk_test_", "rk_test_")
PUBLISHABLE_PREFIX = "pk_test_"
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


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking: the key's kind, the client address (tokens record it), and whether it
    may send raw card numbers (the publishable key always may: that is Stripe.js)."""

    publishable: bool
    client_ip: str | None
    raw_cards: bool = True
    key: str = ""  # as given, for a restricted key's permissions (scopes.py)


def authenticate(
    headers: Mapping[str, str],
    remote: str | None,
    params: Params,
    publishable_ok: bool,
    secret_raw_cards: bool = False,
) -> Caller:
    """The caller behind a request's key; a missing, malformed or misplaced key is a 401."""
    key: object = params.pop("key", None)
    header = headers.get("Authorization")
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
                401, "Invalid authorization header: use 'Authorization: Bearer YOUR_SECRET_KEY'."
            )
    if not key:
        raise StripeApiError(401, NO_KEY)
    if not isinstance(key, str):
        raise StripeApiError(401, f"Invalid API Key provided: {key!r}")
    if key.startswith(SECRET_PREFIXES) and len(key) > 8:
        return Caller(False, remote, secret_raw_cards, key)
    if key.startswith(PUBLISHABLE_PREFIX) and len(key) > 8:
        if not publishable_ok:
            raise StripeApiError(401, PUBLISHABLE_REFUSED)
        return Caller(True, remote, True, key)
    raise StripeApiError(401, f"Invalid API Key provided: {mask_key(key)}")


def mask_key(key: str) -> str:
    """Stripe shows a refused key's prefix and last four characters only."""
    if len(key) <= 12:
        return "*" * len(key)
    prefix = key[: key.find("_", 3) + 1] if key.count("_") >= 2 else ""
    return prefix + "*" * (len(key) - len(prefix) - 4) + key[-4:]

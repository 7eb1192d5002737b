"""Restricted keys (rk_test_...): each may do only what its permissions name, as on Stripe,
where a call outside them is a 403 naming the permission that would allow it."""

from __future__ import annotations

from flashsale.errors import ConfigError
from flashsale.stripe_sim.api_errors import StripeApiError
from flashsale.stripe_sim.auth import mask_key

ACCOUNT = "acct_flashsalesim"
# The API resource a route belongs to -> the name its permissions carry (rak_<name>_read/write).
RESOURCES = {
    "tokens": "token",
    "charges": "charge",
    "refunds": "refund",
    "payment_methods": "payment_method",
    "payment_intents": "payment_intent",
    "events": "event",
    "webhook_endpoints": "webhook",
    "disputes": "dispute",
}
PERMISSIONS = frozenset(
    f"{name}_{access}" for name in RESOURCES.values() for access in ("read", "write")
)


def parse_restricted_key(spec: str) -> tuple[str, frozenset[str]]:
    """'rk_test_abc=charge_write,payment_intent_write' -> the key and what it may do (a write
    permission allows reading too, as in the Dashboard)."""
    key, _, listed = spec.partition("=")
    key = key.strip()
    if not key.startswith("rk_test_") or len(key) <= 8:
        raise ConfigError(f"--restricted-key: a restricted test key starts rk_test_, not {key!r}")
    granted = {name.strip() for name in listed.split(",") if name.strip()}
    unknown = sorted(granted - PERMISSIONS)
    if unknown:
        raise ConfigError(
            f"--restricted-key {mask_key(key)}: unknown permission(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(PERMISSIONS))}"
        )
    reads = {name.replace("_write", "_read") for name in granted if name.endswith("_write")}
    return key, frozenset(granted | reads)


def parse_restricted_keys(specs: tuple[str, ...]) -> dict[str, frozenset[str]]:
    return dict(parse_restricted_key(spec) for spec in specs)


def require(key: str, granted: frozenset[str] | None, method: str, resource: str) -> None:
    """Refuse a call outside a restricted key's permissions (None: every permission)."""
    if granted is None:
        return
    name = RESOURCES.get(resource)
    if name is None:
        return
    needed = f"{name}_{'read' if method == 'GET' else 'write'}"
    if needed not in granted:
        raise StripeApiError(
            403,
            f"The provided key '{mask_key(key)}' does not have the required permissions for this "
            f"endpoint on account '{ACCOUNT}'. Having the 'rak_{needed}' permission would allow "
            "this request to continue.",
        )

"""PaymentMethods and PaymentIntents, with 3D Secure challenges the simulator hosts itself.

A PaymentIntent on a card that demands 3D Secure stops at `requires_action` with a `next_action`
pointing at `/3d_secure/<id>`; completing or failing that challenge (a browser through the
Stripe.js look-alike, or the load generator by POST) moves it on as the test card's documented
outcome says. Every other card settles at confirmation, exactly like a charge on it would.
"""

from __future__ import annotations

import html
import secrets
import sys
import time
from collections import Counter
from typing import NamedTuple
from urllib.parse import urlencode

from flashsale.stripe_sim.api_errors import StripeApiError, invalid, no_such
from flashsale.stripe_sim.auth import Caller
from flashsale.stripe_sim.cards import DECLINES, PAYMENT_METHOD_ALIASES
from flashsale.stripe_sim.currencies import money, read_amount
from flashsale.stripe_sim.endpoints import (
    CHARGE_EXTRA,
    STRIPE_JS_FIELDS,
    Endpoints,
    Result,
)
from flashsale.stripe_sim.intent_records import (
    CANCELABLE,
    CANCELED,
    REQUIRES_ACTION,
    REQUIRES_CAPTURE,
    REQUIRES_CONFIRMATION,
    REQUIRES_PAYMENT_METHOD,
    SUCCEEDED,
    PaymentIntent,
    PaymentMethod,
    render_payment_intent,
    render_payment_method,
)
from flashsale.stripe_sim.ledger import ALPHABET, Charge, Ledger, new_id
from flashsale.stripe_sim.listing import LIST_PARAMS, list_body, page_of, read_window
from flashsale.stripe_sim.params import (
    Params,
    get_bool,
    get_int,
    get_list,
    get_metadata,
    get_str,
    refuse_unknown,
)

PAYMENT_METHOD_PARAMS = {"type", "card", "billing_details", "metadata", "expand", *STRIPE_JS_FIELDS}
CONFIRM_PARAMS = {
    "payment_method",
    "return_url",
    "off_session",
    "error_on_requires_action",
    "use_stripe_sdk",
    "client_secret",
    "expand",
    *STRIPE_JS_FIELDS,
}
CREATE_PARAMS = {
    "amount",
    "currency",
    "confirm",
    "capture_method",
    "confirmation_method",
    "payment_method_types",
    "automatic_payment_methods",
    "description",
    "metadata",
    *CHARGE_EXTRA,
    *CONFIRM_PARAMS,
} - {"client_secret"}
CANCEL_PARAMS = {"cancellation_reason", "expand"}
CANCEL_REASONS = ("duplicate", "fraudulent", "requested_by_customer", "abandoned")
CAPTURE_PARAMS = {"amount_to_capture", "metadata", "expand"}
GET_PARAMS = {"client_secret", "expand"}
EXPANDABLE = frozenset({"latest_charge", "payment_method"})
# One frozenset object per subset of EXPANDABLE: a stored answer (idempotency) keeps the
# expansion it was given, and a new empty frozenset each would be 216 B per PaymentIntent.
NO_EXPANSION: frozenset[str] = frozenset()
_EXPANSIONS: dict[frozenset[str], frozenset[str]] = {NO_EXPANSION: NO_EXPANSION}
CAPTURE_METHODS = ("automatic", "automatic_async", "manual")
AUTHENTICATION_FAILED = (
    "The provided PaymentMethod has failed authentication. You can provide payment_method_data "
    "or a new PaymentMethod to attempt to fulfill this PaymentIntent again."
)
CHALLENGE_PATH = "/3d_secure/"
PAST = {"confirm": "confirmed", "cancel": "canceled", "capture": "captured"}


class IntentView(NamedTuple):
    """A PaymentIntent as one answer saw it, with the fields it expands; `error` for a 402."""

    intent: PaymentIntent
    expand: frozenset[str]
    error: StripeApiError | None = None

    def render(self) -> dict[str, object]:
        body = render_payment_intent(self.intent, self.expand)
        if self.error is None:
            return body
        rendered = self.error.body()
        error = rendered["error"]
        assert isinstance(error, dict)
        error["payment_intent"] = body
        if self.intent.last_payment_error is not None:
            error["payment_method"] = self.intent.last_payment_error.get("payment_method")
        return rendered


class IntentEndpoints:
    """/v1/payment_methods, /v1/payment_intents and the hosted 3D Secure challenge."""

    def __init__(self, ledger: Ledger, endpoints: Endpoints) -> None:
        self.ledger = ledger
        self.cards = endpoints
        self.events = endpoints.events
        self.public_url = "http://127.0.0.1"  # where browsers reach the challenge; set on bind
        self.challenges: Counter[str] = Counter()  # challenges asked, completed, failed

    # --- PaymentMethods ---------------------------------------------------------------------

    def create_payment_method(self, params: Params, ident: str | None, caller: Caller) -> Result:
        refuse_unknown(params, PAYMENT_METHOD_PARAMS)
        kind = get_str(params, "type", required=True)
        if kind != "card":
            raise invalid(
                f"Invalid type: {kind}. The simulator supports card PaymentMethods only.", "type"
            )
        card = params.get("card")
        if card is None or card == "":
            raise invalid("Missing required param: card.", "card", "parameter_missing")
        billing = params.get("billing_details")
        name = None
        if isinstance(billing, dict):
            refuse_unknown(billing, {"name", "email", "phone", "address"}, "billing_details")
            name = get_str(billing, "name", False, "billing_details[name]")
        elif billing not in (None, ""):
            raise invalid("Invalid object", "billing_details")
        if isinstance(card, dict) and set(card) == {"token"}:
            token = self.cards.take_token(card["token"], caller, "card[token]")
        else:
            token = self.cards.read_card(card, caller)
        method = PaymentMethod(new_id("pm_"), token, int(time.time()), get_metadata(params), name)
        self.ledger.payment_methods[method.id] = method
        return 200, method

    def get_payment_method(self, params: Params, ident: str | None, caller: Caller) -> Result:
        refuse_unknown(params, {"expand"})
        assert ident is not None
        return 200, self._payment_method(ident, "id", 404)

    def _payment_method(self, ident: str, param: str, status: int) -> PaymentMethod:
        """A stored PaymentMethod, or a fresh one behind a pm_card_* test alias."""
        alias = PAYMENT_METHOD_ALIASES.get(ident)
        if alias is not None:
            token = self.cards.card_for_alias(alias)
            minted = PaymentMethod(new_id("pm_"), token, int(time.time()), None)
            self.ledger.payment_methods[minted.id] = minted
            return minted
        stored = self.ledger.payment_methods.get(ident)
        if stored is None:
            raise no_such("PaymentMethod", ident, param, status)
        return stored

    # --- PaymentIntents ---------------------------------------------------------------------

    def create_intent(self, params: Params, ident: str | None, caller: Caller) -> Result:
        refuse_unknown(params, CREATE_PARAMS)
        amount, currency = read_amount(params)
        capture_method = get_str(params, "capture_method") or "automatic_async"
        if capture_method not in CAPTURE_METHODS:
            raise invalid(
                f"Invalid capture_method: must be one of {', '.join(CAPTURE_METHODS)}",
                "capture_method",
            )
        confirmation = get_str(params, "confirmation_method")
        if confirmation not in (None, "automatic", "manual"):
            raise invalid(
                "Invalid confirmation_method: must be one of automatic or manual",
                "confirmation_method",
            )
        types = get_list(params, "payment_method_types")
        if types is not None and types != ["card"]:
            raise invalid(
                "The simulator supports payment_method_types=['card'] only.",
                "payment_method_types",
            )
        confirm = get_bool(params, "confirm")
        expand = read_expand(params)
        method_id = get_str(params, "payment_method")
        if not confirm:
            for name in ("return_url", "off_session", "error_on_requires_action"):
                if params.get(name) not in (None, ""):
                    raise invalid(
                        f"You can only pass {name} when confirm=true.", name, "parameter_unknown"
                    )
        method = (
            None if method_id is None else self._payment_method(method_id, "payment_method", 400)
        )
        extra = {name: v for name in CHARGE_EXTRA if (v := get_str(params, name))}
        secret = "".join(secrets.choice(ALPHABET) for _ in range(25))
        intent = PaymentIntent(
            new_id("pi_"),
            secret,
            amount,
            sys.intern(currency),
            int(time.time()),
            capture_method,
            get_str(params, "description"),
            get_metadata(params),
            extra or None,
        )
        intent.payment_method = method
        if method is not None:
            intent.status = REQUIRES_CONFIRMATION
        self.ledger.payment_intents.add(intent.id, intent)
        created = self._publish("payment_intent.created", intent)
        if confirm:
            return self._confirm(intent, params, expand)
        return 200, IntentView(created, expand)

    def get_intent(self, params: Params, ident: str | None, caller: Caller) -> Result:
        refuse_unknown(params, GET_PARAMS)
        assert ident is not None
        intent = self._intent(ident, caller, params)
        return 200, IntentView(intent.snapshot(), read_expand(params))

    def confirm_intent(self, params: Params, ident: str | None, caller: Caller) -> Result:
        refuse_unknown(params, CONFIRM_PARAMS)
        assert ident is not None
        intent = self._intent(ident, caller, params)
        params.pop("client_secret", None)
        return self._confirm(intent, params, read_expand(params))

    def cancel_intent(self, params: Params, ident: str | None, caller: Caller) -> Result:
        refuse_unknown(params, CANCEL_PARAMS)
        assert ident is not None
        intent = self._intent(ident, caller, params)
        reason = get_str(params, "cancellation_reason")
        if reason is not None and reason not in CANCEL_REASONS:
            raise invalid(
                f"Invalid cancellation_reason: must be one of {', '.join(CANCEL_REASONS)}",
                "cancellation_reason",
            )
        if intent.status not in CANCELABLE:
            raise unexpected_state(intent, "cancel", CANCELABLE)
        intent.status = CANCELED
        intent.canceled_at = int(time.time())
        intent.cancellation_reason = reason
        intent.next_action = None
        return 200, IntentView(
            self._publish("payment_intent.canceled", intent), read_expand(params)
        )

    def capture_intent(self, params: Params, ident: str | None, caller: Caller) -> Result:
        refuse_unknown(params, CAPTURE_PARAMS)
        assert ident is not None
        intent = self._intent(ident, caller, params)
        if intent.status != REQUIRES_CAPTURE:
            raise unexpected_state(intent, "capture", (REQUIRES_CAPTURE,))
        amount = get_int(params, "amount_to_capture")
        if amount is not None and not 1 <= amount <= intent.amount:
            raise invalid(
                "amount_to_capture must be at least 1 and at most the amount capturable "
                f"({intent.amount}).",
                "amount_to_capture",
            )
        metadata = get_metadata(params)
        if metadata:
            intent.metadata = {**(intent.metadata or {}), **metadata}
        charge = intent.latest_charge
        assert charge is not None
        charge.captured = True
        intent.amount_received = intent.amount if amount is None else amount
        intent.status = SUCCEEDED
        self.events.publish("charge.captured", charge)
        return 200, IntentView(
            self._publish("payment_intent.succeeded", intent), read_expand(params)
        )

    def list_intents(self, params: Params, ident: str | None, caller: Caller) -> Result:
        refuse_unknown(params, LIST_PARAMS)
        intents = self.ledger.payment_intents
        page, has_more = page_of(intents, read_window(params, intents, "payment_intent"))
        expand = read_expand(params, prefix="data.")
        return 200, list_body(
            page, has_more, "/v1/payment_intents", lambda i: render_payment_intent(i, expand)
        )

    def _intent(self, ident: str, caller: Caller, params: Params) -> PaymentIntent:
        """The PaymentIntent; a publishable key must show its client secret, as in Stripe.js."""
        intent = self.ledger.payment_intents.get(ident)
        secret = params.get("client_secret")
        if intent is None or (caller.publishable and secret != intent.client_secret):
            raise no_such("payment_intent", ident, "intent")
        if secret not in (None, "") and secret != intent.client_secret:
            raise invalid(
                "The client_secret provided does not match the client_secret associated with "
                "the PaymentIntent.",
                "client_secret",
            )
        return intent

    # --- confirmation and 3D Secure ---------------------------------------------------------

    def _confirm(self, intent: PaymentIntent, params: Params, expand: frozenset[str]) -> Result:
        if intent.status not in (REQUIRES_PAYMENT_METHOD, REQUIRES_CONFIRMATION, REQUIRES_ACTION):
            raise unexpected_state(
                intent,
                "confirm",
                (REQUIRES_PAYMENT_METHOD, REQUIRES_CONFIRMATION, REQUIRES_ACTION),
            )
        method_id = get_str(params, "payment_method")
        if method_id is not None:
            intent.payment_method = self._payment_method(method_id, "payment_method", 400)
        method = intent.payment_method
        if method is None:
            raise invalid(
                "You cannot confirm this PaymentIntent because it's missing a payment method. "
                "Update the PaymentIntent with a payment method and then confirm it again.",
                None,
                "payment_intent_unexpected_state",
            )
        return_url = get_str(params, "return_url")
        off_session = get_bool(params, "off_session")
        refuse_action = get_bool(params, "error_on_requires_action")
        intent.return_url = return_url
        intent.last_payment_error = None
        if method.card.profile.needs_3ds:
            if off_session or refuse_action:
                # Nobody is there to authenticate: the issuer declines, as Stripe documents.
                return self._settle(intent, method, None, DECLINES["authentication_required"])
            return 200, IntentView(self._ask_for_authentication(intent), expand)
        return self._settle(intent, method, None, method.card.profile.decline, expand)

    def _ask_for_authentication(self, intent: PaymentIntent) -> PaymentIntent:
        self.challenges["asked"] += 1
        intent.status = REQUIRES_ACTION
        url = f"{self.public_url}{CHALLENGE_PATH}{intent.id}?" + urlencode(
            {"client_secret": intent.client_secret}
        )
        if intent.return_url:
            intent.next_action = {
                "type": "redirect_to_url",
                "redirect_to_url": {"return_url": intent.return_url, "url": url},
            }
        else:
            intent.next_action = {
                "type": "use_stripe_sdk",
                "use_stripe_sdk": {"type": "three_d_secure_redirect", "stripe_js": url},
            }
        return self._publish("payment_intent.requires_action", intent)

    def _publish(self, type: str, intent: PaymentIntent) -> PaymentIntent:
        """Publish the PaymentIntent's event; the event's snapshot is also the answer's (and
        so the idempotent replay's): one copy of the object as it is now, not two."""
        snapshot = self.events.publish(type, intent).snapshot
        assert isinstance(snapshot, PaymentIntent)
        return snapshot

    def _settle(
        self,
        intent: PaymentIntent,
        method: PaymentMethod,
        three_d_secure: str | None,
        decline: object,
        expand: frozenset[str] = NO_EXPANSION,
    ) -> Result:
        """Authorize on the card: a charge records the outcome, success or decline."""
        card = method.card
        extra = dict(intent.extra or {})
        if three_d_secure is not None:
            extra["three_d_secure"] = three_d_secure
        charge = Charge(
            new_id("ch_"),
            intent.amount,
            intent.currency,
            int(time.time()),
            card,
            intent.description,
            intent.metadata,
            decline,  # type: ignore[arg-type]
            intent.capture_method != "manual",
            extra or None,
            intent.id,
            method.id,
        )
        self.cards.record_charge(charge)
        intent.latest_charge = charge
        intent.next_action = None
        if charge.decline is not None:
            error = charge.decline.error(charge.id)
            intent.status = REQUIRES_PAYMENT_METHOD
            intent.payment_method = None
            intent.last_payment_error = {
                **error.body()["error"],  # type: ignore[dict-item]
                "payment_method": render_payment_method(method),
            }
            return 402, IntentView(
                self._publish("payment_intent.payment_failed", intent), expand, error
            )
        if intent.capture_method == "manual":
            intent.status = REQUIRES_CAPTURE
            return 200, IntentView(
                self._publish("payment_intent.amount_capturable_updated", intent), expand
            )
        intent.status = SUCCEEDED
        intent.amount_received = intent.amount
        return 200, IntentView(self._publish("payment_intent.succeeded", intent), expand)

    def finish_challenge(self, ident: str, secret: str | None, passed: bool) -> Result:
        """The customer completed or failed the 3D Secure challenge of a PaymentIntent."""
        intent = self.ledger.payment_intents.get(ident)
        if intent is None or secret != intent.client_secret:
            raise no_such("payment_intent", ident, "intent")
        if intent.status != REQUIRES_ACTION:
            return 200, IntentView(intent.snapshot(), NO_EXPANSION)  # already answered
        method = intent.payment_method
        assert method is not None
        if passed:
            self.challenges["completed"] += 1
            _, view = self._settle(intent, method, "authenticated", method.card.profile.decline)
            assert isinstance(view, IntentView)
            return 200, view._replace(error=None)  # the answer is the PaymentIntent itself
        self.challenges["failed"] += 1
        intent.status = REQUIRES_PAYMENT_METHOD
        intent.next_action = None
        intent.payment_method = None
        intent.last_payment_error = {
            "code": "payment_intent_authentication_failure",
            "doc_url": "https://stripe.com/docs/error-codes/payment-intent-authentication-failure",
            "message": AUTHENTICATION_FAILED,
            "payment_method": render_payment_method(method),
            "type": "invalid_request_error",
        }
        return 200, IntentView(self._publish("payment_intent.payment_failed", intent), NO_EXPANSION)

    def challenge_page(self, ident: str, secret: str | None) -> str:
        """The hosted challenge, like Stripe's test page: one button passes, one fails."""
        intent = self.ledger.payment_intents.get(ident)
        if intent is None or secret != intent.client_secret:
            raise no_such("payment_intent", ident, "intent")
        action = html.escape(f"{CHALLENGE_PATH}{intent.id}")
        secret_value = html.escape(intent.client_secret)
        hidden = f'<input type="hidden" name="client_secret" value="{secret_value}">'
        amount = money(intent.amount, intent.currency)
        waiting = intent.status == REQUIRES_ACTION
        body = (
            f"<p>Authenticate a payment of {html.escape(amount)} (stripe-sim 3D Secure test "
            "page).</p>"
            f'<form method="post" action="{action}/complete">{hidden}'
            '<button id="complete" type="submit">Complete authentication</button></form>'
            f'<form method="post" action="{action}/fail">{hidden}'
            '<button id="fail" type="submit">Fail authentication</button></form>'
            if waiting
            else f"<p>This payment is no longer awaiting authentication ({intent.status}).</p>"
        )
        return (
            '<!doctype html><html lang="en"><head><meta charset="utf-8">'
            "<title>3D Secure test page</title><style>body{font:15px system-ui,sans-serif;"
            "margin:24px}form{display:inline-block;margin:8px 8px 0 0}button{font:inherit;"
            "padding:8px 14px}</style></head><body>"
            f"<h1>3D Secure 2 test authentication</h1>{body}</body></html>"
        )

    def after_challenge_url(self, intent_id: str) -> str | None:
        """Where a redirect-based challenge sends the customer back to, with Stripe's params."""
        intent = self.ledger.payment_intents.get(intent_id)
        if intent is None or not intent.return_url:
            return None
        status = "succeeded" if intent.status in (SUCCEEDED, REQUIRES_CAPTURE) else "failed"
        joiner = "&" if "?" in intent.return_url else "?"
        return (
            intent.return_url
            + joiner
            + urlencode(
                {
                    "payment_intent": intent.id,
                    "payment_intent_client_secret": intent.client_secret,
                    "redirect_status": status,
                }
            )
        )

    def stats(self) -> dict[str, object]:
        by_status = Counter(intent.status for intent in self.ledger.payment_intents.records)
        return {
            "total": len(self.ledger.payment_intents),
            "by_status": dict(sorted(by_status.items())),
            "challenges": dict(sorted(self.challenges.items())),
        }


def read_expand(params: Params, prefix: str = "") -> frozenset[str]:
    """The `expand[]` paths asked for; one the simulator cannot expand is a 400, like Stripe."""
    paths = get_list(params, "expand") or []
    fields = set()
    for path in paths:
        name = path[len(prefix) :] if isinstance(path, str) and path.startswith(prefix) else None
        if name not in EXPANDABLE:
            raise invalid(f"This property cannot be expanded ({path}).", "expand")
        fields.add(name)
    found = frozenset(fields)
    return _EXPANSIONS.setdefault(found, found)


def unexpected_state(intent: PaymentIntent, verb: str, allowed: tuple[str, ...]) -> StripeApiError:
    return StripeApiError(
        400,
        f"You cannot {verb} this PaymentIntent because it has a status of {intent.status}. "
        f"Only a PaymentIntent with one of the following statuses may be {PAST[verb]}: "
        + ", ".join(allowed)
        + ".",
        code="payment_intent_unexpected_state",
    )

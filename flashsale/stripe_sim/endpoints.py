"""The simulated Stripe endpoints (tokens, charges, refunds): validate like Stripe, then record.

Each endpoint takes parsed params and returns (HTTP status, payload), or raises StripeApiError
before changing anything, so a refused request leaves no trace (and no idempotent result).
"""

from __future__ import annotations

import datetime
import sys
import time
from collections import Counter
from typing import TYPE_CHECKING

from flashsale.stripe_sim.api_errors import StripeApiError, invalid, no_such
from flashsale.stripe_sim.auth import Caller
from flashsale.stripe_sim.cards import (
    DECLINES,
    TEST_CARDS,
    TOKEN_ALIASES,
    AliasCard,
    CardProfile,
    check_card,
    fingerprint,
    profile_for,
)
from flashsale.stripe_sim.currencies import money, read_amount
from flashsale.stripe_sim.intent_records import PaymentMethod, render_payment_method
from flashsale.stripe_sim.ledger import (
    Charge,
    Ledger,
    Refund,
    Token,
    new_id,
    render_charge,
    render_refund,
    render_token,
)
from flashsale.stripe_sim.listing import LIST_PARAMS, list_body, page_among, page_of, read_window
from flashsale.stripe_sim.params import (
    Params,
    get_bool,
    get_int,
    get_metadata,
    get_str,
    refuse_unknown,
)

if TYPE_CHECKING:
    from flashsale.stripe_sim.events import Events

Result = tuple[int, object]

# Stripe.js sends these alongside card data; they carry no meaning for the simulator.
STRIPE_JS_FIELDS = {
    "payment_user_agent",
    "time_on_page",
    "guid",
    "muid",
    "sid",
    "referrer",
    "pasted_fields",
}
TOKEN_PARAMS = {"card", "expand", *STRIPE_JS_FIELDS}
CARD_PARAMS = {
    "number",
    "exp_month",
    "exp_year",
    "cvc",
    "name",
    "address_line1",
    "address_line2",
    "address_city",
    "address_state",
    "address_zip",
    "address_country",
    "currency",
}
CARD_EXTRA = CARD_PARAMS - {"number", "exp_month", "exp_year", "cvc", "currency"}
CHARGE_PARAMS = {
    "amount",
    "currency",
    "source",
    "customer",
    "description",
    "metadata",
    "capture",
    "receipt_email",
    "statement_descriptor",
    "statement_descriptor_suffix",
    "expand",
}
CHARGE_EXTRA = ("receipt_email", "statement_descriptor", "statement_descriptor_suffix")
REFUND_PARAMS = {"charge", "payment_intent", "amount", "reason", "metadata", "expand"}
REFUND_REASONS = ("duplicate", "fraudulent", "requested_by_customer")
GET_PARAMS = {"expand"}

# What a test-mode account without raw card data APIs answers a secret key sending card numbers.
RAW_CARDS_REFUSED = (
    "Sending credit card numbers directly to the Stripe API is generally unsafe. We suggest you "
    "use test tokens that map to the test card you are using, see https://stripe.com/docs/testing. "
    "To enable raw card data APIs in test mode, see "
    "https://support.stripe.com/questions/enabling-access-to-raw-card-data-apis."
)


class Endpoints:
    """The API surface over one Ledger; counts charges by outcome for /_sim/stats."""

    def __init__(self, ledger: Ledger, events: Events) -> None:
        self.ledger = ledger
        self.events = events
        self.outcomes: Counter[str] = Counter()
        self._years: dict[int, int] = {}

    # --- tokens -----------------------------------------------------------------------------

    def create_token(self, params: Params, ident: str | None, caller: Caller) -> Result:
        refuse_unknown(params, TOKEN_PARAMS)
        card = params.get("card")
        if card is None or card == "":
            raise invalid(
                "You must supply either a card, customer, PII data, bank account, or account "
                "legal entity to create a token.",
                "card",
            )
        token = self.read_card(card, caller)
        self.ledger.tokens[token.id] = token
        return 200, token

    def read_card(self, card: object, caller: Caller, prefix: str = "card") -> Token:
        """A card record from raw card details, checked as Stripe checks them at tokenization."""
        if not isinstance(card, dict):
            raise invalid("Invalid object", prefix)
        if not caller.raw_cards:
            raise invalid(RAW_CARDS_REFUSED)
        refuse_unknown(card, CARD_PARAMS, prefix)
        number = get_str(card, "number", True, f"{prefix}[number]")
        exp_month = get_str(card, "exp_month", True, f"{prefix}[exp_month]")
        exp_year = get_str(card, "exp_year", True, f"{prefix}[exp_year]")
        cvc = get_str(card, "cvc", False, f"{prefix}[cvc]")
        for name in CARD_EXTRA:
            get_str(card, name, False, f"{prefix}[{name}]")
        assert number is not None and exp_month is not None and exp_year is not None
        month, year = check_card(number, exp_month, exp_year, cvc, datetime.date.today())
        digits = number.replace(" ", "").replace("-", "")
        extra = {name: card[name] for name in CARD_EXTRA if card.get(name)}
        return self._new_token(
            profile_for(digits),
            digits[-4:],
            card_fingerprint(digits),
            month,
            year,
            cvc is not None,
            caller.client_ip,
            extra,
        )

    def _new_token(
        self,
        profile: CardProfile,
        last4: str,
        card_print: str,
        month: int,
        year: int,
        cvc_given: bool,
        client_ip: str | None,
        extra: dict[str, object] | None = None,
    ) -> Token:
        return Token(
            new_id("tok_"),
            profile,
            sys.intern(last4),
            month,
            self._years.setdefault(year, year),  # one int object per year, not per token
            card_print,
            profile.check("cvc_check", cvc_given),
            int(time.time()),
            client_ip,
            extra or None,  # type: ignore[arg-type]
        )

    def alias_token(self, alias: str, client_ip: str | None) -> Token:
        """A fresh card behind a test alias, as Stripe mints one per use of tok_visa and co."""
        return self.card_for_alias(TOKEN_ALIASES[alias], client_ip)

    def card_for_alias(self, card: AliasCard, client_ip: str | None = None) -> Token:
        """A fresh test card (expiring next December, CVC given) behind a test alias; the few
        aliases the docs give no number for show last4 0000."""
        next_year = datetime.date.today().year + 1
        number = card.number
        last4, card_print = (
            (number[-4:], card_fingerprint(number))
            if number is not None
            else ("0000", fingerprint(card.alias))
        )
        return self._new_token(card.profile, last4, card_print, 12, next_year, True, client_ip)

    def get_token(self, params: Params, ident: str | None, caller: Caller) -> Result:
        refuse_unknown(params, GET_PARAMS)
        assert ident is not None
        if ident in TOKEN_ALIASES:
            return 200, self.alias_token(ident, caller.client_ip)
        token = self.ledger.tokens.get(ident)
        if token is None:
            raise no_such("token", ident, "token")
        return 200, token

    # --- charges ----------------------------------------------------------------------------

    def create_charge(self, params: Params, ident: str | None, caller: Caller) -> Result:
        refuse_unknown(params, CHARGE_PARAMS)
        amount, currency = read_amount(params)
        description = get_str(params, "description")
        metadata = get_metadata(params)
        capture = get_bool(params, "capture")
        extra = {name: v for name in CHARGE_EXTRA if (v := get_str(params, name))}
        customer = get_str(params, "customer")
        if customer is not None:
            raise no_such("customer", customer, "customer", 400)
        token = self._take_source(params, caller)
        profile = token.profile
        # The Charges API cannot run 3D Secure: a card that demands it is declined.
        decline = DECLINES["authentication_required"] if profile.needs_3ds else profile.decline
        charge = Charge(
            new_id("ch_"),
            amount,
            sys.intern(currency),
            int(time.time()),
            token,
            description,
            metadata,
            decline,
            capture is not False,
            extra or None,
        )
        self.record_charge(charge)
        return (200 if charge.decline is None else 402), charge

    def record_charge(self, charge: Charge) -> None:
        self.ledger.add_charge(charge)
        self.outcomes[charge.outcome_name] += 1
        self.events.publish("charge.failed" if charge.decline else "charge.succeeded", charge)

    def _take_source(self, params: Params, caller: Caller) -> Token:
        """The token to charge, marked used; test aliases mint a fresh card each time."""
        source = params.get("source")
        if source is None or source == "":
            raise invalid("Must provide source or customer.", None, "parameter_missing")
        if isinstance(source, dict):
            # Card details in place of a token: only where raw card data is allowed.
            details = {k: v for k, v in source.items() if not (k == "object" and v == "card")}
            return self.read_card(details, caller, "source")
        return self.take_token(source, caller, "source")

    def take_token(self, value: object, caller: Caller, param: str) -> Token:
        """A token (or a tok_ test alias) given in place of card details, marked used."""
        if not isinstance(value, str):
            raise invalid(f"Invalid string: {value}", param)
        if value in TOKEN_ALIASES:
            return self.alias_token(value, caller.client_ip)
        token = self.ledger.tokens.get(value)
        if token is None:
            raise no_such("token", value, param, 400)
        if token.used:
            raise StripeApiError(
                400,
                f"You cannot use a Stripe token more than once: {value}.",
                param=param,
                code="token_already_used",
            )
        token.used = True
        return token

    def get_charge(self, params: Params, ident: str | None, caller: Caller) -> Result:
        refuse_unknown(params, GET_PARAMS)
        assert ident is not None
        charge = self.ledger.charge(ident)
        if charge is None:
            raise no_such("charge", ident, "id")
        return 200, charge

    def list_charges(self, params: Params, ident: str | None, caller: Caller) -> Result:
        refuse_unknown(params, LIST_PARAMS)
        window = read_window(params, self.ledger.charges, "charge")
        charges, has_more = page_of(self.ledger.charges, window)
        return 200, list_body(charges, has_more, "/v1/charges", render_charge)

    # --- refunds ----------------------------------------------------------------------------

    def create_refund(self, params: Params, ident: str | None, caller: Caller) -> Result:
        refuse_unknown(params, REFUND_PARAMS)
        charge_id = get_str(params, "charge")
        intent_id = get_str(params, "payment_intent")
        if charge_id is None and intent_id is not None:
            intent = self.ledger.payment_intents.get(intent_id)
            if intent is None:
                raise no_such("payment_intent", intent_id, "payment_intent", 400)
            if intent.latest_charge is None or intent.latest_charge.decline is not None:
                raise invalid(
                    f"PaymentIntent {intent_id} does not have a successful charge to refund.",
                    "payment_intent",
                    "charge_not_refundable",
                )
            charge_id = intent.latest_charge.id
        if charge_id is None:
            raise invalid(
                "One of the following params should be provided for this request: "
                "payment_intent or charge.",
                None,
                "parameter_missing",
            )
        amount = get_int(params, "amount")
        reason = get_str(params, "reason")
        metadata = get_metadata(params)
        if reason is not None and reason not in REFUND_REASONS:
            raise invalid(
                "Invalid reason: must be one of duplicate, fraudulent, or requested_by_customer",
                "reason",
            )
        charge = self.ledger.charge(charge_id)
        if charge is None:
            raise no_such("charge", charge_id, "charge", 400)
        if charge.decline is not None:
            raise invalid(
                f"Charge {charge_id} has a status of failed and cannot be refunded.",
                "charge",
                "charge_not_refundable",
            )
        remaining = charge.amount - charge.amount_refunded
        if remaining <= 0:
            raise invalid(
                f"Charge {charge_id} has already been refunded.",
                "charge",
                "charge_already_refunded",
            )
        if amount is None:
            amount = remaining
        if amount < 1:
            raise invalid("Invalid positive integer", "amount")
        if amount > remaining:
            raise invalid(
                f"Refund amount ({money(amount, charge.currency)}) is greater than unrefunded "
                f"amount on charge ({money(remaining, charge.currency)})",
                "amount",
                "amount_too_large",
            )
        refund = Refund(new_id("re_"), charge, amount, int(time.time()), reason, metadata)
        charge.amount_refunded += amount
        if charge.refunds is None:
            charge.refunds = []
        charge.refunds.append(refund)
        self.ledger.refunds.add(refund.id, refund)
        self.events.publish("charge.refunded", charge)
        self.events.publish("refund.created", refund)
        return 200, refund

    def list_refunds(self, params: Params, ident: str | None, caller: Caller) -> Result:
        """Newest first; `charge` or `payment_intent` narrows to one payment's refunds."""
        refuse_unknown(params, LIST_PARAMS | {"charge", "payment_intent"})
        refunds = self.ledger.refunds
        window = read_window(params, refunds, "refund")
        charge_id = get_str(params, "charge")
        intent_id = get_str(params, "payment_intent")
        if charge_id is None and intent_id is None:
            page, has_more = page_of(refunds, window)
        else:
            # One payment's refunds: few, so a scan of its charge's list is cheap.
            charge = self.ledger.charge(charge_id) if charge_id is not None else None
            if charge is None and intent_id is not None:
                intent = self.ledger.payment_intents.get(intent_id)
                charge = intent.latest_charge if intent is not None else None
            page, has_more = page_among(
                refunds, [r.id for r in charge.refunds or []] if charge is not None else [], window
            )
        return 200, list_body(page, has_more, "/v1/refunds", render_refund)

    def capture_charge(self, params: Params, ident: str | None, caller: Caller) -> Result:
        """Capture a charge made with capture=false (its whole amount, or `amount` of it)."""
        refuse_unknown(params, {"amount", "expand", "metadata", "receipt_email"})
        assert ident is not None
        charge = self.ledger.charge(ident)
        if charge is None:
            raise no_such("charge", ident, "charge")
        if charge.decline is not None:
            raise invalid(
                f"Charge {ident} has a status of failed and cannot be captured.",
                None,
                "charge_not_capturable",
            )
        if charge.captured:
            raise invalid(
                f"Charge {ident} has already been captured.", None, "charge_already_captured"
            )
        amount = get_int(params, "amount")
        if amount is not None and not 1 <= amount <= charge.amount:
            raise invalid(
                f"Amount to capture must be at most the charge's amount ({charge.amount}).",
                "amount",
            )
        charge.captured = True
        if amount is not None and amount < charge.amount:
            # Stripe releases the uncaptured rest, and shows it as refunded.
            charge.amount_refunded = charge.amount - amount
        self.events.publish("charge.captured", charge)
        return 200, charge

    def get_refund(self, params: Params, ident: str | None, caller: Caller) -> Result:
        refuse_unknown(params, GET_PARAMS)
        assert ident is not None
        refund = self.ledger.refunds.get(ident)
        if refund is None:
            raise no_such("refund", ident, "id")
        return 200, refund


_test_fingerprints = {number: fingerprint(number) for number in TEST_CARDS}


def card_fingerprint(digits: str) -> str:
    """Shared strings for the test cards, so a million test tokens do not hold a million copies."""
    known = _test_fingerprints.get(digits)
    return known if known is not None else fingerprint(digits)


def render(status: int, payload: object) -> dict[str, object]:
    """The JSON body for a result; a 402 charge renders as its decline error."""
    if isinstance(payload, Charge):
        if status == 402 and payload.decline is not None:
            return payload.decline.error(payload.id).body()
        return render_charge(payload)
    if isinstance(payload, Token):
        return render_token(payload)
    if isinstance(payload, Refund):
        return render_refund(payload)
    if isinstance(payload, StripeApiError):
        return payload.body()
    if isinstance(payload, PaymentMethod):
        return render_payment_method(payload)
    if isinstance(payload, dict):
        return payload
    # Resources of other modules (a PaymentIntent's view) render themselves.
    rendered = payload.render()  # type: ignore[attr-defined]
    assert isinstance(rendered, dict)
    return rendered

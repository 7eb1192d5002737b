"""Stripe's documented test cards and token aliases, tokenization checks, decline outcomes."""

from __future__ import annotations

import datetime
import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

from flashsale.stripe_sim.api_errors import StripeApiError, card_error

GENERIC_SELLER_MESSAGE = "The bank did not return any further details with this decline."


@dataclass(frozen=True, slots=True)
class Decline:
    """How Stripe declines a charge on a given test card: the error and the charge's outcome."""

    code: str
    decline_code: str
    message: str
    param: str | None = None
    # The charge's `outcome` object.
    network_status: str = "declined_by_network"
    outcome_type: str = "issuer_declined"
    risk_level: str = "normal"
    seller_message: str = ""

    @property
    def reason(self) -> str:
        return "highest_risk_level" if self.outcome_type == "blocked" else self.decline_code

    def outcome(self) -> dict[str, object]:
        return {
            "network_status": self.network_status,
            "reason": self.reason,
            "risk_level": self.risk_level,
            "risk_score": 95 if self.risk_level == "highest" else 40,
            "seller_message": self.seller_message
            or f"The bank returned the decline code `{self.decline_code}`.",
            "type": self.outcome_type,
        }

    def error(self, charge_id: str) -> StripeApiError:
        return card_error(self.message, self.code, self.param, self.decline_code, charge_id)


DECLINED = "Your card was declined."
DECLINES = {
    "generic_decline": Decline(
        "card_declined", "generic_decline", DECLINED, seller_message=GENERIC_SELLER_MESSAGE
    ),
    "insufficient_funds": Decline(
        "card_declined", "insufficient_funds", "Your card has insufficient funds."
    ),
    "lost_card": Decline("card_declined", "lost_card", DECLINED),
    "stolen_card": Decline("card_declined", "stolen_card", DECLINED),
    # Stripe's "always blocked" card: Radar refuses it before it reaches the network.
    "fraudulent": Decline(
        "card_declined",
        "fraudulent",
        DECLINED,
        network_status="not_sent_to_network",
        outcome_type="blocked",
        risk_level="highest",
        seller_message="Stripe blocked this payment as too risky.",
    ),
    "expired_card": Decline("expired_card", "expired_card", "Your card has expired.", "exp_month"),
    "incorrect_cvc": Decline(
        "incorrect_cvc", "incorrect_cvc", "Your card's security code is incorrect.", "cvc"
    ),
    # What the Charges API (and off-session confirmation) answers for a card demanding 3DS.
    "authentication_required": Decline(
        "card_declined",
        "authentication_required",
        "Your card was declined. This transaction requires authentication.",
    ),
    "card_velocity_exceeded": Decline(
        "card_declined",
        "card_velocity_exceeded",
        "Your card was declined for making repeated attempts too frequently or exceeding its "
        "amount limit.",
    ),
    "processing_error": Decline(
        "processing_error",
        "processing_error",
        "An error occurred while processing your card. Try again in a little bit.",
    ),
}


@dataclass(frozen=True, slots=True)
class CardProfile:
    """What a card number is (brand, funding, country) and how payments on it end."""

    brand: str
    funding: str = "credit"
    country: str = "US"
    # The outcome once the payment is authorized (after 3D Secure, when the card demands it).
    decline: Decline | None = None
    # 3D Secure: "required" (a challenge on every on-session payment), "optional" and
    # "supported" (Radar's default rules ask for none), "not_supported" (cannot be invoked; the
    # payment proceeds without it), "lookup_error" (required, but the lookup fails: declined).
    three_d_secure: str = "supported"
    risk_level: str = "normal"  # Radar's, on the charge's outcome
    # Checks that fail (when the value was given) or are unavailable: (field, result) pairs.
    checks: tuple[tuple[str, str], ...] = ()
    dispute: str | None = None  # the dispute a succeeded charge receives afterwards
    refund: str | None = (
        None  # asynchronous refunds: pending_then_succeeded | succeeded_then_failed
    )

    @property
    def needs_3ds(self) -> bool:
        return self.three_d_secure == "required"

    def check(self, name: str, given: bool) -> str | None:
        """A CVC or address check's result: the card's documented failure, else pass."""
        result = dict(self.checks).get(name)
        if result == "unavailable":
            return result
        if not given:
            return None
        return result or "pass"


@dataclass(frozen=True, slots=True)
class AliasCard:
    """The card behind a tok_/pm_card_ alias; a few aliases have no number in the docs."""

    alias: str
    number: str | None
    profile: CardProfile


def _profile(row: dict[str, Any]) -> CardProfile:
    decline = row.get("decline")
    return CardProfile(
        brand=row["brand"],
        funding=row["funding"],
        country=row["country"],
        decline=None if decline is None else DECLINES[decline],
        three_d_secure=row["three_d_secure"],
        risk_level=row["risk_level"],
        checks=tuple(sorted(row.get("checks", {}).items())),
        dispute=row.get("dispute"),
        refund=row.get("refund"),
    )


def load_table() -> tuple[dict[str, CardProfile], dict[str, AliasCard], dict[str, AliasCard]]:
    """test_cards.json: the profile of every number, and the card behind every alias."""
    table = json.loads(resources.files(__package__).joinpath(TABLE_FILE).read_text("utf-8"))
    numbers: dict[str, CardProfile] = {}
    tokens: dict[str, AliasCard] = {}
    methods: dict[str, AliasCard] = {}
    for row in table["cards"]:
        profile = _profile(row)
        number = row["number"]
        if number is not None:
            numbers.setdefault(number, profile)
        # An alias in two rows (tok_jcb: by brand and by country) is the first row's.
        for alias in row["tok"]:
            tokens.setdefault(alias, AliasCard(alias, number, profile))
        for alias in row["pm"]:
            methods.setdefault(alias, AliasCard(alias, number, profile))
    return numbers, tokens, methods


TABLE_FILE = "test_cards.json"
# Stripe's documented test cards (docs.stripe.com/testing) and the tokens and PaymentMethods
# real test mode accepts in place of raw numbers (most accounts refuse raw card data).
TEST_CARDS, TOKEN_ALIASES, PAYMENT_METHOD_ALIASES = load_table()

BRAND_PREFIXES = (
    (("34", "37"), "American Express"),
    (("6011", "644", "645", "646", "647", "648", "649", "65"), "Discover"),
    (("300", "301", "302", "303", "304", "305", "36", "38", "39"), "Diners Club"),
    (("35",), "JCB"),
    (("62",), "UnionPay"),
    (("51", "52", "53", "54", "55", "22", "23", "24", "25", "26", "27"), "MasterCard"),
    (("4",), "Visa"),
)
_profiles: dict[str, CardProfile] = {}


def profile_for(number: str) -> CardProfile:
    """The test card's profile, or a succeeding card of the brand its prefix names."""
    known = TEST_CARDS.get(number)
    if known is not None:
        return known
    brand = next((b for prefixes, b in BRAND_PREFIXES if number.startswith(prefixes)), "Unknown")
    return _profiles.setdefault(brand, CardProfile(brand))


def fingerprint(number: str) -> str:
    """Same number, same fingerprint, like Stripe's per-account card fingerprint."""
    return hashlib.blake2b(number.encode(), digest_size=12).hexdigest()[:16]


def luhn_ok(number: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(number)):
        digit = ord(char) - 48
        if position % 2:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0


def check_card(
    number: str, exp_month: str, exp_year: str, cvc: str | None, today: datetime.date
) -> tuple[int, int]:
    """Stripe's tokenization checks (number, Luhn, expiry, CVC length); return (month, year)."""
    digits = number.replace(" ", "").replace("-", "")
    if not digits.isdigit() or not 12 <= len(digits) <= 19:
        raise card_error("Your card number is invalid.", "invalid_number", "number")
    if not luhn_ok(digits):
        raise card_error("Your card number is incorrect.", "incorrect_number", "number")
    month = int(exp_month) if exp_month.strip().isdigit() else 0
    if not 1 <= month <= 12:
        raise card_error(
            "Your card's expiration month is invalid.", "invalid_expiry_month", "exp_month"
        )
    year = int(exp_year) if exp_year.strip().isdigit() else 0
    if 0 <= year < 100 and exp_year.strip().isdigit():
        year += 2000  # Stripe reads a two-digit year as 20YY
    if not today.year <= year <= today.year + 50:
        raise card_error(
            "Your card's expiration year is invalid.", "invalid_expiry_year", "exp_year"
        )
    if year == today.year and month < today.month:
        raise card_error(
            "Your card's expiration month is invalid.", "invalid_expiry_month", "exp_month"
        )
    if cvc is not None:
        wanted = 4 if profile_for(digits).brand == "American Express" else 3
        if not (cvc.isdigit() and len(cvc) == wanted):
            raise card_error("Your card's security code is invalid.", "invalid_cvc", "cvc")
    return month, year

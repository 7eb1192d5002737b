"""Stripe's documented test cards and token aliases, tokenization checks, decline outcomes."""

from __future__ import annotations

import datetime
import hashlib
from dataclasses import dataclass

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
    "processing_error": Decline(
        "processing_error",
        "processing_error",
        "An error occurred while processing your card. Try again in a little bit.",
    ),
}


@dataclass(frozen=True, slots=True)
class CardProfile:
    """What a card number is (brand, funding, country) and how charges on it end."""

    brand: str
    funding: str = "credit"
    country: str = "US"
    # The outcome once the payment is authorized (after 3D Secure, when the card demands it).
    decline: Decline | None = None
    # 3D Secure: "required" (a challenge on every payment), "supported" (none asked for),
    # "not_supported" (cannot be invoked; the payment proceeds without it).
    three_d_secure: str = "supported"

    @property
    def needs_3ds(self) -> bool:
        return self.three_d_secure == "required"


TEST_CARDS: dict[str, CardProfile] = {
    "4242424242424242": CardProfile("Visa"),
    "4000056655665556": CardProfile("Visa", "debit"),
    "5555555555554444": CardProfile("MasterCard"),
    "5200828282828210": CardProfile("MasterCard", "debit"),
    "378282246310005": CardProfile("American Express", three_d_secure="not_supported"),
    "6011111111111117": CardProfile("Discover"),
    "4000000000000002": CardProfile("Visa", decline=DECLINES["generic_decline"]),
    "4000000000009995": CardProfile("Visa", decline=DECLINES["insufficient_funds"]),
    "4000000000009987": CardProfile("Visa", decline=DECLINES["lost_card"]),
    "4000000000009979": CardProfile("Visa", decline=DECLINES["stolen_card"]),
    "4100000000000019": CardProfile("Visa", decline=DECLINES["fraudulent"]),
    "4000000000000069": CardProfile("Visa", decline=DECLINES["expired_card"]),
    "4000000000000127": CardProfile("Visa", decline=DECLINES["incorrect_cvc"]),
    "4000000000000119": CardProfile("Visa", decline=DECLINES["processing_error"]),
    # 3D Secure (docs.stripe.com/testing#authentication-and-setup and #three-ds-cards).
    "4000002500003155": CardProfile("Visa", three_d_secure="required"),
    "4000002760003184": CardProfile("Visa", three_d_secure="required"),
    "4000008260003178": CardProfile(
        "Visa", decline=DECLINES["insufficient_funds"], three_d_secure="required"
    ),
    "4000000000003220": CardProfile("Visa", three_d_secure="required"),
    "4000000000003063": CardProfile("Visa", three_d_secure="required"),
    "4000008400001629": CardProfile(
        "Visa", decline=DECLINES["generic_decline"], three_d_secure="required"
    ),
    "4000000000003055": CardProfile("Visa"),
}

# The tokens real test mode accepts in place of raw numbers (accounts refuse raw card data).
TOKEN_ALIASES: dict[str, str] = {
    "tok_visa": "4242424242424242",
    "tok_visa_debit": "4000056655665556",
    "tok_mastercard": "5555555555554444",
    "tok_mastercard_debit": "5200828282828210",
    "tok_amex": "378282246310005",
    "tok_discover": "6011111111111117",
    "tok_chargeDeclined": "4000000000000002",
    "tok_chargeDeclinedInsufficientFunds": "4000000000009995",
    "tok_chargeDeclinedLostCard": "4000000000009987",
    "tok_chargeDeclinedStolenCard": "4000000000009979",
    "tok_chargeDeclinedExpiredCard": "4000000000000069",
    "tok_chargeDeclinedIncorrectCvc": "4000000000000127",
    "tok_chargeDeclinedProcessingError": "4000000000000119",
    "tok_chargeDeclinedFraudulent": "4100000000000019",
}

# The PaymentMethods real test mode accepts in place of raw numbers: pm_card_<the tok_ name>,
# and the 3D Secure cards, which have no tok_ alias.
PAYMENT_METHOD_ALIASES: dict[str, str] = {
    **{"pm_card_" + alias[4:]: number for alias, number in TOKEN_ALIASES.items()},
    "pm_card_authenticationRequiredOnSetup": "4000002500003155",
    "pm_card_authenticationRequired": "4000002760003184",
    "pm_card_authenticationRequiredChargeDeclinedInsufficientFunds": "4000008260003178",
    "pm_card_threeDSecure2Required": "4000000000003220",
    "pm_card_threeDSecureRequired": "4000000000003063",
    "pm_card_threeDSecureRequiredChargeDeclined": "4000008400001629",
    "pm_card_threeDSecureOptional": "4000000000003055",
    "pm_card_amex_threeDSecureNotSupported": "378282246310005",
}

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

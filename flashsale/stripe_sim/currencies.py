"""Currencies as Stripe takes them: which it charges, which have no minor unit, and the
smallest and largest amount of a card payment (docs.stripe.com/currencies)."""

from __future__ import annotations

from flashsale.stripe_sim.api_errors import StripeApiError, invalid
from flashsale.stripe_sim.params import Params, get_int, get_str

ZERO_DECIMAL = frozenset(
    [
        "bif",
        "clp",
        "djf",
        "gnf",
        "jpy",
        "kmf",
        "krw",
        "mga",
        "pyg",
        "rwf",
        "ugx",
        "vnd",
        "vuv",
        "xaf",
        "xof",
        "xpf",
    ]
)
CURRENCIES = ZERO_DECIMAL | frozenset(
    [
        "usd",
        "eur",
        "gbp",
        "cad",
        "aud",
        "nzd",
        "chf",
        "sek",
        "nok",
        "dkk",
        "pln",
        "czk",
        "huf",
        "ron",
        "bgn",
        "hkd",
        "sgd",
        "inr",
        "mxn",
        "brl",
        "thb",
        "myr",
        "php",
        "idr",
        "ils",
        "aed",
        "sar",
        "zar",
        "try",
        "ars",
        "cop",
        "rub",
    ]
)
# docs.stripe.com/currencies#minimum-and-maximum-charge-amounts, in minor units (the docs give
# major units: 0.50 USD, 0.30 GBP, 10 MXN, 175.00 HUF). The docs apply each to an account
# settling in that currency; the simulated account settles in every currency it charges.
MINIMUM_AMOUNTS = {
    "usd": 50, "aed": 200, "ars": 50, "aud": 50, "brl": 50, "cad": 50, "chf": 50, "cop": 50,
    "czk": 1500, "dkk": 250, "eur": 50, "gbp": 30, "hkd": 400, "huf": 17500, "idr": 50,
    "ils": 50, "inr": 50, "jpy": 50, "krw": 50, "mxn": 1000, "myr": 200, "nok": 300, "nzd": 50,
    "php": 50, "pln": 200, "ron": 200, "rub": 50, "sek": 300, "sgd": 50, "thb": 1000, "zar": 50,
}  # fmt: skip
# A currency the table does not name: the USD minimum's analogue, 50 minor units.
DEFAULT_MINIMUM = 50
# Card payments take up to 12 digits (Amex 9, not enforced: the card is not known yet when
# a PaymentIntent is created).
MAX_AMOUNT = 999_999_999_999
SYMBOLS = {"usd": "$", "cad": "$", "aud": "$", "nzd": "$", "eur": "€", "gbp": "£", "jpy": "¥"}


def money(amount: int, currency: str) -> str:
    """Stripe's way of naming an amount in messages: $0.50 usd."""
    value = f"{amount}" if currency in ZERO_DECIMAL else f"{amount / 100:,.2f}"
    return f"{SYMBOLS.get(currency, '')}{value} {currency}"


def read_amount(params: Params) -> tuple[int, str]:
    """The amount and currency of a payment, refused as Stripe refuses them."""
    amount = get_int(params, "amount", required=True)
    assert amount is not None
    currency = get_str(params, "currency", required=True)
    assert currency is not None
    currency = currency.lower()
    if currency not in CURRENCIES:
        raise invalid(
            f"Invalid currency: {currency}. Stripe currently supports these currencies: "
            + ", ".join(sorted(CURRENCIES)),
            "currency",
        )
    if amount < 1:
        raise invalid("This value must be greater than or equal to 1.", "amount")
    minimum = MINIMUM_AMOUNTS.get(currency, DEFAULT_MINIMUM)
    if amount < minimum:
        raise StripeApiError(
            400,
            f"Amount must be at least {money(minimum, currency)}",
            param="amount",
            code="amount_too_small",
        )
    if amount > MAX_AMOUNT:
        raise StripeApiError(
            400,
            f"Amount must be no more than {money(MAX_AMOUNT, currency)}",
            param="amount",
            code="amount_too_large",
        )
    return amount, currency

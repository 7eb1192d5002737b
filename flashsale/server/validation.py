"""Request input checks for the HTTP API, and the JSON-describable refusal (ApiError) they raise."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flask import Request

# \Z, not $: `$` also matches before a final newline, and "tok_x\n" would pass as its own token.
TOKEN_PATTERN = re.compile(r"(tok|src|card|pm)_[A-Za-z0-9_]{1,200}\Z")
PAYMENT_METHOD_PATTERN = re.compile(r"pm_[A-Za-z0-9_]{1,200}\Z")
CHARGE_FIELDS = {
    "customer_id",
    "room_token",
    "token",
    "payment_method",
    "quantity",
    "admission_token",
}
REQUIRED_CHARGE_FIELDS = ("customer_id", "room_token")


class ApiError(Exception):
    """A refusal the client caused (or a dependency outage), rendered as {"error": {...}}."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


@dataclass(frozen=True)
class ChargeRequest:
    customer_id: str
    room_token: str
    token: str  # the card: a token (tok_...) or a PaymentMethod (pm_...), see card_source
    quantity: int
    admission_token: str | None = None  # the waiting room's, when it is on


def is_uuid(value: object) -> bool:
    """True only for the canonical lowercase form our server issues."""
    if not isinstance(value, str) or len(value) != 36:
        return False
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


def json_body(request: Request) -> object:
    """The parsed JSON body, or None when it is not JSON. Deep nesting (1,000 levels fit in the
    16 KiB limit) makes the parser raise RecursionError, which get_json(silent=True) lets out:
    that is bad input too, not a 500."""
    try:
        return request.get_json(silent=True)
    except RecursionError:
        return None


def request_fields(request: Request) -> Mapping[str, object]:
    """The body as a flat mapping: a JSON object, or a form posted like the original page did."""
    mimetype = request.mimetype
    if mimetype == "application/json":
        data = json_body(request)
        if not isinstance(data, dict):
            raise ApiError(400, "invalid_json", "the body must be a JSON object")
        return data
    if mimetype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        form = request.form
        repeated = [name for name in form if len(form.getlist(name)) > 1]
        if repeated:
            raise ApiError(400, "invalid_field", f"field {repeated[0]!r} was given more than once")
        if request.files:
            raise ApiError(400, "unknown_field", "file uploads are not accepted")
        return {name: form[name] for name in form}
    raise ApiError(
        415,
        "unsupported_media_type",
        "send application/json or application/x-www-form-urlencoded",
    )


def check_fields(data: Mapping[str, object], allowed: set[str], required: tuple[str, ...]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ApiError(400, "unknown_field", f"unknown field {unknown[0]!r}")
    for name in required:
        if name not in data:
            raise ApiError(400, "missing_field", f"missing field {name!r}")


def parse_charge(request: Request, max_quantity: int) -> ChargeRequest:
    """POST /charges input: types and bounds checked; authorisation is the caller's job."""
    data = request_fields(request)
    check_fields(data, CHARGE_FIELDS, REQUIRED_CHARGE_FIELDS)
    customer_id = data["customer_id"]
    if not is_uuid(customer_id):
        raise ApiError(400, "invalid_field", "customer_id must be the UUID the server issued")
    room_token = data["room_token"]
    if not isinstance(room_token, str) or not room_token:
        raise ApiError(400, "invalid_field", "room_token must be a non-empty string")
    token = card_source(data)
    quantity = parse_quantity(data.get("quantity", 1), max_quantity)
    admission_token = data.get("admission_token")
    if admission_token is not None and not isinstance(admission_token, str):
        raise ApiError(400, "invalid_field", "admission_token must be a string")
    return ChargeRequest(
        customer_id=str(customer_id),
        room_token=room_token,
        token=token,
        quantity=quantity,
        admission_token=admission_token,
    )


def card_source(data: Mapping[str, Any]) -> str:
    """The card the order pays with: a Stripe.js token (`token`, the seed's) or a PaymentMethod
    (`payment_method`, for PaymentIntents); exactly one of them."""
    given = [name for name in ("token", "payment_method") if name in data]
    if len(given) != 1:
        raise ApiError(
            400,
            "missing_field" if not given else "invalid_field",
            "give the card as 'token' (tok_...) or 'payment_method' (pm_...), one of them",
        )
    value = data[given[0]]
    if given == ["token"] and not (isinstance(value, str) and TOKEN_PATTERN.match(value)):
        raise ApiError(400, "invalid_field", "token must be a Stripe card token such as tok_...")
    if given == ["payment_method"] and not (
        isinstance(value, str) and PAYMENT_METHOD_PATTERN.match(value)
    ):
        raise ApiError(400, "invalid_field", "payment_method must be a PaymentMethod id, pm_...")
    return str(value)


def parse_quantity(value: object, max_quantity: int) -> int:
    # bool is an int in Python; true/false is not a quantity.
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 4:
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ApiError(400, "invalid_field", "quantity must be a whole number")
    if not 1 <= value <= max_quantity:
        raise ApiError(400, "invalid_field", f"quantity must be between 1 and {max_quantity}")
    return value

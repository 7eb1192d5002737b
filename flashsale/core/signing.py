"""Signed room tokens for customers and HMAC signatures of /notify bodies (shared secret)."""

from __future__ import annotations

import functools
import hashlib
import hmac
import time

from itsdangerous import BadSignature, URLSafeTimedSerializer

SIGNATURE_HEADER = "X-Flashsale-Signature"
_ROOM_SALT = "flashsale.room-token"
# A token issued by another server whose clock runs a little ahead looks younger than zero:
# that is clock skew, not a forgery.
CLOCK_LEEWAY_S = 30


# Built once per secret instead of three times per customer (session, socket, charge).
@functools.lru_cache(maxsize=8)
def _serializer(secret: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(secret, salt=_ROOM_SALT)


def issue_room_token(secret: str, customer_id: str) -> str:
    """A token proving the bearer was given this customer id by our server."""
    return _serializer(secret).dumps(customer_id)


def verify_room_token(secret: str, token: object, max_age_s: int) -> str | None:
    """The customer id inside a genuine, unexpired token; None for anything else."""
    if not isinstance(token, str) or not token or len(token) > 512:
        return None
    try:
        customer_id, issued = _serializer(secret).loads(token, return_timestamp=True)
    except BadSignature:
        return None
    age = time.time() - issued.timestamp()
    if not -CLOCK_LEEWAY_S <= age <= max_age_s:
        return None
    return customer_id if isinstance(customer_id, str) else None


def sign_body(secret: str, body: bytes) -> str:
    """The X-Flashsale-Signature value of a /notify body."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify_body(secret: str, body: bytes, signature: str | None) -> bool:
    if not signature:
        return False
    return hmac.compare_digest(sign_body(secret, body), signature)

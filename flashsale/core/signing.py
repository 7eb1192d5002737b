"""Signed room tokens for customers and HMAC signatures of /notify bodies (shared secret)."""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer

SIGNATURE_HEADER = "X-Flashsale-Signature"
_ROOM_SALT = "flashsale.room-token"
_ADMISSION_SALT = "flashsale.admission-token"
# A token issued by another server whose clock runs a little ahead looks younger than zero:
# that is clock skew, not a forgery.
CLOCK_LEEWAY_S = 30


# Built once per secret instead of three times per customer (session, socket, charge).
@functools.lru_cache(maxsize=8)
def _serializer(secret: str, salt: str = _ROOM_SALT) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(secret, salt=salt)


def issue_room_token(secret: str, customer_id: str) -> str:
    """A token proving the bearer was given this customer id by our server."""
    return _serializer(secret).dumps(customer_id)


def verify_room_token(secret: str, token: object, max_age_s: int) -> str | None:
    """The customer id inside a genuine, unexpired token; None for anything else."""
    return _verify(secret, _ROOM_SALT, token, max_age_s)


def issue_admission_token(secret: str, customer_id: str) -> str:
    """A token proving the waiting room admitted this customer (the hold in Redis decides
    whether the admission still stands; see core.waiting_room)."""
    return _serializer(secret, _ADMISSION_SALT).dumps(customer_id)


def verify_admission_token(secret: str, token: object, max_age_s: int) -> str | None:
    """The customer id inside a genuine, unexpired admission token; None for anything else."""
    return _verify(secret, _ADMISSION_SALT, token, max_age_s)


def _verify(secret: str, salt: str, token: object, max_age_s: int) -> str | None:
    if not isinstance(token, str) or not token or len(token) > 512:
        return None
    try:
        customer_id, issued = _serializer(secret, salt).loads(token, return_timestamp=True)
    except BadSignature:
        return None
    age = time.time() - issued.timestamp()
    if not -CLOCK_LEEWAY_S <= age <= max_age_s:
        return None
    return customer_id if isinstance(customer_id, str) else None


# A signed /notify call is good this long after it was signed (and seen once: see verify_body).
NOTIFY_MAX_AGE_S = 300


def sign_body(secret: str, body: bytes, now: float | None = None, nonce: str | None = None) -> str:
    """The X-Flashsale-Signature of a /notify body: `t=<unix>,n=<nonce>,sha256=<hex>`, the HMAC
    over "t.n.body", so a captured call cannot be replayed later or sent twice."""
    stamp = int(time.time() if now is None else now)
    nonce = nonce or secrets.token_hex(8)
    return f"t={stamp},n={nonce},sha256={_digest(secret, stamp, nonce, body)}"


def _digest(secret: str, stamp: int, nonce: str, body: bytes) -> str:
    signed = f"{stamp}.{nonce}.".encode() + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Signature:
    """A /notify signature that verified: its nonce is for the caller's seen-once check."""

    stamp: int
    nonce: str


def verify_body(
    secret: str, body: bytes, signature: str | None, now: float | None = None
) -> Signature | None:
    """The signature, when it is genuine for this body and at most NOTIFY_MAX_AGE_S old (with
    CLOCK_LEEWAY_S for a signer ahead); None otherwise. Refusing a nonce seen before is the
    caller's (it needs shared state)."""
    if not signature or len(signature) > 200:
        return None
    parts = dict(part.partition("=")[::2] for part in signature.split(","))
    try:
        stamp = int(parts.get("t", ""))
    except ValueError:
        return None
    nonce, given = parts.get("n", ""), parts.get("sha256", "")
    if not nonce or not given:
        return None
    age = (time.time() if now is None else now) - stamp
    if not -CLOCK_LEEWAY_S <= age <= NOTIFY_MAX_AGE_S:
        return None
    if not hmac.compare_digest(_digest(secret, stamp, nonce, body), given):
        return None
    return Signature(stamp, nonce)

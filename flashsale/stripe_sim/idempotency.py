"""Stripe's idempotency keys: replay a finished request, refuse a different or concurrent one.

A key remembers a fingerprint of its request and the result (status + ledger record), not the
response bytes: replays are re-rendered from the record. Keys expire oldest-first after the TTL,
swept a few per request so no request pays for a scan of the whole store.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable

from flashsale.stripe_sim.api_errors import StripeApiError, invalid

IN_FLIGHT = 0
MAX_KEY_LENGTH = 255
SWEEP_PER_CALL = 8


Work = Callable[[], Awaitable[tuple[int, object]]]


class Entry:
    __slots__ = ("fingerprint", "created", "status", "payload", "request_id")

    def __init__(self, fingerprint: int, created: float, request_id: str = "") -> None:
        self.fingerprint = fingerprint
        self.created = created
        self.request_id = request_id  # answered as Original-Request on every replay
        self.status = IN_FLIGHT
        self.payload: object = None


class IdempotencyStore:
    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}
        self.order: deque[tuple[float, str]] = deque()

    def __len__(self) -> int:
        return len(self.entries)

    def sweep(self, now: float, ttl_s: float) -> None:
        """Forget keys older than the TTL; creation order makes the oldest ones the first."""
        order, entries = self.order, self.entries
        for _ in range(SWEEP_PER_CALL):
            if not order or order[0][0] + ttl_s > now:
                return
            created, key = order.popleft()
            entry = entries.get(key)
            if entry is not None and entry.created == created and entry.status != IN_FLIGHT:
                del entries[key]

    def lookup(self, key: str, now: float, ttl_s: float) -> Entry | None:
        entry = self.entries.get(key)
        if entry is not None and entry.created + ttl_s <= now and entry.status != IN_FLIGHT:
            del self.entries[key]  # expired but not yet swept
            return None
        return entry

    def begin(self, key: str, fingerprint: int, now: float, request_id: str = "") -> Entry:
        entry = Entry(fingerprint, now, request_id)
        self.entries[key] = entry
        self.order.append((now, key))
        return entry

    def finish(self, key: str, entry: Entry, status: int, payload: object) -> None:
        entry.status = status
        entry.payload = payload

    def abandon(self, key: str, entry: Entry) -> None:
        """Stripe saves no result when a request failed validation: the key stays usable."""
        if self.entries.get(key) is entry:
            del self.entries[key]


class Idempotency:
    """Stripe's rules over the store: replay a finished key, 400 on other params, 409 while the
    first request is in flight; counts each case for /_sim/stats."""

    def __init__(self) -> None:
        self.store = IdempotencyStore()
        self.counts: Counter[str] = Counter()

    async def run(
        self, key: str, path: str, params: object, ttl_s: float, work: Work, request_id: str
    ) -> tuple[int, object, str]:
        """(status, payload, original request id): the saved result of `key` (a replay: the
        id is not `request_id`), or `work` run once under it."""
        if not key or len(key) > MAX_KEY_LENGTH:
            raise invalid(
                "Invalid Idempotency-Key: it must be between 1 and 255 characters long.",
                "Idempotency-Key",
            )
        now = time.monotonic()
        store = self.store
        store.sweep(now, ttl_s)
        fingerprint = hash((path, freeze(params)))
        entry = store.lookup(key, now, ttl_s)
        if entry is not None:
            if entry.status == IN_FLIGHT:
                self.counts["idempotency_conflicts"] += 1
                raise StripeApiError(
                    409,
                    "There is currently another in-progress request using this Idempotent Key "
                    "(that probably means you submitted twice, and the other request is still "
                    f"going through): {key}. Please try again later.",
                    type="idempotency_error",
                    code="idempotency_key_in_use",
                    headers={"Stripe-Should-Retry": "true"},
                )
            if entry.fingerprint != fingerprint:
                self.counts["idempotency_mismatches"] += 1
                raise StripeApiError(
                    400,
                    "Keys for idempotent requests can only be used with the same parameters they "
                    f"were first used with. Try using a key other than '{key}' if you meant to "
                    "execute a different request.",
                    type="idempotency_error",
                )
            self.counts["idempotent_replays"] += 1
            return entry.status, entry.payload, entry.request_id
        entry = store.begin(key, fingerprint, now, request_id)
        saved = False
        try:
            status, payload = await work()
            # Stripe saves a result once the endpoint ran: successes and card declines alike.
            store.finish(key, entry, status, payload)
            saved = True
        finally:
            if not saved:
                store.abandon(key, entry)
        return status, payload, request_id


def freeze(value: object) -> object:
    """A hashable, order-free form of parsed params: equal params, equal fingerprint."""
    if isinstance(value, dict):
        return frozenset((name, freeze(item)) for name, item in value.items())
    if isinstance(value, list):
        return tuple(freeze(item) for item in value)
    return value

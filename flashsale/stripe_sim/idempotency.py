"""Stripe's idempotency keys: replay a finished request, refuse a different or concurrent one.

A key remembers a fingerprint of its request and the result (status + ledger record), not the
response bytes: replays are re-rendered from the record. Keys expire oldest-first after the TTL,
swept a few per request so no request pays for a scan of the whole store.
"""

from __future__ import annotations

from collections import deque

IN_FLIGHT = 0
MAX_KEY_LENGTH = 255
SWEEP_PER_CALL = 8


class Entry:
    __slots__ = ("fingerprint", "created", "status", "payload")

    def __init__(self, fingerprint: int, created: float) -> None:
        self.fingerprint = fingerprint
        self.created = created
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

    def begin(self, key: str, fingerprint: int, now: float) -> Entry:
        entry = Entry(fingerprint, now)
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

"""Events: what happened to the account's objects, listed at /v1/events and sent to webhooks.

An event keeps a snapshot of its object as it was when the event happened (a shallow copy of
the record, rendered only when asked), so a later change never rewrites an earlier event.
"""

from __future__ import annotations

import copy
import time
from collections import Counter
from collections.abc import Callable

from flashsale.stripe_sim.api_errors import no_such
from flashsale.stripe_sim.auth import Caller
from flashsale.stripe_sim.endpoints import Result
from flashsale.stripe_sim.follow_ups import Dispute, FraudWarning
from flashsale.stripe_sim.intent_records import PaymentIntent, render_payment_intent
from flashsale.stripe_sim.ledger import (
    Charge,
    Refund,
    Timeline,
    new_id,
    render_charge,
    render_refund,
)
from flashsale.stripe_sim.listing import LIST_PARAMS, Window, list_body, page_of, read_window
from flashsale.stripe_sim.params import Params, get_str, refuse_unknown
from flashsale.stripe_sim.responses import API_VERSION

Snapshot = PaymentIntent | Charge | Refund | Dispute | FraudWarning
Listener = Callable[["Event"], None]


class Event:
    __slots__ = ("id", "type", "at", "snapshot")

    def __init__(self, id: str, type: str, at: float, snapshot: Snapshot) -> None:
        self.id = id
        self.type = type
        self.at = at  # when it happened (the API shows whole seconds; lags use this)
        self.snapshot = snapshot

    @property
    def created(self) -> int:
        return int(self.at)


def render_object(snapshot: Snapshot) -> dict[str, object]:
    if isinstance(snapshot, PaymentIntent):
        return render_payment_intent(snapshot)
    if isinstance(snapshot, Charge):
        return render_charge(snapshot)
    if isinstance(snapshot, Refund):
        return render_refund(snapshot)
    return snapshot.render()


def render_event(event: Event, pending_webhooks: int = 0) -> dict[str, object]:
    return {
        "id": event.id,
        "object": "event",
        "api_version": API_VERSION,
        "created": event.created,
        "data": {"object": render_object(event.snapshot)},
        "livemode": False,
        "pending_webhooks": pending_webhooks,
        "request": {"id": None, "idempotency_key": None},
        "type": event.type,
    }


class Events:
    """The account's event log; each published event also goes to every listener (webhooks)."""

    def __init__(self) -> None:
        self.log: Timeline[Event] = Timeline()
        self.by_type: Counter[str] = Counter()
        self.listeners: list[Listener] = []

    def publish(self, type: str, record: Snapshot) -> Event:
        event = Event(new_id("evt_"), type, time.time(), copy.copy(record))
        self.log.add(event.id, event)
        self.by_type[type] += 1
        for listener in self.listeners:
            listener(event)
        return event

    def get_event(self, params: Params, ident: str | None, caller: Caller) -> Result:
        refuse_unknown(params, {"expand"})
        assert ident is not None
        event = self.log.get(ident)
        if event is None:
            raise no_such("event", ident, "id")
        return 200, render_event(event)

    def list_events(self, params: Params, ident: str | None, caller: Caller) -> Result:
        """Newest first; `type` filters (a trailing `*` matches a prefix, as in Stripe)."""
        refuse_unknown(params, LIST_PARAMS | {"type"})
        window = read_window(params, self.log, "event")
        wanted = get_str(params, "type")
        if wanted is None:
            page, has_more = page_of(self.log, window)
        else:
            page, has_more = self.of_type(wanted, window)
        return 200, list_body(page, has_more, "/v1/events", render_event)

    def of_type(self, wanted: str, window: Window) -> tuple[list[Event], bool]:
        """A page of one type of event: a scan from the cursor, newest first."""
        prefix = wanted[:-1] if wanted.endswith("*") else None
        records, index, limit = self.log.records, self.log.index, window.limit

        def matches(event: Event) -> bool:
            return event.type.startswith(prefix) if prefix is not None else event.type == wanted

        found: list[Event] = []
        if window.before is not None:
            for position in range(max(window.lo, index[window.before] + 1), window.hi):
                if matches(records[position]):
                    found.append(records[position])
                    if len(found) > limit:
                        break
            return found[:limit][::-1], len(found) > limit
        end = window.hi if window.after is None else min(window.hi, index[window.after])
        for position in range(end - 1, window.lo - 1, -1):
            if matches(records[position]):
                found.append(records[position])
                if len(found) > limit:
                    break
        return found[:limit], len(found) > limit

"""Stripe's list endpoints, written once: limit, cursors and `created` filters over a Timeline.

Records are kept in creation order, so a `created[gte|gt|lte|lt]` window is two binary searches
and a page is a slice: O(limit + log n) at any ledger size.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from flashsale.stripe_sim.api_errors import invalid, no_such
from flashsale.stripe_sim.ledger import Timeline
from flashsale.stripe_sim.params import INTEGER, Params, get_int, get_str

LIST_PARAMS = frozenset({"limit", "starting_after", "ending_before", "created", "expand"})
CREATED_BOUNDS = ("gt", "gte", "lt", "lte")
Record = TypeVar("Record")


class Window:
    """The listing asked for: a page size, a cursor and the `created` range (positions)."""

    def __init__(self, limit: int, after: str | None, before: str | None, lo: int, hi: int):
        self.limit = limit
        self.after = after
        self.before = before
        self.lo = lo
        self.hi = hi


def read_window(params: Params, timeline: Timeline[Any], kind: str) -> Window:
    limit = get_int(params, "limit")
    limit = 10 if limit is None else limit
    if not 1 <= limit <= 100:
        raise invalid(
            "This value must be greater than or equal to 1 and less than or equal to 100.",
            "limit",
        )
    after = get_str(params, "starting_after")
    before = get_str(params, "ending_before")
    if after and before:
        raise invalid(
            "You may only specify one of these parameters: ending_before, starting_after.",
            "ending_before",
        )
    for name, cursor in (("starting_after", after), ("ending_before", before)):
        if cursor is not None and cursor not in timeline:
            raise no_such(kind, cursor, name, 400)
    lo, hi = created_range(params.get("created"), timeline)
    return Window(limit, after, before, lo, hi)


def created_range(value: object, timeline: Timeline[Any]) -> tuple[int, int]:
    """Positions [lo, hi) of the records whose `created` is within the filter."""
    records = timeline.records
    if value is None or value == "":
        return 0, len(records)
    bounds: dict[str, int] = {}
    if isinstance(value, str):
        bounds = {"gte": read_time(value, "created"), "lte": read_time(value, "created")}
    elif isinstance(value, dict):
        for name, given in value.items():
            if name not in CREATED_BOUNDS:
                raise invalid(f"Received unknown parameter: created[{name}]", f"created[{name}]")
            bounds[name] = read_time(given, f"created[{name}]")
    else:
        raise invalid("Invalid created: an integer or a hash of gt, gte, lt, lte", "created")

    def created(record: Any) -> int:
        return int(record.created)

    lo, hi = 0, len(records)
    if "gte" in bounds:
        lo = max(lo, bisect.bisect_left(records, bounds["gte"], key=created))
    if "gt" in bounds:
        lo = max(lo, bisect.bisect_right(records, bounds["gt"], key=created))
    if "lte" in bounds:
        hi = min(hi, bisect.bisect_right(records, bounds["lte"], key=created))
    if "lt" in bounds:
        hi = min(hi, bisect.bisect_left(records, bounds["lt"], key=created))
    return lo, max(lo, hi)


def read_time(value: object, param: str) -> int:
    if not isinstance(value, str) or not INTEGER.match(value):
        raise invalid(f"Invalid integer: {value}", param)
    return int(value)


def page_of(timeline: Timeline[Record], window: Window) -> tuple[list[Record], bool]:
    return timeline.page(window.limit, window.after, window.before, window.lo, window.hi)


def page_among(
    timeline: Timeline[Record], subset_ids: Iterable[str], window: Window
) -> tuple[list[Record], bool]:
    """One page, newest first, of a few records of `timeline` (one payment's refunds, say).

    The subset is small, so it is scanned; cursors and `created` apply as on the whole list.
    """
    lo, hi = window.lo, window.hi
    if window.after is not None:
        hi = min(hi, timeline.index[window.after])
    if window.before is not None:
        lo = max(lo, timeline.index[window.before] + 1)
    positions = sorted(p for p in map(timeline.index.__getitem__, subset_ids) if lo <= p < hi)
    if window.before is not None:
        chosen, has_more = positions[: window.limit], len(positions) > window.limit
    else:
        chosen, has_more = positions[-window.limit :], len(positions) > window.limit
    return [timeline.records[p] for p in reversed(chosen)], has_more


def list_body(
    records: list[Record], has_more: bool, url: str, render: Callable[[Record], object]
) -> dict[str, object]:
    return {
        "object": "list",
        "data": [render(record) for record in records],
        "has_more": has_more,
        "url": url,
    }

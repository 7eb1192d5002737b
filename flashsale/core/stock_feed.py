"""Coalesced `stock` broadcasts: at most one per SKU per interval, always the count Redis holds."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from flashsale.core import events

log = logging.getLogger("flashsale.stock")

# A flash sale changes stock hundreds of times a second and every broadcast costs one frame per
# watching socket, so changes are coalesced: the first change is sent at once, later ones at most
# once per interval (the last one is never dropped). A second is live enough for a stock counter.
DEFAULT_INTERVAL_S = 1.0


class StockFeed:
    """Turns "stock of sku changed" calls into throttled broadcasts of the current count.

    The count is read when the broadcast goes out, not taken from the change, so a coalesced
    burst ends with the true number and out-of-order changes cannot leave a stale one on screen.
    Thread-safe; under gevent's monkey patching the timers are greenlets.
    """

    def __init__(
        self,
        read_stock: Callable[[str], int],
        publish: Callable[[str, dict[str, Any]], None],
        interval_s: float = DEFAULT_INTERVAL_S,
    ) -> None:
        self._read_stock = read_stock
        self._publish = publish
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._scheduled: set[str] = set()
        self._last_sent: dict[str, float] = {}

    def changed(self, sku: str) -> None:
        """Note a change; a broadcast follows within the interval (at once if none went lately)."""
        with self._lock:
            if sku in self._scheduled:
                return
            self._scheduled.add(sku)
            last = self._last_sent.get(sku)
        delay = 0.0 if last is None else max(0.0, last + self._interval_s - time.monotonic())
        timer = threading.Timer(delay, self._flush, args=(sku,))
        timer.daemon = True
        timer.start()

    def _flush(self, sku: str) -> None:
        # Unscheduled before reading, so a change during the read schedules one more broadcast.
        with self._lock:
            self._scheduled.discard(sku)
            self._last_sent[sku] = time.monotonic()
        try:
            self._publish(sku, events.stock(sku, self._read_stock(sku)))
        except Exception as error:  # a lost counter update must never break a charge
            log.warning("stock broadcast for %s failed: %s", sku, error)

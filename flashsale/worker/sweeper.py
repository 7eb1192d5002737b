"""Pending-order sweeper: re-queue orders that were placed but whose charge task never ran."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from flashsale.core import orders

log = logging.getLogger("flashsale.worker")


@dataclass
class PendingSweeper:
    """Every interval, re-queues create_charge for orders pending longer than after_s.

    Runs in every worker; the claim in core.orders is atomic, so each stale order is sent by
    one of them. after_s defaults to the visibility timeout: by then a task lost with a dead
    worker would have been redelivered, so what is still pending was most likely never queued.
    A duplicate costs one idempotent Stripe replay at worst, never a second charge.
    """

    client: redis.Redis
    send: Callable[[str], None]
    after_s: float
    _stop: threading.Event = field(init=False, default_factory=threading.Event)

    def sweep_once(self) -> list[str]:
        """Re-queue the stale pending orders now; returns the ids sent."""
        sent: list[str] = []
        for order_id in orders.claim_stale_pending(self.client, self.after_s):
            try:
                self.send(order_id)
            except Exception as error:  # noqa: BLE001 - the broker is away: claimed ones return
                log.warning("sweeper could not re-queue order %s: %s", order_id, error)
                break
            sent.append(order_id)
        if sent:
            log.warning(
                "sweeper re-queued %d orders pending for over %gs: %s",
                len(sent),
                self.after_s,
                " ".join(sent[:10]) + (" ..." if len(sent) > 10 else ""),
            )
        return sent

    def run(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            try:
                self.sweep_once()
            except redis.RedisError as error:
                # Redis is away; the orders wait there for it, and so do we.
                log.debug("sweeper: Redis unavailable: %s", error)

    def start(self) -> threading.Thread:
        interval_s = max(0.5, min(10.0, self.after_s / 4))
        thread = threading.Thread(
            target=self.run, args=(interval_s,), name="flashsale-sweeper", daemon=True
        )
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()

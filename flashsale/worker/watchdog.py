"""Consumer watchdog: exit when charges wait in our queue but this worker stopped taking them."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from flashsale.core import jobs

log = logging.getLogger("flashsale.worker")

# Distinct from Celery's own failure code (1), so a supervisor's log says which guard fired.
STALLED_EXIT_CODE = 3


@dataclass
class ConsumerWatchdog:
    """Declares the consumer stalled when tasks wait in the queue, the broker answers, and no
    task started or finished here for stall_s.

    Celery's Redis consumer can lose its connection and come back without consuming (celery
    #8030, #9054); the process stays up and looks healthy. A worker that exits instead is
    restarted by its supervisor (rehearse, systemd, Kubernetes) and its unacknowledged tasks
    return after the visibility timeout. stall_s must exceed the longest single task, or a
    worker whose threads are all in slow Stripe calls would count as stalled.
    """

    client: redis.Redis
    stall_s: float
    queue: str = jobs.QUEUE
    clock: Callable[[], float] = time.monotonic
    _last_progress: float = field(init=False)
    _backlog_since: float | None = field(init=False, default=None)
    _stop: threading.Event = field(init=False, default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._last_progress = self.clock()

    def progress(self, **_: object) -> None:
        """Celery task_prerun / task_postrun receiver: this worker is still taking work."""
        self._last_progress = self.clock()

    def check(self) -> str | None:
        """Why the consumer counts as stalled now, or None while it is fine."""
        try:
            waiting = int(self.client.llen(self.queue))  # type: ignore[arg-type]
        except redis.RedisError:
            # The broker is away: reconnecting is Celery's job, and not a stall of ours.
            self._backlog_since = None
            return None
        now = self.clock()
        if waiting == 0:
            self._backlog_since = None
            return None
        if self._backlog_since is None:
            self._backlog_since = now
        idle = now - max(self._last_progress, self._backlog_since)
        if idle < self.stall_s:
            return None
        return f"{waiting} tasks wait in {self.queue}; none started or ended here for {idle:.0f}s"

    def run(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            reason = self.check()
            if reason is not None:
                message = (
                    f"CONSUMER STALLED, exiting with code {STALLED_EXIT_CODE} so a supervisor "
                    f"restarts this worker: {reason}"
                )
                log.critical(message)
                # Not a warm shutdown: it would wait on the very consumer that is stuck.
                # Unacknowledged tasks return to the queue after the visibility timeout.
                os._exit(STALLED_EXIT_CODE)

    def start(self) -> threading.Thread:
        interval_s = max(0.2, min(5.0, self.stall_s / 4))
        thread = threading.Thread(
            target=self.run, args=(interval_s,), name="flashsale-watchdog", daemon=True
        )
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()

"""Celery's worker consumer, with buffered task events sent in batches on a short timer."""

from __future__ import annotations

from typing import Any

from celery.worker.consumer import Consumer as CeleryConsumer

# Task events are for watchers (Flower, `celery events`), for whom a tenth of a second is live.
# Celery sends the buffer on the next turn of the event loop after every event, which under load
# is one Redis PUBLISH per event or two: ~4 publishes per order for its 6 events.
EVENT_FLUSH_S = 0.1


class Consumer(CeleryConsumer):
    """Sends buffered task events at most every EVENT_FLUSH_S (Celery's `worker_consumer`).

    Events still go at once when the buffer holds 24 (Celery's limit) and when the worker stops.
    Events are buffered from the pool's threads: they only ask the event loop, with call_soon
    as Celery does, to set the timer; the timer and the flush run on the loop's own thread.
    """

    _event_flush_pending = False

    def on_send_event_buffered(self) -> None:
        if self.hub is None or self._event_flush_pending:
            return
        self._event_flush_pending = True
        self.hub.call_soon(self._schedule_event_flush)

    def _schedule_event_flush(self) -> None:
        hub: Any = self.hub
        hub.call_later(EVENT_FLUSH_S, self._flush_buffered_events)

    def _flush_buffered_events(self) -> None:
        # Cleared first: an event buffered during the flush schedules the next one.
        self._event_flush_pending = False
        self._flush_events()

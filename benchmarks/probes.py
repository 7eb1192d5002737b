"""The server's event-loop stall as a customer feels it: /healthz answered how late, probed
from a thread every `every_s` (an answer waits as long as the server's loop is blocked)."""

from __future__ import annotations

import threading
import time

import httpx


class HealthProber:
    """/healthz every `every_s` until stopped; a failed probe counts its wait and a failure."""

    def __init__(self, url: str, every_s: float = 0.1) -> None:
        self.url = url
        self.every_s = every_s
        self.waits: list[tuple[float, float]] = []  # (unix time sent, seconds to answer)
        self.failures = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self.stopping.wait(self.every_s):
                sent, start = time.time(), time.monotonic()
                try:
                    client.get(f"{self.url}/healthz")
                except httpx.HTTPError:
                    self.failures += 1
                self.waits.append((sent, time.monotonic() - start))

    def __enter__(self) -> HealthProber:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopping.set()
        self.thread.join(timeout=35)

    def between(self, start: float, end: float = float("inf")) -> list[float]:
        """The waits of the probes sent between two unix times."""
        return [wait for sent, wait in self.waits if start <= sent <= end]

    def worst_after(self, since: float) -> float | None:
        waits = self.between(since)
        return max(waits) if waits else None

"""What a shard's customers share while they play: one pool, the run clock, the doors, gauges."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flashsale.loadgen.client.http import HttpClient
from flashsale.loadgen.scenario import DEFAULT_PATIENCE, TEST_CARDS, TestCard
from flashsale.units import Spread


@dataclass
class Target:
    """Where customers go and how they behave there."""

    url: str
    tokenize: str = "auto"  # auto | raw | test-tokens (customer.tokenize_with_alias)
    timeout_s: float = 30.0
    fallback: bool = True
    patience: Spread = DEFAULT_PATIENCE  # a queued customer leaves after waiting a draw of it
    retry_after_decline: float = 0.0  # share of declined customers who pay with another card


class Doors:
    """Doors-open mode: customers get ready, then all submit the moment the last one is ready.

    In a multi-process run each process only knows its own customers: `on_ready` then tells
    the coordinator, which opens every process's doors at one agreed instant (`open(at=)`).
    """

    def __init__(self, on_ready: Callable[[], None] | None = None) -> None:
        self.expected: int | None = None  # known once every arrival has been dispatched
        self.ready = 0
        self.dropped_out = 0
        self.opened = asyncio.Event()
        self.opened_at: float | None = None
        self.last_ready_at: float | None = None
        self.on_ready = on_ready
        self.all_ready = False

    def arrive_ready(self) -> None:
        self.ready += 1
        self.last_ready_at = time.perf_counter()
        self.check()

    def drop_out(self) -> None:
        self.dropped_out += 1
        self.check()

    def check(self) -> None:
        if self.opened.is_set() or self.expected is None or self.all_ready:
            return
        if self.ready + self.dropped_out >= self.expected:
            if self.on_ready is None:
                self.open()
            else:
                self.all_ready = True
                self.on_ready()

    def open(self, at: float | None = None) -> None:
        """Open now, or record the agreed instant `at` (perf_counter) that was just reached."""
        if not self.opened.is_set():
            self.opened_at = time.perf_counter() if at is None else at
            self.opened.set()


@dataclass
class Kit:
    """What every customer of a run shares: the connection pool, the run clock, live gauges."""

    target: Target
    http: HttpClient
    clock0: float
    doors: Doors | None = None
    in_flight: Counter[str] = field(default_factory=Counter)
    sockets: int = 0
    peak_sockets: int = 0
    last_sale: dict[str, Any] | None = None
    submit_starts: list[float] = field(default_factory=list)
    # A declined customer who tries again pays with this card; the draw is seeded per shard.
    retry_card: TestCard | None = TEST_CARDS["visa"]
    rng: random.Random = field(default_factory=lambda: random.Random(0))

    def now(self) -> float:
        """Seconds on the run clock."""
        return time.perf_counter() - self.clock0


def create_kit(target: Target, clock0: float, doors: Doors | None = None) -> Kit:
    """One keep-alive pool for every customer's requests, unbounded in connections.

    The generator's own client (`wire`), not httpx (which the rest of flashsale uses) nor
    aiohttp: on the hot path those cost most of a journey's CPU (benchmarks/RESULTS.md
    section 3). Idle connections close after client.http.IDLE_S: a doors-open burst opens one per
    customer, and they would otherwise stay open beside the customers' websockets.
    """
    return Kit(target=target, http=HttpClient(), clock0=clock0, doors=doors)


async def close_kit(kit: Kit) -> None:
    await kit.http.close()

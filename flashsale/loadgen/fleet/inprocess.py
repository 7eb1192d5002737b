"""The in-process fleet: one shard on the coordinator's own event loop, linked by queues.

What `--processes 1` runs: the same shard protocol as the other fleets, with its messages
handed over as objects (nothing encoded), the engine recording straight into the coordinator's
stats (no deltas to copy), and the Engine kept for callers that want it.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from flashsale.loadgen.engine import Engine
from flashsale.loadgen.fleet.protocol import Command, Message, run_shard
from flashsale.loadgen.stats import RunStats

WAIT_S = 0.25  # messages() waits at most this long: the coordinator's frame interval
TICK_S = 0.25  # the engine records into the coordinator's stats: a tick is only its gauges


class QueueLink:
    """The shard's end: asyncio queues, no copies."""

    def __init__(self, up: asyncio.Queue[Message], down: asyncio.Queue[Command]) -> None:
        self.up = up
        self.down = down

    async def send(self, message: Message) -> None:
        self.up.put_nowait(message)

    async def receive(self) -> Command:
        return await self.down.get()


class InProcess:
    """The coordinator's end of one shard played on this event loop."""

    kind = "in-process"
    start_lead_s = 0.0
    count = 1

    def __init__(self, keep_journeys: bool = False) -> None:
        self.keep_journeys = keep_journeys
        self.up: asyncio.Queue[Message] = asyncio.Queue()
        self.down: asyncio.Queue[Command] = asyncio.Queue()
        self.engines: list[Engine] = []
        self.task: asyncio.Task[None] | None = None

    @property
    def engine(self) -> Engine:
        """The shard's engine, once it has started."""
        return self.engines[0]

    async def start(self, spec: dict[str, Any], stats: RunStats) -> None:
        self.task = asyncio.create_task(
            run_shard(
                spec,
                0,
                1,
                QueueLink(self.up, self.down),
                tick_s=TICK_S,
                engines=self.engines,
                keep_journeys=self.keep_journeys,
                stats=stats,
            )
        )

    async def messages(self) -> list[Message]:
        found: list[Message] = []
        if self.up.empty():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(WAIT_S):
                    found.append(await self.up.get())
        while not self.up.empty():
            found.append(self.up.get_nowait())
        return found

    async def command(self, shard: int, command: Command) -> None:
        self.down.put_nowait(command)

    def gone(self, shard: int) -> str | None:
        if self.task is not None and self.task.done() and not self.task.cancelled():
            error = self.task.exception()
            return f"the shard ended: {error!r}" if error else None
        return None

    async def close(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

"""The local-processes fleet: N spawned generator processes, each playing one shard.

Both ends are here: the coordinator's (LocalProcesses) and the child's (process_main on a
QueueLink), joined by multiprocessing queues that carry the protocol as JSON data.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import signal
import time
from multiprocessing.queues import Queue
from queue import Empty
from typing import Any

from flashsale.loadgen.client import loop
from flashsale.loadgen.fleet.protocol import Command, Message, decode, encode, run_shard
from flashsale.loadgen.stats import RunStats

TICK_S = 0.5  # how often a shard sends its interval stats (each tick costs it ~15 ms to encode)
POLL_S = 0.02


class QueueLink:
    """The line of a local generator process: multiprocessing queues, polled without threads."""

    def __init__(self, up: Queue[Any], down: Queue[Any]) -> None:
        self.up = up
        self.down = down

    async def send(self, message: Message) -> None:
        self.up.put(encode(message))  # a feeder thread pickles and writes it: no waiting

    async def receive(self) -> Command:
        while True:
            try:
                return decode(dict(self.down.get_nowait()))  # type: ignore[return-value]
            except Empty:
                await asyncio.sleep(POLL_S)


def process_main(spec: dict[str, Any], index: int, count: int, up: Any, down: Any) -> None:
    """Entry point of a local generator process (multiprocessing spawn)."""
    # The terminal's Ctrl-C reaches the whole process group; the coordinator turns it into
    # one Stop for every shard, so each still sends its final numbers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    loop.run(run_shard(spec, index, count, QueueLink(up, down), tick_s=TICK_S))


class LocalProcesses:
    """N generator processes on this machine (spawned: no inherited loop or sockets)."""

    kind = "process"
    start_lead_s = 0.3

    def __init__(self, count: int) -> None:
        self.count = count
        self.context = multiprocessing.get_context("spawn")
        self.up: Any = self.context.Queue()
        self.downs: list[Any] = [self.context.Queue() for _ in range(count)]
        self.processes: list[Any] = []

    async def start(self, spec: dict[str, Any], stats: RunStats) -> None:
        for index in range(self.count):
            process = self.context.Process(
                target=process_main,
                args=(spec, index, self.count, self.up, self.downs[index]),
                name=f"loadgen-shard-{index}",
                daemon=True,
            )
            process.start()
            self.processes.append(process)

    async def messages(self) -> list[Message]:
        found: list[Message] = []
        while True:
            try:
                found.append(decode(self.up.get_nowait()))  # type: ignore[arg-type]
            except Empty:
                break
        if not found:
            await asyncio.sleep(POLL_S)
        return found

    async def command(self, shard: int, command: Command) -> None:
        self.downs[shard].put(encode(command))

    def gone(self, shard: int) -> str | None:
        process = self.processes[shard] if shard < len(self.processes) else None
        if process is not None and not process.is_alive():
            return f"process exited with code {process.exitcode}"
        return None

    async def close(self) -> None:
        deadline = time.monotonic() + 10
        for process in self.processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join(1)

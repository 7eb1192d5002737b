"""One shard of a multi-process run: plays every N-th customer and streams its stats upstream."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import os
import signal
import socket
import time
from multiprocessing.queues import Queue
from queue import Empty
from typing import Any, Protocol

from rich.console import Console

from flashsale.loadgen import loop
from flashsale.loadgen.customer import CLIENT_LOG, Doors
from flashsale.loadgen.runner import LoadConfig, Runner, RunResult
from flashsale.loadgen.scenario import ArrivalRate, Schedule, parse_cards
from flashsale.loadgen.stats import RunStats, encode, summarize

TICK_S = 0.5  # how often a shard sends its interval stats (each tick costs it ~15 ms to encode)
POLL_S = 0.02


class Link(Protocol):
    """A shard's two-way line to the coordinator: messages up, commands down."""

    async def send(self, message: dict[str, Any]) -> None: ...

    async def receive(self) -> dict[str, Any]: ...


class QueueLink:
    """The line of a local generator process: multiprocessing queues, polled without threads."""

    def __init__(self, up: Queue[Any], down: Queue[Any]) -> None:
        self.up = up
        self.down = down

    async def send(self, message: dict[str, Any]) -> None:
        self.up.put(message)  # a feeder thread pickles and writes it: the loop does not wait

    async def receive(self) -> dict[str, Any]:
        while True:
            try:
                return dict(self.down.get_nowait())
            except Empty:
                await asyncio.sleep(POLL_S)


def config_to_spec(config: LoadConfig) -> dict[str, Any]:
    """What a shard needs of the run's config, as JSON data (it travels through Celery too)."""
    return {
        "url": config.url,
        "schedule": dataclasses.asdict(config.schedule),
        "cards": config.cards.spec(),
        "tokenize": config.tokenize,
        "timeout_s": config.timeout_s,
        "max_in_flight": config.max_in_flight,
        "interval_s": config.interval_s,
        "max_lag_s": config.max_lag_s,
        "max_cpu_percent": config.max_cpu_percent,
        "max_release_lag_s": config.max_release_lag_s,
        "max_release_lag_ratio": config.max_release_lag_ratio,
        "fallback": config.fallback,
    }


def config_from_spec(spec: dict[str, Any]) -> LoadConfig:
    schedule = dict(spec["schedule"])
    rate = schedule.pop("rate")
    return LoadConfig(
        url=spec["url"],
        schedule=Schedule(rate=ArrivalRate(**rate) if rate else None, **schedule),
        cards=parse_cards(spec["cards"], spec["tokenize"]),
        tokenize=spec["tokenize"],
        timeout_s=spec["timeout_s"],
        max_in_flight=spec["max_in_flight"],
        interval_s=spec["interval_s"],
        max_lag_s=spec["max_lag_s"],
        max_cpu_percent=spec["max_cpu_percent"],
        max_release_lag_s=spec["max_release_lag_s"],
        max_release_lag_ratio=spec["max_release_lag_ratio"],
        fallback=spec["fallback"],
        dashboard=False,
    )


class ShardRunner(Runner):
    """A Runner that plays customers index % count == index, on a clock shared by all shards.

    Its stats go upstream as deltas (lossless to merge); it draws nothing and writes no
    report. Ctrl-C belongs to the coordinator, which sends `stop`.
    """

    handle_signals = False

    def __init__(
        self, config: LoadConfig, link: Link, index: int, count: int, start_wall: float
    ) -> None:
        super().__init__(config, Console(file=io.StringIO()))
        self.link = link
        self.shard_index = index
        self.shard_count = count
        self.start_wall = start_wall
        self.final: dict[str, Any] | None = None
        self.openers: set[asyncio.Task[None]] = set()

    async def run(self) -> RunResult:
        listener = asyncio.create_task(self.listen())
        try:
            result = await super().run()
        finally:
            listener.cancel()
            for opener in self.openers:
                opener.cancel()
        assert self.final is not None
        await self.link.send(self.final)
        return result

    async def listen(self) -> None:
        while True:
            command = await self.link.receive()
            if command.get("stop"):
                self.interrupt()
            elif "open_at" in command:
                opener = asyncio.create_task(self.open_doors_at(float(command["open_at"])))
                self.openers.add(opener)

    async def wait_for_start(self) -> None:
        delay = self.start_wall - time.time()
        self.clock0 = time.perf_counter() + delay
        if delay > 0:
            await asyncio.sleep(delay)

    def make_doors(self) -> Doors:
        return Doors(on_ready=self.all_ready)

    def all_ready(self) -> None:
        doors = self.kit.doors if self.kit else None
        message = {
            "kind": "ready",
            "shard": self.shard_index,
            "ready": doors.ready if doors else 0,
            "dropped_out": doors.dropped_out if doors else 0,
        }
        task = asyncio.get_running_loop().create_task(self.link.send(message))
        self.openers.add(task)  # held, or the loop may drop the task before it runs

    async def open_doors_at(self, wall: float) -> None:
        """Every shard opens at the same wall-clock instant; waking late is charged as lag."""
        instant = time.perf_counter() + (wall - time.time())
        delay = instant - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if self.kit is not None and self.kit.doors is not None:
            self.kit.doors.open(at=instant)

    async def monitor(self, live: Any) -> None:
        cpu_mark = (time.perf_counter(), time.process_time())
        while True:
            await asyncio.sleep(TICK_S)
            now = time.perf_counter()
            wall, cpu = now - cpu_mark[0], time.process_time() - cpu_mark[1]
            if wall >= 1.0:
                self.window_cpu = 100 * cpu / wall
                cpu_mark = (now, time.process_time())
            await self.link.send(self.tick("tick"))
            self.window_loop_lag = 0.0

    def tick(self, kind: str) -> dict[str, Any]:
        """The stats since the last tick (then forgotten here) and the live gauges."""
        self.stats.client_log.update(CLIENT_LOG.drain())
        delta, self.stats = self.stats, RunStats(interval_s=self.config.interval_s)
        kit = self.kit
        doors = kit.doors if kit else None
        return {
            "kind": kind,
            "shard": self.shard_index,
            "stats": delta.to_dict(),
            "gauges": {
                "arrived": self.arrived,
                "in_flight": dict(kit.in_flight) if kit else {},
                "sockets": kit.sockets if kit else 0,
                "peak_sockets": kit.peak_sockets if kit else 0,
                "cpu_percent": self.window_cpu,
                "loop_lag_ms": self.window_loop_lag * 1000,
                "schedule_lag_ms": self.current_lag * 1000,
                "max_schedule_lag_ms": self.max_schedule_lag * 1000,
                "stage": self.stage() if kit else "starting",
                "ready": doors.ready if doors else None,
                "dispatch_done": self.dispatch_done,
                "last_sale": kit.last_sale if kit else None,
            },
        }

    def finish(self) -> RunResult:
        elapsed = time.perf_counter() - self.clock0
        cpu_s = time.process_time() - self.cpu0
        kit = self.kit
        doors = kit.doors if kit else None
        starts = kit.submit_starts if kit else []
        message = self.tick("done")
        message["summary"] = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "elapsed_s": elapsed,
            "cpu_s": cpu_s,
            "cpu_percent": 100 * cpu_s / elapsed if elapsed > 0 else 0.0,
            "dispatch_lag": encode(self.dispatch_lag),
            "dispatch_lag_ms": summarize(self.dispatch_lag),
            "interrupted": self.interrupted,
            "cancelled": self.cancelled,
            "arrived": self.arrived,
            "first_dispatch_s": None
            if self.first_dispatch is None
            else self.first_dispatch - self.clock0,
            "last_dispatch_s": None
            if self.last_dispatch is None
            else self.last_dispatch - self.clock0,
            "last_offset_s": self.last_offset,
            "open_files_limit": self.nofile_limit,
            "doors": None
            if doors is None
            else {
                "ready": doors.ready,
                "dropped_out": doors.dropped_out,
                "submits": len(starts),
                "first_submit_s": min(starts) if starts else None,
                "last_submit_s": max(starts) if starts else None,
            },
        }
        self.final = message
        return RunResult({}, self.stats, 0, [])


async def run_shard(
    spec: dict[str, Any], index: int, count: int, link: Link, accept_timeout_s: float = 120.0
) -> None:
    """Say hello, wait for the shared start time, play this shard, send the final stats."""
    await link.send(
        {"kind": "hello", "shard": index, "pid": os.getpid(), "host": socket.gethostname()}
    )
    try:
        command = await asyncio.wait_for(link.receive(), accept_timeout_s)
    except TimeoutError:
        return  # the coordinator gave up on this run: nothing to play
    if command.get("stop") or "start_at" not in command:
        return
    try:
        runner = ShardRunner(config_from_spec(spec), link, index, count, command["start_at"])
        await runner.run()
    except Exception as error:  # noqa: BLE001 - the coordinator must hear why, not silence
        with contextlib.suppress(Exception):
            await link.send(
                {"kind": "failed", "shard": index, "error": f"{type(error).__name__}: {error}"}
            )


def process_main(
    spec: dict[str, Any], index: int, count: int, up: Queue[Any], down: Queue[Any]
) -> None:
    """Entry point of a local generator process (multiprocessing spawn)."""
    # The terminal's Ctrl-C reaches the whole process group; the coordinator turns it into
    # one `stop` for every shard, so each still sends its final stats.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    loop.run(run_shard(spec, index, count, QueueLink(up, down)))

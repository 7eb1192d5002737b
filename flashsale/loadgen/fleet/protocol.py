"""What shards and the coordinator say to each other, and the shard's side of a run.

A shard says hello, waits for the shared start instant, plays its customers on an Engine,
sends its measurements as deltas every tick (lossless to merge), says when its doors-open
crowd is ready, and ends with its ShardSummary. The coordinator sends Start, Open and Stop.
Transports (fleet/inprocess.py, processes.py, agents.py) carry these objects; those that leave
the process send them as JSON data (encode/decode).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from dataclasses import dataclass
from typing import Any, Protocol

from flashsale.loadgen.engine import Engine, Gauges, ShardSummary
from flashsale.loadgen.scenario import LoadConfig
from flashsale.loadgen.stats import RunStats

ACCEPT_TIMEOUT_S = 120.0  # a shard waits this long for its Start, then gives up on the run


@dataclass
class Hello:
    shard: int
    where: str  # host:pid


@dataclass
class Ready:
    """Every doors-open customer of the shard is ready (or dropped out)."""

    shard: int


@dataclass
class Tick:
    shard: int
    stats: RunStats | None  # since the previous tick; None: recorded into shared stats
    gauges: Gauges


@dataclass
class Done:
    shard: int
    stats: RunStats | None  # since the last tick; None: recorded into shared stats
    gauges: Gauges
    summary: ShardSummary


@dataclass
class Failed:
    shard: int
    error: str


@dataclass
class Start:
    at_wall: float  # unix time of the shared start instant


@dataclass
class Open:
    at_wall: float  # unix time every shard opens its doors


@dataclass
class Stop:
    """Ctrl-C at the coordinator: stop dispatching, send the final numbers."""


Message = Hello | Ready | Tick | Done | Failed
Command = Start | Open | Stop


def encode(item: Message | Command) -> dict[str, Any]:
    """A message or command as JSON data, for transports that leave the process."""
    data: dict[str, Any] = {"kind": type(item).__name__}
    for name in item.__dataclass_fields__:
        value = getattr(item, name)
        data[name] = value.to_dict() if hasattr(value, "to_dict") else value  # None stays
    return data


def decode(data: dict[str, Any]) -> Message | Command:
    kind = data["kind"]
    fields = {key: value for key, value in data.items() if key != "kind"}
    if kind in ("Tick", "Done"):
        fields["stats"] = RunStats.from_dict(fields["stats"]) if fields["stats"] else None
        fields["gauges"] = Gauges.from_dict(fields["gauges"])
    if kind == "Done":
        fields["summary"] = ShardSummary.from_dict(fields["summary"])
    kinds: dict[str, Any] = {
        cls.__name__: cls for cls in (Hello, Ready, Tick, Done, Failed, Start, Open, Stop)
    }
    return kinds[kind](**fields)  # type: ignore[no-any-return]


class Link(Protocol):
    """A shard's two-way line to the coordinator: messages up, commands down."""

    async def send(self, message: Message) -> None: ...

    async def receive(self) -> Command: ...


class Fleet(Protocol):
    """The shards as the coordinator sees them, wherever they run."""

    count: int
    kind: str  # "in-process" | "process" | "agent"
    start_lead_s: float  # how far ahead the shared start and release instants are set

    async def start(self, spec: dict[str, Any], stats: RunStats) -> None:
        """Start the shards; `stats` is the coordinator's, which a fleet playing on its own
        event loop records into directly (the others send deltas)."""
        ...

    async def messages(self) -> list[Message]:
        """What arrived since the last call; waits a little (at most ~0.25 s) when nothing."""
        ...

    async def command(self, shard: int, command: Command) -> None: ...

    def gone(self, shard: int) -> str | None:
        """Why a shard can no longer speak (its process exited), or None."""
        ...

    async def close(self) -> None: ...


async def run_shard(
    spec: dict[str, Any],
    index: int,
    count: int,
    link: Link,
    *,
    tick_s: float,
    engines: list[Engine] | None = None,
    keep_journeys: bool = False,
    stats: RunStats | None = None,
) -> None:
    """Say hello, wait for the shared start, play this shard, send the final numbers.

    `engines`, when given, receives the Engine (an in-process fleet keeps it, and with
    keep_journeys its journeys, for callers that want every customer's record).
    """
    await link.send(Hello(index, f"{socket.gethostname()}:{os.getpid()}"))
    try:
        command = await asyncio.wait_for(link.receive(), ACCEPT_TIMEOUT_S)
    except TimeoutError:
        return  # the coordinator gave up on this run: nothing to play
    if not isinstance(command, Start):
        return
    try:
        sending: set[asyncio.Task[None]] = set()

        def ready() -> None:
            task = asyncio.get_running_loop().create_task(link.send(Ready(index)))
            sending.add(task)  # held, or the loop may drop the task before it runs
            task.add_done_callback(sending.discard)

        engine = Engine(
            LoadConfig.from_spec(spec),
            index,
            count,
            on_ready=ready,
            keep_journeys=keep_journeys,
            stats=stats,
        )
        if engines is not None:
            engines.append(engine)

        async def listen() -> None:
            while True:
                order = await link.receive()
                if isinstance(order, Stop):
                    engine.interrupt()
                elif isinstance(order, Open):
                    engine.open_doors(order.at_wall)

        finished = asyncio.Event()

        async def tick() -> None:
            # Never cancelled mid-send: a delta taken and not delivered would be lost.
            while not finished.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(tick_s):
                        await finished.wait()
                if not finished.is_set():
                    await link.send(Tick(index, engine.take_stats(), engine.sample()))

        listener, ticker = asyncio.create_task(listen()), asyncio.create_task(tick())
        try:
            summary = await engine.run(command.at_wall)
        finally:
            finished.set()
            listener.cancel()
            await ticker
        await link.send(Done(index, engine.take_stats(), engine.sample(), summary))
    except Exception as error:  # noqa: BLE001 - the coordinator must hear why, not silence
        with contextlib.suppress(Exception):
            await link.send(Failed(index, f"{type(error).__name__}: {error}"))

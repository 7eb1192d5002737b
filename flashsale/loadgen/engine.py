"""The load engine: plays one shard's customers on schedule and yields one typed ShardSummary.

Every run has shards, one or many, wherever they run (fleet/); each is an Engine. It measures
the generator itself (CPU, event-loop lag, how late it starts customers) because a saturated
generator reports the generator, not the system. Its measurements leave it as RunStats deltas
(take_stats) and live Gauges (sample); the coordinator merges them and judges the run.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import logging
import os
import resource
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram

from flashsale.loadgen.crowd import Doors, Kit, Target, close_kit, create_kit
from flashsale.loadgen.customer import Customer
from flashsale.loadgen.scenario import LoadConfig, Schedule, TestCard
from flashsale.loadgen.stats import Journey, RunStats, decode, encode, new_histogram

LOOP_PROBE_S = 0.02
# An arrival due sooner than this is waited for with a plain sleep (see dispatch_open).
STOP_CHECK_S = 0.05
FREEZE_EVERY_S = 1.0


class CountingHandler(logging.Handler):
    """Counts the connections' log lines (asyncio's logger) instead of printing them.

    Under overload the event loop's warnings about transports (a write to a closed socket, a
    failed callback) would land per connection on the dashboard; the run reports the counts,
    and the drops themselves are counted per journey with their reason.
    """

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.counts: collections.Counter[str] = collections.Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[f"{record.name}: {record.getMessage()}"[:120]] += 1

    def drain(self) -> collections.Counter[str]:
        counts, self.counts = self.counts, collections.Counter()
        return counts


@contextlib.contextmanager
def counting_asyncio_log() -> Iterator[CountingHandler]:
    """While a shard plays, asyncio's per-connection complaints are counted, not printed."""
    logger = logging.getLogger("asyncio")
    handler = CountingHandler()
    saved = (logger.propagate, logger.level)
    logger.propagate = False
    logger.setLevel(logging.WARNING)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.propagate, logger.level = saved


@dataclass
class Gauges:
    """A shard's live state, sent with every tick: what the dashboard shows between merges."""

    arrived: int = 0
    in_flight: dict[str, int] = field(default_factory=dict)
    sockets: int = 0
    peak_sockets: int = 0
    cpu_percent: float = 0.0  # over the last second or so
    loop_lag_ms: float = 0.0  # worst since the previous sample
    schedule_lag_ms: float = 0.0
    max_schedule_lag_ms: float = 0.0
    stage: str = "starting"
    dispatch_done: bool = False
    last_sale: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Gauges:
        return cls(**data)


@dataclass
class DoorsSummary:
    """Doors-open in one shard: who got ready, who dropped out, when the submits left."""

    ready: int
    dropped_out: int
    submits: int
    opened_at_s: float | None
    last_ready_at_s: float | None
    first_submit_s: float | None
    last_submit_s: float | None


@dataclass
class ShardSummary:
    """A shard's final numbers besides its RunStats (times in seconds on the shared run clock)."""

    shard: int
    where: str  # host:pid
    elapsed_s: float
    cpu_s: float
    dispatch_lag: HdrHistogram
    interrupted: bool
    cancelled: int
    arrived: int
    first_dispatch_s: float | None
    last_dispatch_s: float | None
    last_offset_s: float
    open_files_limit: int
    peak_sockets: int
    max_schedule_lag_ms: float
    doors: DoorsSummary | None = None

    @property
    def cpu_percent(self) -> float:
        return 100 * self.cpu_s / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["dispatch_lag"] = encode(self.dispatch_lag)
        data["doors"] = asdict(self.doors) if self.doors else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShardSummary:
        doors = data.get("doors")
        return cls(
            **{
                **data,
                "dispatch_lag": decode(data["dispatch_lag"]),
                "doors": DoorsSummary(**doors) if doors else None,
            }
        )


class Engine:
    """Plays customers `index % count == shard` of the scenario, on a clock all shards share.

    The arrival schedule and the card of each customer are the scenario's, so the shards of a
    run add up to it exactly. Doors-open: `on_ready` is called once every customer of this
    shard is ready (or dropped out); the doors open when open_doors() says.
    """

    def __init__(
        self,
        config: LoadConfig,
        shard: int = 0,
        count: int = 1,
        *,
        on_ready: Callable[[], None] | None = None,
        keep_journeys: bool = False,
        stats: RunStats | None = None,
    ) -> None:
        """`stats`: record straight into these (the coordinator's own, when it shares this
        event loop) instead of handing deltas over: take_stats() then returns None."""
        self.config = config
        self.shard = shard
        self.count = count
        self.on_ready = on_ready
        self.keep_journeys = keep_journeys
        self.journeys: list[Journey] = []
        self.shared_stats = stats is not None
        self.stats = stats if stats is not None else RunStats(interval_s=config.interval_s)
        self.dispatch_lag = new_histogram()
        self.tasks: set[asyncio.Task[Journey]] = set()
        self.background: set[asyncio.Task[None]] = set()
        self.stop = asyncio.Event()
        self.interrupted = False
        self.cancelled = 0
        self.arrived = 0
        self.first_dispatch: float | None = None
        self.last_dispatch: float | None = None
        self.last_offset = 0.0
        self.max_schedule_lag = 0.0
        self.current_lag = 0.0
        self.window_loop_lag = 0.0
        self.semaphore = asyncio.Semaphore(config.max_in_flight) if config.max_in_flight else None
        self.kit: Kit | None = None
        self.client_log: CountingHandler | None = None
        self.clock0 = 0.0
        self.cpu0 = 0.0
        self.dispatch_done = False
        self.nofile_limit = 0
        self.cpu_mark = (time.perf_counter(), time.process_time())
        self.window_cpu = 0.0

    # -- the run ---------------------------------------------------------------------------

    async def run(self, start_wall: float) -> ShardSummary:
        """Play this shard's customers from the shared start instant (unix time) to the end."""
        config = self.config
        self.nofile_limit = raise_open_files_limit()
        schedule = config.schedule
        doors = Doors(on_ready=self.on_ready) if schedule.doors_open else None
        target = Target(
            config.url,
            config.tokenize,
            config.timeout_s,
            config.fallback,
            patience=config.patience,
            retry_after_decline=config.retry_after_decline,
        )
        # A clean heap before the clock starts: the first full collection would otherwise land
        # on the first customers (measured: ~190 ms).
        gc.collect()
        # Pools first: building them took ~300 ms on a loaded machine, which started the first
        # customers late when it ran on the clock.
        self.kit = kit = create_kit(target, 0.0, doors)
        kit.rng.seed(config.schedule.seed * 1000 + self.shard)  # who retries after a decline
        gc.freeze()
        delay = start_wall - time.time()
        self.clock0 = time.perf_counter() + delay
        if delay > 0:
            await asyncio.sleep(delay)
        kit.clock0 = self.clock0
        self.cpu0 = time.process_time()
        self.cpu_mark = (time.perf_counter(), self.cpu0)
        with counting_asyncio_log() as self.client_log:
            probe = asyncio.create_task(self.probe_loop_lag())
            freezer = asyncio.create_task(freeze_survivors())
            try:
                if schedule.concurrency is not None:
                    await self.run_closed(schedule)
                else:
                    await self.dispatch_open(schedule, doors)
                self.dispatch_done = True
                await self.drain()
            finally:
                probe.cancel()
                freezer.cancel()
                for task in self.background:
                    task.cancel()
                gc.unfreeze()
                await self.cancel_all()
                await close_kit(kit)
            self.stats.client_log.update(self.client_log.drain())
        return self.summary()

    def interrupt(self) -> None:
        """Stop dispatching and abandon the customers in flight; the summary still follows."""
        if not self.stop.is_set():
            self.interrupted = True
            self.stop.set()

    def open_doors(self, at_wall: float) -> None:
        """Open the doors at an agreed wall-clock instant; waking late is charged as lag."""
        task = asyncio.get_running_loop().create_task(self._open_at(at_wall))
        self.background.add(task)  # held, or the loop may drop the task before it runs
        task.add_done_callback(self.background.discard)

    async def _open_at(self, at_wall: float) -> None:
        instant = time.perf_counter() + (at_wall - time.time())
        delay = instant - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if self.kit is not None and self.kit.doors is not None:
            self.kit.doors.open(at=instant)

    def mine(self, index: int) -> bool:
        """Whether customer `index` of the scenario is played by this shard."""
        return index % self.count == self.shard

    def stage(self) -> str:
        """Where the run is, for judging event-loop lag by what it distorts."""
        doors = self.kit.doors if self.kit else None
        if doors is None:
            return "run"
        if not doors.opened.is_set():
            return "ready"
        if self.kit is not None and len(self.kit.submit_starts) < doors.ready:
            return "release"
        return "results"

    async def dispatch_open(self, schedule: Schedule, doors: Doors | None) -> None:
        for index, offset in enumerate(schedule.arrivals()):
            if not self.mine(index):
                continue
            # By index, not by turn: the shards of a run add up to the mix.
            card = self.config.cards.card_at(index)
            if self.stop.is_set():
                break
            due = self.clock0 + offset
            delay = due - time.perf_counter()
            if delay > 0:
                if delay < STOP_CHECK_S:
                    # A plain sleep: a stop waits at most this long, and at high rates (every
                    # gap short) waiting on the stop event cost ~0.2 ms of CPU per arrival.
                    await asyncio.sleep(delay)
                else:
                    # asyncio.timeout, not wait_for: no extra task per arrival.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await self.stop.wait()
                if self.stop.is_set():
                    break
            now = time.perf_counter()
            lag = max(0.0, now - due)
            self.dispatch_lag.record_value(max(1, min(3_600_000_000, round(lag * 1e6))))
            self.current_lag = lag
            self.last_offset = offset
            self.launch(index, card, offset, now)
        if doors is not None:
            doors.expected = self.arrived
            doors.check()

    async def run_closed(self, schedule: Schedule) -> None:
        """Closed model: N customers in a loop, each starting when the previous one ends."""
        assert schedule.concurrency is not None
        counter = (i for i in range(schedule.customers or 10**12) if self.mine(i))
        deadline = (
            self.clock0 + schedule.duration_s if schedule.duration_s is not None else float("inf")
        )

        async def loop_customer() -> None:
            while not self.stop.is_set() and time.perf_counter() < deadline:
                index = next(counter, None)
                if index is None:
                    return
                now = time.perf_counter()
                offset = now - self.clock0
                task = self.launch(index, self.config.cards.card_at(index), offset, now)
                await asyncio.wait({task})

        share = shard_share(schedule.concurrency, self.shard, self.count)
        workers = [asyncio.create_task(loop_customer()) for _ in range(share)]
        try:
            await asyncio.gather(*workers)
        finally:
            for worker in workers:
                worker.cancel()

    def launch(
        self, index: int, card: TestCard, offset: float, now: float
    ) -> asyncio.Task[Journey]:
        self.arrived += 1
        self.first_dispatch = self.first_dispatch or now
        self.last_dispatch = now
        self.stats.record_arrival(offset)
        task = asyncio.create_task(self.one_customer(index, card, offset))
        self.tasks.add(task)
        task.add_done_callback(self.customer_done)
        return task

    async def one_customer(self, index: int, card: TestCard, offset: float) -> Journey:
        assert self.kit is not None
        customer = Customer(self.kit, index, card, offset)
        if self.semaphore is not None:
            # Like a wrk2 connection: a customer waits for a free slot; the wait is schedule
            # lag and shows in the corrected view, not in the uncorrected one.
            async with self.semaphore:
                return await self.journey_of(customer)
        return await self.journey_of(customer)

    async def journey_of(self, customer: Customer) -> Journey:
        try:
            journey = await customer.run()
        except Exception as error:  # a bug in a journey must not take the run down
            journey = customer.journey
            journey.outcome = "error"
            journey.error = f"internal: {type(error).__name__}: {error}"[:160]
            journey.finished = time.perf_counter() - self.clock0
        lag = journey.started - journey.scheduled
        self.max_schedule_lag = max(self.max_schedule_lag, lag)
        return journey

    def customer_done(self, task: asyncio.Task[Journey]) -> None:
        self.tasks.discard(task)
        if task.cancelled():
            self.cancelled += 1
            return
        journey = task.result()
        self.stats.record(journey)
        if self.keep_journeys:
            self.journeys.append(journey)

    async def drain(self) -> None:
        """Wait for customers in flight; each is bounded by its phase timeouts."""
        deadline = time.perf_counter() + 5 * self.config.timeout_s + 5
        stop_wait = asyncio.create_task(self.stop.wait())
        try:
            while self.tasks and not self.stop.is_set():
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                await asyncio.wait(
                    {stop_wait, *self.tasks},
                    timeout=min(remaining, 1.0),
                    return_when=asyncio.FIRST_COMPLETED,
                )
        finally:
            stop_wait.cancel()

    async def cancel_all(self) -> None:
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- watching the generator ------------------------------------------------------------

    async def probe_loop_lag(self) -> None:
        """How late the loop wakes a sleeper: the delay every customer callback suffers too."""
        while True:
            before = time.perf_counter()
            await asyncio.sleep(LOOP_PROBE_S)
            lag = max(0.0, time.perf_counter() - before - LOOP_PROBE_S)
            self.stats.record_loop_lag(lag, self.stage())
            self.window_loop_lag = max(self.window_loop_lag, lag)

    def take_stats(self) -> RunStats | None:
        """The measurements since the last call (then forgotten here): deltas merge exactly.
        None when recording into shared stats: a fresh RunStats and a merge cost ~2 ms a tick,
        ~0.1 ms per journey at 60/s (benchmarks/loadgen.py), for a copy nobody needs."""
        if self.client_log is not None:
            self.stats.client_log.update(self.client_log.drain())
        if self.shared_stats:
            return None
        delta, self.stats = self.stats, RunStats(interval_s=self.config.interval_s)
        return delta

    def sample(self) -> Gauges:
        """The live gauges; the loop-lag window starts again, the CPU one every second."""
        now, cpu = time.perf_counter(), time.process_time()
        wall = now - self.cpu_mark[0]
        if wall >= 1.0:
            self.window_cpu = 100 * (cpu - self.cpu_mark[1]) / wall
            self.cpu_mark = (now, cpu)
        kit = self.kit
        gauges = Gauges(
            arrived=self.arrived,
            in_flight=dict(kit.in_flight) if kit else {},
            sockets=kit.sockets if kit else 0,
            peak_sockets=kit.peak_sockets if kit else 0,
            cpu_percent=self.window_cpu,
            loop_lag_ms=self.window_loop_lag * 1000,
            schedule_lag_ms=self.current_lag * 1000,
            max_schedule_lag_ms=self.max_schedule_lag * 1000,
            stage=self.stage() if kit else "starting",
            dispatch_done=self.dispatch_done,
            last_sale=kit.last_sale if kit else None,
        )
        self.window_loop_lag = 0.0
        return gauges

    def summary(self) -> ShardSummary:
        elapsed = time.perf_counter() - self.clock0
        kit = self.kit
        doors = kit.doors if kit else None
        starts = kit.submit_starts if kit else []

        def on_clock(instant: float | None) -> float | None:
            return None if instant is None else instant - self.clock0

        return ShardSummary(
            shard=self.shard,
            where=f"{socket.gethostname()}:{os.getpid()}",
            elapsed_s=elapsed,
            cpu_s=time.process_time() - self.cpu0,
            dispatch_lag=self.dispatch_lag,
            interrupted=self.interrupted,
            cancelled=self.cancelled,
            arrived=self.arrived,
            first_dispatch_s=on_clock(self.first_dispatch),
            last_dispatch_s=on_clock(self.last_dispatch),
            last_offset_s=self.last_offset,
            open_files_limit=self.nofile_limit,
            peak_sockets=kit.peak_sockets if kit else 0,
            max_schedule_lag_ms=self.max_schedule_lag * 1000,
            doors=None
            if doors is None
            else DoorsSummary(
                ready=doors.ready,
                dropped_out=doors.dropped_out,
                submits=len(starts),
                opened_at_s=on_clock(doors.opened_at),
                last_ready_at_s=on_clock(doors.last_ready_at),
                first_submit_s=min(starts) if starts else None,
                last_submit_s=max(starts) if starts else None,
            ),
        )


async def freeze_survivors() -> None:
    """Keep the cyclic GC off the customers in flight.

    Thousands of waiting customers are hundreds of thousands of objects; every full collection
    walks them all and stalls the loop (measured: 150-2,200 ms pauses, ~10 s of a 50 s run,
    which every customer's latency then includes). Moving survivors to the permanent generation
    each second leaves the collector only the last second's objects. Refcounting still frees
    what customers drop; only cyclic garbage waits for the unfreeze at the end of the run.
    """
    gc.collect()
    while True:
        gc.freeze()
        await asyncio.sleep(FREEZE_EVERY_S)


def shard_share(total: int, index: int, count: int) -> int:
    """Shard `index` of `count` takes an even share of `total`, the first ones the remainder."""
    return total // count + (1 if index < total % count else 0)


def raise_open_files_limit() -> int:
    """Each waiting customer holds a socket (plus pooled HTTP ones): lift the soft limit to the
    hard one, as far as we are allowed; returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]

"""Runs a load scenario: dispatches customers on schedule, watches the generator itself, reports."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import resource
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hdrh.histogram import HdrHistogram
from rich.console import Console
from rich.live import Live

from flashsale.errors import ConfigError
from flashsale.loadgen import loop, wire
from flashsale.loadgen.customer import (
    CLIENT_LOG,
    HTTP_ERRORS,
    Customer,
    Doors,
    Kit,
    Target,
    close_kit,
    create_kit,
)
from flashsale.loadgen.dashboard import Snapshot, render, status_line, verdict_lines
from flashsale.loadgen.report import RunInfo, build_report, write_html, write_json
from flashsale.loadgen.scenario import CardMix, Schedule, TestCard
from flashsale.loadgen.stats import Journey, RunStats, Slo, evaluate, new_histogram, summarize

EXIT_OK, EXIT_SLO_FAILED, EXIT_USAGE, EXIT_INVALID = 0, 1, 2, 3


def conclude(
    config: LoadConfig, stats: RunStats, info: RunInfo, invalid: bool
) -> tuple[dict[str, Any], list[Any], int]:
    """Evaluate SLOs, write the reports asked for, and pick the exit code (any runner)."""
    slo_results = evaluate(config.slos, stats)
    report = build_report(stats, info, slo_results)
    if config.report_path is not None:
        write_json(report, config.report_path)
    if config.html_path is not None:
        write_html(report, stats, config.html_path)
    if invalid:
        code = EXIT_INVALID
    elif not all(result.passed for result in slo_results):
        code = EXIT_SLO_FAILED
    else:
        code = EXIT_OK
    return report, slo_results, code


REFRESH_S = 0.25  # dashboard ~4 frames a second
LOOP_PROBE_S = 0.02
# An arrival due sooner than this is waited for with a plain sleep (see dispatch_open).
STOP_CHECK_S = 0.05
SYSTEM_POLL_S = 1.0
FREEZE_EVERY_S = 1.0
# The pipeline's Redis layout, known here only as a default: loadgen imports nothing from core
# but events, and --stock-key overrides it.
STOCK_KEY_FORMAT = "flashsale:stock:{sku}"
CELERY_QUEUE = "celery"


@dataclass
class LoadConfig:
    url: str
    schedule: Schedule
    cards: CardMix
    tokenize: str = "raw"
    timeout_s: float = 30.0
    max_in_flight: int | None = None
    slos: list[Slo] = field(default_factory=list)
    report_path: Path | None = None
    html_path: Path | None = None
    dashboard: bool = True
    status_every_s: float = 5.0
    redis_url: str | None = None
    stock_key: str | None = None
    interval_s: float = 1.0
    max_lag_s: float = 0.1
    max_cpu_percent: float = 90.0
    fallback: bool = True
    # Doors-open release: an absolute limit, or (None) a share of the median e2e it distorts.
    max_release_lag_s: float | None = None
    max_release_lag_ratio: float = 0.10


@dataclass
class RunResult:
    report: dict[str, Any]
    stats: RunStats
    exit_code: int
    journeys: list[Journey]


class Runner:
    """One load run. Everything is on one asyncio loop; the generator measures its own health
    (CPU, event-loop lag, how late it starts customers) because a saturated generator reports
    the generator, not the system."""

    def __init__(
        self, config: LoadConfig, console: Console | None = None, keep_journeys: bool = False
    ) -> None:
        self.config = config
        self.console = console or Console()
        self.keep_journeys = keep_journeys
        self.journeys: list[Journey] = []
        self.stats = RunStats(interval_s=config.interval_s)
        self.dispatch_lag = new_histogram()
        self.tasks: set[asyncio.Task[Journey]] = set()
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
        self.arrival_samples: collections.deque[tuple[float, int]] = collections.deque(maxlen=16)
        self.system: dict[str, object] | None = None
        self.semaphore = asyncio.Semaphore(config.max_in_flight) if config.max_in_flight else None
        self.kit: Kit | None = None
        self.clock0 = 0.0
        self.cpu0 = 0.0
        self.dispatch_done = False
        self.nofile_limit = 0
        self.started_at = time.time()
        self.window_cpu = 0.0

    # -- the run ---------------------------------------------------------------------------

    async def run(self) -> RunResult:
        config = self.config
        self.nofile_limit = raise_open_files_limit()
        await preflight(config.url)
        schedule = config.schedule
        doors = self.make_doors() if schedule.doors_open else None
        target = Target(config.url, config.tokenize, config.timeout_s, config.fallback)
        # A clean heap before the clock starts: the first full collection would otherwise land
        # on the first customers (measured: ~190 ms).
        gc.collect()
        # Pools first: building them took ~300 ms on a loaded machine, which started the first
        # customers late when it ran on the clock.
        self.kit = kit = create_kit(target, 0.0, doors)
        gc.freeze()
        await self.wait_for_start()
        kit.clock0 = self.clock0
        self.started_at = time.time()
        self.cpu0 = time.process_time()
        loop = asyncio.get_running_loop()
        signals = (signal.SIGINT, signal.SIGTERM) if self.handle_signals else ()
        for signum in signals:
            loop.add_signal_handler(signum, self.interrupt)
        probe = asyncio.create_task(self.probe_loop_lag())
        freezer = asyncio.create_task(freeze_survivors())
        live = (
            Live(console=self.console, auto_refresh=False, transient=False)
            if config.dashboard
            else None
        )
        try:
            with live if live is not None else contextlib.nullcontext():
                monitor = asyncio.create_task(self.monitor(live))
                try:
                    if schedule.concurrency is not None:
                        await self.run_closed(schedule)
                    else:
                        await self.dispatch_open(schedule, doors)
                    self.dispatch_done = True
                    await self.drain()
                finally:
                    monitor.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await monitor
                if live is not None:
                    live.update(render(self.snapshot()), refresh=True)
        finally:
            probe.cancel()
            freezer.cancel()
            gc.unfreeze()
            for signum in signals:
                loop.remove_signal_handler(signum)
            await self.cancel_all()
            await close_kit(kit)
        return self.finish()

    # -- hooks a shard of a multi-process run overrides -------------------------------------

    handle_signals = True
    shard_index = 0
    shard_count = 1

    def make_doors(self) -> Doors:
        return Doors()

    async def wait_for_start(self) -> None:
        self.clock0 = time.perf_counter()

    def mine(self, index: int) -> bool:
        """Whether customer `index` of the scenario is played by this process."""
        return index % self.shard_count == self.shard_index

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

    def interrupt(self) -> None:
        """Ctrl-C: stop dispatching, abandon customers in flight, still write the report."""
        if self.stop.is_set():
            return
        self.interrupted = True
        self.stop.set()
        self.console.print("[yellow]interrupted: stopping and writing the report[/]")

    async def dispatch_open(self, schedule: Schedule, doors: Doors | None) -> None:
        for index, offset in enumerate(schedule.arrivals()):
            if not self.mine(index):
                continue
            # By index, not by turn: the shards of a multi-process run add up to the mix.
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

        share = shard_share(schedule.concurrency, self.shard_index, self.shard_count)
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

    async def monitor(self, live: Live | None) -> None:
        last_line = time.perf_counter()
        last_system = 0.0
        redis_client = None
        if self.config.redis_url:
            import redis.asyncio as aioredis

            redis_client = aioredis.Redis.from_url(
                self.config.redis_url, socket_timeout=1, socket_connect_timeout=1
            )
        cpu_mark = (time.perf_counter(), time.process_time())
        try:
            while True:
                await asyncio.sleep(REFRESH_S)
                now = time.perf_counter()
                wall, cpu = now - cpu_mark[0], time.process_time() - cpu_mark[1]
                if wall >= 1.0:
                    self.window_cpu = 100 * cpu / wall
                    cpu_mark = (now, time.process_time())
                self.arrival_samples.append((now, self.arrived))
                if redis_client is not None and now - last_system >= SYSTEM_POLL_S:
                    last_system = now
                    self.system = await self.poll_system(redis_client)
                snap = self.snapshot()
                self.window_loop_lag = 0.0
                if live is not None:
                    live.update(render(snap), refresh=True)
                elif now - last_line >= self.config.status_every_s:
                    last_line = now
                    self.console.print(status_line(snap), markup=False, highlight=False)
        finally:
            if redis_client is not None:
                await redis_client.aclose()

    async def poll_system(self, client: Any) -> dict[str, object]:
        sale = self.kit.last_sale if self.kit else None
        return await read_system(client, self.config.stock_key, sale)

    def cpu_percent(self) -> float:
        wall = time.perf_counter() - self.clock0
        return 100 * (time.process_time() - self.cpu0) / wall if wall > 0 else 0.0

    def achieved_now(self) -> float:
        if len(self.arrival_samples) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self.arrival_samples[0], self.arrival_samples[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0

    def warnings(self) -> list[str]:
        found = []
        limit_ms = self.config.max_lag_s * 1000
        if self.window_cpu > self.config.max_cpu_percent:
            found.append(f"generator CPU {self.window_cpu:.0f}% (saturated?)")
        if not self.dispatch_done and self.current_lag * 1000 > limit_ms:
            found.append(f"generator behind schedule by {self.current_lag * 1000:.0f}ms")
        if self.window_loop_lag * 1000 > limit_ms:
            found.append(f"event-loop lag {self.window_loop_lag * 1000:.0f}ms")
        return found

    def snapshot(self) -> Snapshot:
        schedule = self.config.schedule
        elapsed = time.perf_counter() - self.clock0
        target = None
        if schedule.rate is not None:
            target = 0.0 if self.dispatch_done else schedule.rate.at(elapsed)
        system = dict(self.system or {})
        if self.kit is not None and self.kit.last_sale and "stock_left" not in system:
            system["stock_left (session)"] = self.kit.last_sale.get("stock_left", "?")
        if self.kit is not None:
            system["sockets open"] = self.kit.sockets
        return Snapshot(
            stats=self.stats,
            elapsed_s=elapsed,
            model=schedule.describe(),
            target_per_s=target,
            achieved_per_s=self.achieved_now(),
            arrived=self.arrived,
            planned=schedule.customers,
            in_flight=dict(self.kit.in_flight) if self.kit else {},
            cpu_percent=self.window_cpu,
            loop_lag_ms=self.window_loop_lag * 1000,
            schedule_lag_ms=self.current_lag * 1000,
            max_schedule_lag_ms=self.max_schedule_lag * 1000,
            warnings=self.warnings(),
            system=system,
            stopping=self.stop.is_set(),
        )

    # -- the verdict -----------------------------------------------------------------------

    def finish(self) -> RunResult:
        self.stats.client_log.update(CLIENT_LOG.drain())
        config = self.config
        schedule = config.schedule
        elapsed = time.perf_counter() - self.clock0
        cpu_s = time.process_time() - self.cpu0
        cpu_percent = 100 * cpu_s / elapsed if elapsed > 0 else 0.0
        dispatch = summarize(self.dispatch_lag)
        loop_lag = summarize(self.stats.loop_lag)
        reasons = generator_reasons(
            config, cpu_percent=cpu_percent, dispatch_lag=self.dispatch_lag, stats=self.stats
        )
        target, achieved = self.rates(elapsed)
        kit = self.kit
        doors = kit.doors if kit else None
        doors_info = None
        if doors is not None and kit is not None:
            starts = kit.submit_starts
            doors_info = {
                "ready": doors.ready,
                "dropped_out": doors.dropped_out,
                "opened_at_s": None if doors.opened_at is None else doors.opened_at - self.clock0,
                "last_ready_at_s": None
                if doors.last_ready_at is None
                else doors.last_ready_at - self.clock0,
                "submits": len(starts),
                "submit_spread_ms": (max(starts) - min(starts)) * 1000 if starts else None,
            }
        finished = self.stats.finished
        info = RunInfo(
            url=config.url,
            model=schedule.model,
            schedule=schedule.describe(),
            started_at=self.started_at,
            elapsed_s=elapsed,
            planned_customers=schedule.customers,
            target_per_s=target,
            achieved_per_s=achieved,
            cpu_percent=cpu_percent,
            max_schedule_lag_ms=self.max_schedule_lag * 1000,
            max_dispatch_lag_ms=float(dispatch["max"]),
            loop_lag_p99_ms=float(loop_lag["p99"]),
            loop_lag_max_ms=float(loop_lag["max"]),
            valid=not reasons,
            invalid_reasons=reasons,
            interrupted=self.interrupted,
            cancelled=self.cancelled,
            cards_spec=config.cards.spec(),
            tokenize=config.tokenize,
            timeout_s=config.timeout_s,
            max_in_flight=config.max_in_flight,
            doors_open=doors_info,
            system=self.system,
            cpu_ms_per_customer=1000 * cpu_s / finished if finished else None,
            peak_sockets=kit.peak_sockets if kit else 0,
            open_files_limit=self.nofile_limit,
            **lag_views(self.stats),
        )
        report, slo_results, code = conclude(config, self.stats, info, bool(reasons))
        self.print_verdict(info, slo_results, code)
        return RunResult(report, self.stats, code, self.journeys)

    def rates(self, elapsed: float) -> tuple[float | None, float]:
        """Target vs achieved arrivals per second over the dispatch window, same formula."""
        schedule = self.config.schedule
        if schedule.rate is None:
            return None, self.stats.finished / elapsed if elapsed > 0 else 0.0
        spans = self.arrived - 1
        if spans <= 0 or self.first_dispatch is None or self.last_dispatch is None:
            return schedule.rate.end_per_s, 0.0
        target = spans / self.last_offset if self.last_offset > 0 else schedule.rate.end_per_s
        window = self.last_dispatch - self.first_dispatch
        return target, spans / window if window > 0 else 0.0

    def print_verdict(self, info: RunInfo, slo_results: list[Any], code: int) -> None:
        if not self.config.dashboard:
            self.console.print(status_line(self.snapshot()), markup=False, highlight=False)
        reports = (self.config.report_path, self.config.html_path)
        verdict_lines(self.console, slo_results, info, reports)


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


async def read_system(
    client: Any, stock_key: str | None, sale: dict[str, Any] | None
) -> dict[str, object]:
    """Celery queue depth and stock left, read straight from the pipeline's Redis."""
    key = stock_key or STOCK_KEY_FORMAT.format(sku=(sale or {}).get("sku", "FLASH-001"))
    try:
        depth, stock = await asyncio.wait_for(
            asyncio.gather(client.llen(CELERY_QUEUE), client.get(key)), 1.0
        )
    except Exception as error:  # noqa: BLE001 - a panel must not end the run
        return {"redis": f"unavailable ({type(error).__name__})"}
    return {
        "celery_queue": int(depth),
        "stock_left": int(stock) if stock is not None else "?",
    }


def generator_reasons(
    config: LoadConfig, *, cpu_percent: float, dispatch_lag: HdrHistogram, stats: RunStats
) -> list[str]:
    """Why one generator process's numbers cannot be trusted (empty: they can).

    Lag is judged by what it distorts. Dispatch lag and event-loop lag while customers arrive
    (open and closed models, and doors-open's gathering) delay phases of milliseconds:
    --max-lag. From the doors opening on, every customer's clock started at the agreed
    instant and it is inside a submit -> result wait of seconds: the time this process takes
    to get each submit out (release lag) and its loop lag afterwards must stay under
    --max-release-lag (default: 10% of the median e2e latency they are added to, never less
    than --max-lag), so the generator's own share of every figure stays within that bound.
    """
    reasons = []
    if cpu_percent > config.max_cpu_percent:
        reasons.append(
            f"generator CPU {cpu_percent:.0f}% > {config.max_cpu_percent:.0f}%: it saturated"
        )
    limit_ms = config.max_lag_s * 1000
    dispatch = summarize(dispatch_lag)
    if config.schedule.concurrency is None and float(dispatch["p99"]) > limit_ms:
        reasons.append(
            f"generator started customers late: dispatch lag p99 {dispatch['p99']}ms > "
            f"{limit_ms:g}ms"
        )
    # Before the doors open (or all along in the open and closed models) the phases measured
    # last milliseconds: an absolute limit. From the doors opening on, every customer in
    # flight is inside a submit -> result wait of seconds: the release limit applies.
    before = new_histogram()
    after = new_histogram()
    for stage, histogram in stats.loop_lag_by_stage.items():
        (after if stage in ("release", "results") else before).add(histogram)
    loop_p99 = float(summarize(before)["p99"])
    if loop_p99 > limit_ms:
        reasons.append(f"event-loop lag p99 {loop_p99}ms > {limit_ms:g}ms")
    if config.max_release_lag_s is not None:
        release_limit_ms = config.max_release_lag_s * 1000
        allowed = f"{release_limit_ms:g}ms"
    else:
        e2e_p50 = float(stats.phase_summary("e2e")["p50"])
        release_limit_ms = max(limit_ms, config.max_release_lag_ratio * e2e_p50)
        allowed = (
            f"{release_limit_ms:.0f}ms ({config.max_release_lag_ratio:.0%} of e2e p50 "
            f"{e2e_p50:.0f}ms, at least --max-lag)"
        )
    release = summarize(stats.release_lag)
    if release["count"] and float(release["p99"]) > release_limit_ms:
        reasons.append(
            f"doors-open release too slow: submits left {release['p99']}ms (p99) after the "
            f"doors opened > {allowed}"
        )
    after_p99 = float(summarize(after)["p99"])
    if after.get_total_count() and after_p99 > release_limit_ms:
        reasons.append(f"event-loop lag after the doors opened p99 {after_p99}ms > {allowed}")
    return reasons


def lag_views(stats: RunStats) -> dict[str, Any]:
    """Loop lag per stage and the release lag, for the report."""
    return {
        "loop_lag_by_stage_ms": {
            stage: summarize(histogram)
            for stage, histogram in stats.loop_lag_by_stage.items()
            if histogram.get_total_count()
        },
        "release_lag_ms": summarize(stats.release_lag)
        if stats.release_lag.get_total_count()
        else None,
    }


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


async def preflight(url: str) -> None:
    """Refuse to start against an address nothing listens on: a setup error, not a result."""
    try:
        async with wire.HttpClient() as client, asyncio.timeout(5):
            await client.request("GET", f"{url}/healthz")
    except HTTP_ERRORS as error:
        reason = wire.describe(error)
        raise ConfigError(
            f"cannot reach {url} ({reason}); is `flashsale serve` running there?"
        ) from None


def run(config: LoadConfig, console: Console | None = None) -> RunResult:
    """Run a scenario to completion (or Ctrl-C) and return the report and exit code."""
    return loop.run(Runner(config, console).run())

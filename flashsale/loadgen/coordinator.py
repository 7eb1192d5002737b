"""Runs a load scenario: starts the fleet's shards together, opens their doors together, merges
what they measure into the live dashboard and, at the end, the verdict.

Every run goes through here, one shard on this loop (`--processes 1`) or many elsewhere.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.live import Live

from flashsale.errors import ConfigError
from flashsale.loadgen.client import loop
from flashsale.loadgen.client.connection import describe
from flashsale.loadgen.client.http import HttpClient
from flashsale.loadgen.customer import HTTP_ERRORS
from flashsale.loadgen.dashboard import Snapshot, render, status_line, verdict_lines
from flashsale.loadgen.fleet import make_fleet
from flashsale.loadgen.fleet.protocol import (
    Done,
    Failed,
    Fleet,
    Hello,
    Message,
    Open,
    Ready,
    Start,
    Stop,
    Tick,
)
from flashsale.loadgen.report import LoadReport
from flashsale.loadgen.scenario import LoadConfig
from flashsale.loadgen.stats import Journey, RunStats, SloResult, cannot_pass, evaluate
from flashsale.loadgen.verdict import ShardState, conclude

REFRESH_S = 0.25  # dashboard ~4 frames a second
SYSTEM_POLL_S = 1.0
SLO_EVERY_S = 1.0
STOP_GRACE_S = 20.0  # after Ctrl-C, how long shards get to send their final numbers
# What the system panel shows from the server's /metrics (metric, label, what to call it).
SYSTEM_METRICS = (
    ("flashsale_queue_depth", "flashsale.charges", "charges queued"),
    ("flashsale_queue_depth", "flashsale.results", "results queued"),
    ("flashsale_stock_left", None, "stock left"),
    ("flashsale_sockets_connected", None, "server sockets"),
)


@dataclass
class RunResult:
    report: LoadReport
    stats: RunStats
    exit_code: int
    journeys: list[Journey]
    unwritten: list[str] = field(default_factory=list)  # reports that could not be written


class Coordinator:
    """One run over a fleet of shards: start, doors, merge, dashboard, verdict."""

    def __init__(
        self,
        config: LoadConfig,
        fleet: Fleet,
        console: Console | None = None,
        on_doors: Callable[[float], None] | None = None,
    ) -> None:
        self.config = config
        self.fleet = fleet
        # Told the doors' agreed instant (unix time) once: rehearse opens the sale's waiting
        # room at that instant too.
        self.on_doors = on_doors
        self.console = console or Console()
        self.stats = RunStats(interval_s=config.interval_s)
        # One shard's numbers are the run's: merged once, not twice (a merge is ~1 ms).
        self.shards = [
            ShardState(
                i, fleet.kind, self.stats if fleet.count == 1 else RunStats(config.interval_s)
            )
            for i in range(fleet.count)
        ]
        self.start_wall = 0.0
        self.open_wall: float | None = None
        self.stopping = False
        self.stop_deadline = float("inf")
        self.arrival_samples: collections.deque[tuple[float, int]] = collections.deque(maxlen=16)
        self.system: dict[str, object] | None = None
        self.slo_results: list[SloResult] = []
        self.slos_at = float("-inf")
        self.interrupted = False  # by Ctrl-C or SIGTERM (a rehearsal stops too)
        self.timeline: list[dict[str, Any]] = []
        self.aborted: str | None = None

    # -- the run ---------------------------------------------------------------------------

    async def run(self) -> RunResult:
        await preflight(self.config.url)
        loop = asyncio.get_running_loop()
        signals = (signal.SIGINT, signal.SIGTERM)
        # Put back whatever handled them before (a rehearsal's clean-stop handler, say).
        previous = {signum: signal.getsignal(signum) for signum in signals}
        for signum in signals:
            loop.add_signal_handler(signum, self.interrupt)
        try:
            await self.fleet.start(self.config.to_spec(), self.stats)
            await self.wait_for_hellos()
            self.start_wall = time.time() + self.fleet.start_lead_s
            for shard in self.shards:
                await self.fleet.command(shard.index, Start(self.start_wall))
                shard.last_seen = time.monotonic() + self.fleet.start_lead_s
            await self.watch()
        finally:
            for signum in signals:
                loop.remove_signal_handler(signum)
                signal.signal(signum, previous[signum])
            await self.fleet.close()
        return self.finish()

    def interrupt(self) -> None:
        """Ctrl-C: every shard stops dispatching and abandons its customers in flight; the
        report is still written."""
        if not self.stopping:
            self.interrupted = True
            self.stop_all("interrupted: stopping and writing the report")

    def stop_all(self, why: str) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.stop_deadline = time.monotonic() + STOP_GRACE_S
        self.console.print(f"[yellow]{why}[/]")
        for shard in self.shards:
            asyncio.get_running_loop().create_task(self.fleet.command(shard.index, Stop()))

    def check_abort(self) -> None:
        """--abort-on-fail: stop once an SLO is already lost, whatever the rest would do."""
        if not self.config.abort_on_fail or self.stopping:
            return
        for result in self.slos_now():
            if cannot_pass(result, self.stats, self.config.schedule.customers):
                self.aborted = f"SLO {result.slo.text} can no longer pass (now {result.actual:g})"
                self.stop_all(f"aborting: {self.aborted}; writing the report")
                return

    async def wait_for_hellos(self) -> None:
        """Every shard must check in before anyone starts: a missing agent is a setup error."""
        deadline = time.monotonic() + self.config.accept_timeout_s
        while not all(shard.hello for shard in self.shards):
            if self.stopping:
                break
            if time.monotonic() > deadline:
                accepted = sum(shard.hello for shard in self.shards)
                for shard in self.shards:
                    await self.fleet.command(shard.index, Stop())
                hint = (
                    "; start `flashsale loadgen-agent --redis-url ...` on each load machine"
                    if self.fleet.kind == "agent"
                    else ""
                )
                raise ConfigError(
                    f"only {accepted} of {self.fleet.count} {plural(self.fleet.kind)} accepted "
                    f"the run within {self.config.accept_timeout_s:g}s{hint}"
                )
            for shard in self.shards:
                reason = self.fleet.gone(shard.index)
                if reason is not None and not shard.hello:
                    raise ConfigError(f"generator {shard.index} failed to start: {reason}")
            for message in await self.fleet.messages():
                self.handle(message)

    async def watch(self) -> None:
        # Frames only where someone sees them: into a file or a pipe rich prints just the last
        # one, and drawing the others costs CPU the system under test shares. Logs get status
        # lines instead.
        live = (
            Live(console=self.console, auto_refresh=False, transient=False)
            if self.config.dashboard and self.console.is_terminal
            else None
        )
        last_frame = last_line = last_system = 0.0
        async with HttpClient() as http:
            with live if live is not None else contextlib.nullcontext():
                while not all(shard.finished for shard in self.shards):
                    for message in await self.fleet.messages():
                        self.handle(message)
                    await self.check_lost()
                    await self.maybe_open_doors()
                    self.check_abort()
                    now = time.monotonic()
                    if self.stopping and now > self.stop_deadline:
                        for shard in self.shards:
                            if not shard.finished:
                                shard.lost = "no final numbers after stop"
                        break
                    if now - last_frame < REFRESH_S:
                        continue
                    last_frame = now
                    self.arrival_samples.append((now, self.arrived()))
                    if now - last_system >= SYSTEM_POLL_S:
                        last_system = now
                        self.system = await read_system(http, self.config.url)
                        self.sample_timeline()
                    if live is not None:
                        live.update(render(self.snapshot(), self.console.size), refresh=True)
                    elif now - last_line >= self.config.status_every_s:
                        last_line = now
                        self.console.print(
                            status_line(self.snapshot()), markup=False, highlight=False
                        )
                if live is not None:
                    live.update(render(self.snapshot(), self.console.size), refresh=True)

    def handle(self, message: Message) -> None:
        if not 0 <= message.shard < len(self.shards):
            return
        shard = self.shards[message.shard]
        if shard.lost is not None and not isinstance(message, Done):
            return
        shard.last_seen = time.monotonic()
        if isinstance(message, Hello):
            shard.hello = True
            shard.where = message.where
        elif isinstance(message, Tick | Done):
            if message.stats is not None:  # None: recorded into self.stats already
                shard.stats.merge(message.stats)
                if shard.stats is not self.stats:
                    self.stats.merge(message.stats)
            shard.gauges = message.gauges
            if isinstance(message, Done):
                shard.done = True
                shard.lost = None
                shard.summary = message.summary
        elif isinstance(message, Ready):
            shard.ready = True
        elif isinstance(message, Failed):
            shard.lost = f"failed: {message.error}"

    async def check_lost(self) -> None:
        now = time.monotonic()
        for shard in self.shards:
            if shard.finished:
                continue
            reason = self.fleet.gone(shard.index)
            if reason is not None:
                # Its last words may have arrived after the last read: read once more.
                for message in await self.fleet.messages():
                    self.handle(message)
                if shard.finished:
                    continue
            if reason is None and now - shard.last_seen > self.config.lost_after_s:
                reason = f"no stats for {now - shard.last_seen:.0f}s"
            if reason is not None:
                shard.lost = reason
                self.console.print(
                    f"[bold red]LOST {self.fleet.kind} {shard.index} ({shard.where}):[/] {reason}"
                )

    async def maybe_open_doors(self) -> None:
        """Doors open for all at once when every live shard is ready (lost ones are not)."""
        if not self.config.schedule.doors_open or self.stopping:
            return
        if self.open_wall is None:
            if not all(shard.ready or shard.finished for shard in self.shards):
                return
            self.open_wall = time.time() + self.fleet.start_lead_s
            if self.on_doors is not None:
                self.on_doors(self.open_wall)
        for shard in self.shards:
            if not shard.finished and not shard.open_sent:
                shard.open_sent = True
                await self.fleet.command(shard.index, Open(self.open_wall))

    # -- views -----------------------------------------------------------------------------

    def arrived(self) -> int:
        return sum(shard.gauges.arrived for shard in self.shards)

    def last_sale(self) -> dict[str, Any] | None:
        return next((s.gauges.last_sale for s in self.shards if s.gauges.last_sale), None)

    def achieved_now(self) -> float:
        if len(self.arrival_samples) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self.arrival_samples[0], self.arrival_samples[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0

    def warnings(self) -> list[str]:
        found = []
        limit_ms = self.config.max_lag_s * 1000
        many = len(self.shards) > 1
        for shard in self.shards:
            name = f"{self.fleet.kind} {shard.index} " if many else "generator "
            gauges = shard.gauges
            if shard.lost:
                found.append(f"{name}LOST: {shard.lost}")
                continue
            if gauges.cpu_percent > self.config.max_cpu_percent:
                found.append(f"{name}CPU {gauges.cpu_percent:.0f}% (saturated?)")
            if not gauges.dispatch_done and gauges.schedule_lag_ms > limit_ms:
                found.append(f"{name}behind schedule by {gauges.schedule_lag_ms:.0f}ms")
            if gauges.loop_lag_ms > limit_ms and gauges.stage != "release":
                found.append(f"{name}event-loop lag {gauges.loop_lag_ms:.0f}ms")
        return found

    def snapshot(self) -> Snapshot:
        schedule = self.config.schedule
        elapsed = max(0.0, time.time() - self.start_wall)
        dispatching = not all(s.gauges.dispatch_done or s.finished for s in self.shards)
        target = None
        if schedule.rate is not None:
            target = schedule.rate.at(elapsed) if dispatching else 0.0
        in_flight: collections.Counter[str] = collections.Counter()
        for shard in self.shards:
            in_flight.update(shard.gauges.in_flight)
        system = dict(self.system or {})
        sale = self.last_sale()
        if sale and "stock left" not in system:
            system["stock left (session)"] = sale.get("stock_left", "?")
        system["sockets open"] = sum(s.gauges.sockets for s in self.shards)
        gauges = [shard.gauges for shard in self.shards]
        many = len(self.shards) > 1
        return Snapshot(
            stats=self.stats,
            elapsed_s=elapsed,
            model=f"{schedule.describe()}, {self.fleet.count} {plural(self.fleet.kind)}"
            if many
            else schedule.describe(),
            target_per_s=target,
            achieved_per_s=self.achieved_now(),
            arrived=self.arrived(),
            planned=schedule.customers,
            in_flight=dict(in_flight),
            cpu_percent=max((g.cpu_percent for g in gauges), default=0.0),
            loop_lag_ms=max((g.loop_lag_ms for g in gauges), default=0.0),
            schedule_lag_ms=max((g.schedule_lag_ms for g in gauges), default=0.0),
            max_schedule_lag_ms=max((g.max_schedule_lag_ms for g in gauges), default=0.0),
            warnings=self.warnings(),
            system=system,
            stopping=self.stopping,
            processes=[shard.row() for shard in self.shards] if many else [],
            slo_results=self.slos_now(),
            dispatching=dispatching,
        )

    def sample_timeline(self) -> None:
        """Once a second, what is in flight: the active-customers chart of the report."""
        in_flight: collections.Counter[str] = collections.Counter()
        for shard in self.shards:
            in_flight.update(shard.gauges.in_flight)
        self.timeline.append(
            {
                "t_s": round(max(0.0, time.time() - self.start_wall), 2),
                "arrived": self.arrived(),
                "in_flight": sum(in_flight.values()),
                "by_phase": dict(in_flight),
                "sockets": sum(shard.gauges.sockets for shard in self.shards),
            }
        )

    def slos_now(self) -> list[SloResult]:
        """Each SLO judged on the run so far, at most once a second (a percentile costs ~1 ms)."""
        now = time.monotonic()
        if now - self.slos_at >= SLO_EVERY_S:
            self.slos_at = now
            self.slo_results = evaluate(self.config.slos, self.stats)
        return self.slo_results

    # -- the verdict -----------------------------------------------------------------------

    def finish(self) -> RunResult:
        conclusion = conclude(
            self.config,
            self.stats,
            self.shards,
            started_at=self.start_wall,
            open_at_s=None if self.open_wall is None else self.open_wall - self.start_wall,
            interrupted=self.interrupted,
            aborted=self.aborted,
            system=self.system,
            timeline=self.timeline,
        )
        if not self.config.dashboard:
            self.console.print(status_line(self.snapshot()), markup=False, highlight=False)
        for row in conclusion.report.generator.processes:
            self.console.print(
                f"{row['kind']} {row['shard']} ({row['where']}): {row['status']}, "
                f"{row['finished']} customers, CPU {row['cpu_percent']:.0f}%, "
                f"loop lag p99 {row['loop_lag_p99_ms']:.1f}ms",
                highlight=False,
            )
        verdict_lines(
            self.console,
            conclusion.slo_results,
            conclusion.report.run,
            conclusion.written,
            self.stats,
            unwritten=conclusion.unwritten,
        )
        journeys = [j for engine in getattr(self.fleet, "engines", []) for j in engine.journeys]
        return RunResult(
            conclusion.report, self.stats, conclusion.exit_code, journeys, conclusion.unwritten
        )


def plural(kind: str) -> str:
    return {"process": "processes", "in-process": "in-process shard"}.get(kind, f"{kind}s")


async def preflight(url: str) -> None:
    """Refuse to start against an address that is not a healthy flashsale server (nothing
    listening, something else listening, or its Redis away): a setup error, not a result."""
    hint = "is `flashsale serve` running there?"
    try:
        async with HttpClient() as client, asyncio.timeout(5):
            response = await client.request("GET", f"{url}/healthz")
    except HTTP_ERRORS as error:
        raise ConfigError(f"cannot reach {url} ({describe(error)}); {hint}") from None
    try:
        health = json.loads(response.body)
    except ValueError:
        health = None
    if not isinstance(health, dict) or "status" not in health:
        raise ConfigError(
            f"{url} is not a flashsale server (GET /healthz answered {response.status} "
            f"without flashsale's health document); {hint}"
        )
    if response.status != 200:
        raise ConfigError(f"{url} is not healthy: GET /healthz answered {response.status} {health}")


async def read_system(http: HttpClient, url: str) -> dict[str, object]:
    """The system panel from the server's /metrics: queues, stock, its sockets (HTTP only:
    the generator sees the system as its customers and operators do)."""
    try:
        async with asyncio.timeout(1.0):
            response = await http.request("GET", f"{url}/metrics")
    except HTTP_ERRORS as error:  # a panel must not end the run
        return {"server metrics": f"unavailable ({describe(error)})"}
    if response.status != 200:
        return {"server metrics": f"unavailable (http {response.status})"}
    found: dict[str, object] = {}
    samples = [
        sample
        for family in text_string_to_metric_families(response.body.decode("utf-8", "replace"))
        for sample in family.samples
    ]
    for metric, label, title in SYSTEM_METRICS:
        for sample in samples:
            if sample.name == metric and (label is None or label in sample.labels.values()):
                found[title] = int(sample.value)
                break
    return found


def run(
    config: LoadConfig,
    console: Console | None = None,
    fleet: Fleet | None = None,
    on_doors: Callable[[float], None] | None = None,
) -> RunResult:
    """Run a scenario to completion (or Ctrl-C) on the fleet it asks for; the report and the
    exit code."""
    fleet = fleet or make_fleet(config)
    return loop.run(Coordinator(config, fleet, console, on_doors).run())

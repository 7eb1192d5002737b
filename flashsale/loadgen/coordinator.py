"""Runs one scenario over N generator shards (local processes or agents) as one merged run."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import multiprocessing
import signal
import time
from dataclasses import dataclass, field
from queue import Empty
from typing import Any, Protocol

from rich.console import Console
from rich.live import Live

from flashsale.errors import ConfigError
from flashsale.loadgen import loop
from flashsale.loadgen.dashboard import Snapshot, render, status_line, verdict_lines
from flashsale.loadgen.report import RunInfo
from flashsale.loadgen.runner import (
    REFRESH_S,
    SYSTEM_POLL_S,
    LoadConfig,
    RunResult,
    conclude,
    generator_reasons,
    lag_views,
    preflight,
    read_system,
)
from flashsale.loadgen.shard import config_to_spec, process_main
from flashsale.loadgen.stats import RunStats, decode, new_histogram, summarize

STOP_GRACE_S = 20.0  # after Ctrl-C, how long shards get to send their final stats


class Fleet(Protocol):
    """The generator shards as the coordinator sees them, wherever they run."""

    count: int
    kind: str  # "process" | "agent"
    start_lead_s: float  # how far ahead the shared start and release instants are set

    async def start(self, spec: dict[str, Any]) -> None: ...

    async def messages(self) -> list[dict[str, Any]]: ...

    async def command(self, shard: int, message: dict[str, Any]) -> None: ...

    def gone(self, shard: int) -> str | None: ...

    async def close(self) -> None: ...


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

    async def start(self, spec: dict[str, Any]) -> None:
        for index in range(self.count):
            process = self.context.Process(
                target=process_main,
                args=(spec, index, self.count, self.up, self.downs[index]),
                name=f"loadgen-shard-{index}",
                daemon=True,
            )
            process.start()
            self.processes.append(process)

    async def messages(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        while True:
            try:
                found.append(self.up.get_nowait())
            except Empty:
                break
        if not found:
            await asyncio.sleep(0.02)
        return found

    async def command(self, shard: int, message: dict[str, Any]) -> None:
        self.downs[shard].put(message)

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


@dataclass
class ShardState:
    """What the coordinator knows of one shard."""

    index: int
    stats: RunStats
    where: str = "?"
    hello: bool = False
    ready: bool = False
    done: bool = False
    lost: str | None = None
    last_seen: float = 0.0
    gauges: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] | None = None
    open_sent: bool = False

    @property
    def finished(self) -> bool:
        return self.done or self.lost is not None


class Coordinator:
    """Starts the shards together, opens their doors together, merges what they measure."""

    def __init__(
        self,
        config: LoadConfig,
        fleet: Fleet,
        console: Console | None = None,
        *,
        accept_timeout_s: float = 60.0,
        lost_after_s: float = 10.0,
    ) -> None:
        self.config = config
        self.fleet = fleet
        self.console = console or Console()
        self.accept_timeout_s = accept_timeout_s
        self.lost_after_s = lost_after_s
        self.stats = RunStats(interval_s=config.interval_s)
        self.shards = [ShardState(i, RunStats(config.interval_s)) for i in range(fleet.count)]
        self.start_wall = 0.0
        self.open_wall: float | None = None
        self.stopping = False
        self.stop_deadline = float("inf")
        self.started_at = time.time()
        self.arrival_samples: collections.deque[tuple[float, int]] = collections.deque(maxlen=16)
        self.system: dict[str, object] | None = None

    # -- the run ---------------------------------------------------------------------------

    async def run(self) -> RunResult:
        await preflight(self.config.url)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self.interrupt)
        try:
            await self.fleet.start(config_to_spec(self.config))
            await self.wait_for_hellos()
            self.start_wall = time.time() + self.fleet.start_lead_s
            self.started_at = self.start_wall
            for shard in self.shards:
                await self.fleet.command(shard.index, {"start_at": self.start_wall})
                shard.last_seen = time.monotonic() + self.fleet.start_lead_s
            await self.watch()
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
            await self.fleet.close()
        return self.finish()

    def interrupt(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.stop_deadline = time.monotonic() + STOP_GRACE_S
        self.console.print("[yellow]interrupted: stopping every shard and writing the report[/]")
        for shard in self.shards:
            asyncio.get_running_loop().create_task(self.fleet.command(shard.index, {"stop": 1}))

    async def wait_for_hellos(self) -> None:
        """Every shard must check in before anyone starts: a missing agent is a setup error."""
        deadline = time.monotonic() + self.accept_timeout_s
        while not all(shard.hello for shard in self.shards):
            if self.stopping:
                break
            if time.monotonic() > deadline:
                accepted = sum(shard.hello for shard in self.shards)
                for shard in self.shards:
                    await self.fleet.command(shard.index, {"stop": 1})
                hint = (
                    "; start `flashsale loadgen-agent --redis-url ...` on each load machine"
                    if self.fleet.kind == "agent"
                    else ""
                )
                raise ConfigError(
                    f"only {accepted} of {self.fleet.count} {plural(self.fleet.kind)} accepted "
                    f"the run within {self.accept_timeout_s:g}s{hint}"
                )
            for shard in self.shards:
                reason = self.fleet.gone(shard.index)
                if reason is not None and not shard.hello:
                    raise ConfigError(f"generator {shard.index} failed to start: {reason}")
            for message in await self.fleet.messages():
                self.handle(message)

    async def watch(self) -> None:
        live = (
            Live(console=self.console, auto_refresh=False, transient=False)
            if self.config.dashboard
            else None
        )
        redis_client = None
        if self.config.redis_url:
            import redis.asyncio as aioredis

            redis_client = aioredis.Redis.from_url(
                self.config.redis_url, socket_timeout=1, socket_connect_timeout=1
            )
        last_frame = last_line = last_system = 0.0
        try:
            with live if live is not None else contextlib.nullcontext():
                while not all(shard.finished for shard in self.shards):
                    for message in await self.fleet.messages():
                        self.handle(message)
                    self.check_lost()
                    self.maybe_open_doors()
                    await self.maybe_open_doors_async()
                    now = time.monotonic()
                    if self.stopping and now > self.stop_deadline:
                        for shard in self.shards:
                            if not shard.finished:
                                shard.lost = "no final stats after stop"
                        break
                    if now - last_frame < REFRESH_S:
                        continue
                    last_frame = now
                    self.arrival_samples.append((now, self.arrived()))
                    if redis_client is not None and now - last_system >= SYSTEM_POLL_S:
                        last_system = now
                        self.system = await read_system(
                            redis_client, self.config.stock_key, self.last_sale()
                        )
                    if live is not None:
                        live.update(render(self.snapshot()), refresh=True)
                    elif now - last_line >= self.config.status_every_s:
                        last_line = now
                        self.console.print(
                            status_line(self.snapshot()), markup=False, highlight=False
                        )
                if live is not None:
                    live.update(render(self.snapshot()), refresh=True)
        finally:
            if redis_client is not None:
                await redis_client.aclose()

    def handle(self, message: dict[str, Any]) -> None:
        index = int(message.get("shard", -1))
        if not 0 <= index < len(self.shards):
            return
        shard = self.shards[index]
        if shard.lost is not None and message.get("kind") != "done":
            return
        shard.last_seen = time.monotonic()
        kind = message.get("kind")
        if kind == "hello":
            shard.hello = True
            shard.where = f"{message.get('host', '?')}:{message.get('pid', '?')}"
        elif kind in ("tick", "done"):
            delta = RunStats.from_dict(message["stats"])
            shard.stats.merge(delta)
            self.stats.merge(delta)
            shard.gauges = message.get("gauges", {})
            if kind == "done":
                shard.done = True
                shard.lost = None
                shard.summary = message.get("summary")
        elif kind == "ready":
            shard.ready = True
        elif kind == "failed":
            shard.lost = f"failed: {message.get('error', '?')}"

    def check_lost(self) -> None:
        now = time.monotonic()
        for shard in self.shards:
            if shard.finished:
                continue
            reason = self.fleet.gone(shard.index)
            if reason is None and now - shard.last_seen > self.lost_after_s:
                reason = f"no stats for {now - shard.last_seen:.0f}s"
            if reason is not None:
                shard.lost = reason
                self.console.print(
                    f"[bold red]LOST {self.fleet.kind} {shard.index} ({shard.where}):[/] {reason}"
                )

    def maybe_open_doors(self) -> None:
        """Doors open for all at once when every live shard is ready (lost ones are not)."""
        if not self.config.schedule.doors_open or self.open_wall is not None or self.stopping:
            return
        if all(shard.ready or shard.finished for shard in self.shards):
            self.open_wall = time.time() + self.fleet.start_lead_s

    async def maybe_open_doors_async(self) -> None:
        if self.open_wall is None:
            return
        for shard in self.shards:
            if not shard.finished and not shard.open_sent:
                shard.open_sent = True
                await self.fleet.command(shard.index, {"open_at": self.open_wall})

    # -- views -----------------------------------------------------------------------------

    def arrived(self) -> int:
        return sum(int(shard.gauges.get("arrived", 0)) for shard in self.shards)

    def last_sale(self) -> dict[str, Any] | None:
        for shard in self.shards:
            if shard.gauges.get("last_sale"):
                return dict(shard.gauges["last_sale"])
        return None

    def process_rows(self) -> list[dict[str, Any]]:
        rows = []
        for shard in self.shards:
            gauges = shard.gauges
            summary = shard.summary or {}
            status = (
                "LOST" if shard.lost else "done" if shard.done else gauges.get("stage", "starting")
            )
            rows.append(
                {
                    "shard": shard.index,
                    "kind": self.fleet.kind,
                    "where": shard.where,
                    "status": status,
                    "arrived": int(gauges.get("arrived", 0)),
                    "finished": shard.stats.finished,
                    "cpu_percent": round(
                        float(summary.get("cpu_percent", gauges.get("cpu_percent", 0.0))), 1
                    ),
                    "loop_lag_p99_ms": float(summarize(shard.stats.loop_lag)["p99"]),
                    "loop_lag_ms_now": round(float(gauges.get("loop_lag_ms", 0.0)), 3),
                    "max_schedule_lag_ms": round(float(gauges.get("max_schedule_lag_ms", 0.0)), 3),
                    "release_lag_p99_ms": float(summarize(shard.stats.release_lag)["p99"])
                    if shard.stats.release_lag.get_total_count()
                    else None,
                    "lost": shard.lost,
                }
            )
        return rows

    def achieved_now(self) -> float:
        if len(self.arrival_samples) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self.arrival_samples[0], self.arrival_samples[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0

    def warnings(self) -> list[str]:
        found = []
        limit_ms = self.config.max_lag_s * 1000
        for shard in self.shards:
            name = f"{self.fleet.kind} {shard.index}"
            if shard.lost:
                found.append(f"{name} LOST: {shard.lost}")
                continue
            cpu = float(shard.gauges.get("cpu_percent", 0.0))
            if cpu > self.config.max_cpu_percent:
                found.append(f"{name} CPU {cpu:.0f}% (saturated?)")
            lag = float(shard.gauges.get("loop_lag_ms", 0.0))
            if lag > limit_ms and shard.gauges.get("stage") != "release":
                found.append(f"{name} event-loop lag {lag:.0f}ms")
        return found

    def snapshot(self) -> Snapshot:
        schedule = self.config.schedule
        elapsed = max(0.0, time.time() - self.start_wall)
        dispatching = not all(s.gauges.get("dispatch_done") or s.finished for s in self.shards)
        target = None
        if schedule.rate is not None:
            target = schedule.rate.at(elapsed) if dispatching else 0.0
        in_flight: collections.Counter[str] = collections.Counter()
        for shard in self.shards:
            in_flight.update(shard.gauges.get("in_flight", {}))
        system = dict(self.system or {})
        sale = self.last_sale()
        if sale and "stock_left" not in system:
            system["stock_left (session)"] = sale.get("stock_left", "?")
        system["sockets open"] = sum(int(s.gauges.get("sockets", 0)) for s in self.shards)
        gauges = [shard.gauges for shard in self.shards]
        return Snapshot(
            stats=self.stats,
            elapsed_s=elapsed,
            model=f"{schedule.describe()}, {self.fleet.count} {plural(self.fleet.kind)}",
            target_per_s=target,
            achieved_per_s=self.achieved_now(),
            arrived=self.arrived(),
            planned=schedule.customers,
            in_flight=dict(in_flight),
            cpu_percent=max((float(g.get("cpu_percent", 0.0)) for g in gauges), default=0.0),
            loop_lag_ms=max((float(g.get("loop_lag_ms", 0.0)) for g in gauges), default=0.0),
            schedule_lag_ms=max(
                (float(g.get("schedule_lag_ms", 0.0)) for g in gauges), default=0.0
            ),
            max_schedule_lag_ms=max(
                (float(g.get("max_schedule_lag_ms", 0.0)) for g in gauges), default=0.0
            ),
            warnings=self.warnings(),
            system=system,
            stopping=self.stopping,
            processes=self.process_rows(),
        )

    # -- the verdict -----------------------------------------------------------------------

    def finish(self) -> RunResult:
        config = self.config
        schedule = config.schedule
        summaries = [shard.summary for shard in self.shards if shard.summary]
        elapsed = max((float(s["elapsed_s"]) for s in summaries), default=0.0)
        cpu_s = sum(float(s["cpu_s"]) for s in summaries)
        dispatch_lag = new_histogram()
        reasons: list[str] = []
        for shard in self.shards:
            name = f"{self.fleet.kind} {shard.index} ({shard.where})"
            if shard.lost is not None:
                reasons.append(f"{name} lost: {shard.lost}; its customers are missing")
                continue
            summary = shard.summary or {}
            shard_lag = decode(summary["dispatch_lag"]) if summary else new_histogram()
            dispatch_lag.add(shard_lag)
            for reason in generator_reasons(
                config,
                cpu_percent=float(summary.get("cpu_percent", 0.0)),
                dispatch_lag=shard_lag,
                stats=shard.stats,
            ):
                reasons.append(f"{name}: {reason}")
        dispatch = summarize(dispatch_lag)
        loop_lag = summarize(self.stats.loop_lag)
        arrived = sum(int(s["arrived"]) for s in summaries)
        target, achieved = self.rates(summaries, arrived)
        finished = self.stats.finished
        interrupted = self.stopping or any(s.get("interrupted") for s in summaries)
        info = RunInfo(
            url=config.url,
            model=schedule.model,
            schedule=f"{schedule.describe()}, {self.fleet.count} shards ({self.fleet.kind})",
            started_at=self.started_at,
            elapsed_s=elapsed,
            planned_customers=schedule.customers,
            target_per_s=target,
            achieved_per_s=achieved,
            # The saturation figure is the busiest process's: one pinned core distorts its share.
            cpu_percent=max((float(s["cpu_percent"]) for s in summaries), default=0.0),
            max_schedule_lag_ms=max(
                (float(sh.gauges.get("max_schedule_lag_ms", 0.0)) for sh in self.shards),
                default=0.0,
            ),
            max_dispatch_lag_ms=float(dispatch["max"]),
            loop_lag_p99_ms=float(loop_lag["p99"]),
            loop_lag_max_ms=float(loop_lag["max"]),
            valid=not reasons,
            invalid_reasons=reasons,
            interrupted=interrupted,
            cancelled=sum(int(s["cancelled"]) for s in summaries),
            cards_spec=config.cards.spec(),
            tokenize=config.tokenize,
            timeout_s=config.timeout_s,
            max_in_flight=config.max_in_flight,
            doors_open=self.doors_info(summaries),
            system=self.system,
            cpu_ms_per_customer=1000 * cpu_s / finished if finished else None,
            # Each process's own peak, added up: an upper bound of sockets open at once.
            peak_sockets=sum(int(sh.gauges.get("peak_sockets", 0)) for sh in self.shards),
            open_files_limit=min((int(s["open_files_limit"]) for s in summaries), default=0),
            processes=self.process_rows(),
            lost=[
                f"{self.fleet.kind} {s.index} ({s.where}): {s.lost}" for s in self.shards if s.lost
            ],
            **lag_views(self.stats),
        )
        report, slo_results, code = conclude(config, self.stats, info, bool(reasons))
        self.print_verdict(info, slo_results)
        return RunResult(report, self.stats, code, [])

    def rates(self, summaries: list[dict[str, Any]], arrived: int) -> tuple[float | None, float]:
        schedule = self.config.schedule
        elapsed = max((float(s["elapsed_s"]) for s in summaries), default=0.0)
        if schedule.rate is None:
            return None, self.stats.finished / elapsed if elapsed > 0 else 0.0
        firsts = [s["first_dispatch_s"] for s in summaries if s["first_dispatch_s"] is not None]
        lasts = [s["last_dispatch_s"] for s in summaries if s["last_dispatch_s"] is not None]
        last_offset = max((float(s["last_offset_s"]) for s in summaries), default=0.0)
        spans = arrived - 1
        if spans <= 0 or not firsts:
            return schedule.rate.end_per_s, 0.0
        target = spans / last_offset if last_offset > 0 else schedule.rate.end_per_s
        window = max(lasts) - min(firsts)
        return target, spans / window if window > 0 else 0.0

    def doors_info(self, summaries: list[dict[str, Any]]) -> dict[str, Any] | None:
        doors = [s["doors"] for s in summaries if s.get("doors")]
        if not self.config.schedule.doors_open:
            return None
        firsts = [d["first_submit_s"] for d in doors if d["first_submit_s"] is not None]
        lasts = [d["last_submit_s"] for d in doors if d["last_submit_s"] is not None]
        return {
            "ready": sum(int(d["ready"]) for d in doors),
            "dropped_out": sum(int(d["dropped_out"]) for d in doors),
            "opened_at_s": None if self.open_wall is None else self.open_wall - self.start_wall,
            "submits": sum(int(d["submits"]) for d in doors),
            "submit_spread_ms": (max(lasts) - min(firsts)) * 1000 if firsts else None,
        }

    def print_verdict(self, info: RunInfo, slo_results: list[Any]) -> None:
        if not self.config.dashboard:
            self.console.print(status_line(self.snapshot()), markup=False, highlight=False)
        for row in info.processes:
            self.console.print(
                f"{row['kind']} {row['shard']} ({row['where']}): {row['status']}, "
                f"{row['finished']} customers, CPU {row['cpu_percent']:.0f}%, "
                f"loop lag p99 {row['loop_lag_p99_ms']:.1f}ms",
                highlight=False,
            )
        reports = (self.config.report_path, self.config.html_path)
        verdict_lines(self.console, slo_results, info, reports)


def plural(kind: str) -> str:
    return "processes" if kind == "process" else f"{kind}s"


def run_processes(
    config: LoadConfig, processes: int, console: Console | None = None, *, lost_after_s: float = 10
) -> RunResult:
    """Run a scenario over `processes` local generator processes and merge them."""
    fleet = LocalProcesses(processes)
    return loop.run(Coordinator(config, fleet, console, lost_after_s=lost_after_s).run())

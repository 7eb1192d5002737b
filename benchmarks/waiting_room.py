"""Benchmark the waiting room's queue: customers one server process holds with position updates.

For each size N (--customers, one at a time, a fresh pipeline each) starts a private pipeline on
loopback (redis-server, stripe-sim, ONE `flashsale serve --waiting-room on --room-doors closed`;
no worker: nobody is admitted, so nobody pays) and runs `flashsale loadgen` (a separate process,
from this tree) with N customers arriving at --rate: each gets a ticket from GET /session,
connects its websocket and waits in the queue until its patience runs out, then leaves; the run
ends by itself. The patience is sized so that all N are queued together for the whole window.

Once the room's `queued` count (read from the private Redis) is N and no ticket lacks a socket,
it waits one update period, then measures over --window seconds:
- server RSS (VmRSS) idle before the crowd, while holding N, after the crowd left -> KiB per
  queued socket; the server's open file descriptors; its CPU (percent of one core);
- Redis commands in the window: INFO total_commands_processed (commands clients sent; a script
  counts once) and the sum of INFO commandstats (also the commands inside scripts), both without
  this benchmark's own INFO and the /healthz probes' PING -> per queued customer per second;
- `queue` events the server emitted in the window (its /metrics) -> per customer per second and
  per update tick (every queued socket is sent one per UPDATE_S);
- position updates the customers received over the whole run (the loadgen report's room count),
  against what they were owed: one on joining, then one per UPDATE_S of patience;
- the slowest /healthz answer in the window (probed every 0.25 s): the update loop's stall;
- the generator's RSS and CPU.
Prints a table, the load average and the command that reproduces it. Never asserts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import redis
from probes import HealthProber
from provenance import fmt, print_provenance

from flashsale.core import keys
from flashsale.core import waiting_room as room
from flashsale.loadgen.engine import raise_open_files_limit
from flashsale.ops.pipeline import LocalPipeline
from flashsale.ops.processes import Child, descendants, flashsale_argv, process_cpu_s
from flashsale.server.waiting_room import STEP_S, UPDATE_S
from flashsale.settings import Settings

SKU = Settings().sale_sku
PROBE_S = 0.25
# Between two updates Redis sees no ZSCORE for UPDATE_S minus an update's ~1 s (at 10,000);
# inside one, the server can stall ~1-2 s between batches (the /healthz column).
QUIET_S = 0.5 * UPDATE_S
LOG_PROBLEM = re.compile(r"Traceback|ERROR|CRITICAL|Exception|Too many open files|WARNING")


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def open_fds(pid: int) -> int:
    try:
        return len(list(Path(f"/proc/{pid}/fd").iterdir()))
    except (FileNotFoundError, PermissionError):
        return -1


def tree_cpu_s(pids: list[int]) -> float:
    return sum(process_cpu_s(pid) for pid in pids)


def scrape(url: str) -> dict[str, float]:
    """The server's /metrics we need: `queue` emits and sockets connected."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    found = {"queue_emits": 0.0, "sockets": 0.0}
    for line in text.splitlines():
        if line.startswith('flashsale_socket_emits_total{event="queue"}'):
            found["queue_emits"] = float(line.split()[-1])
        elif line.startswith("flashsale_sockets_connected "):
            found["sockets"] = float(line.split()[-1])
    return found


def redis_figures(client: redis.Redis) -> dict[str, Any]:
    """total_commands_processed and commandstats calls, from ONE INFO (it counts itself once)."""
    info = client.info("everything")
    calls = {
        name.removeprefix("cmdstat_"): int(value["calls"])
        for name, value in info.items()
        if name.startswith("cmdstat_")
    }
    return {"total": int(info["total_commands_processed"]), "calls": calls}


def wait_all_queued(
    client: redis.Redis, url: str, customers: int, deadline: float, loadgen: Child
) -> tuple[int, float]:
    """Until N are queued and connected (none in `gone`), the count stops rising for 30 s, the
    deadline, or loadgen exits; returns (queued, seconds taken)."""
    started = time.monotonic()
    best, best_at = -1, started
    last_print = 0.0
    while time.monotonic() < deadline and loadgen.alive():
        counts = room.counts(client, SKU)
        gone = int(client.zcard(keys.room_gone(SKU)))
        queued = counts["queued"]
        if queued > best:
            best, best_at = queued, time.monotonic()
        if time.monotonic() - last_print > 10:
            last_print = time.monotonic()
            sockets = scrape(url)["sockets"]
            print(
                f"  {time.monotonic() - started:5.0f}s queued {queued}, without socket {gone}, "
                f"sockets {sockets:.0f}",
                flush=True,
            )
        if queued >= customers and gone == 0:
            return queued, time.monotonic() - started
        if time.monotonic() - best_at > 30:
            print(f"  queued stopped rising at {queued}", flush=True)
            return queued, time.monotonic() - started
        time.sleep(0.5)
    return room.counts(client, SKU)["queued"], time.monotonic() - started


def log_problems(log_dir: Path) -> dict[str, list[str]]:
    """Lines that look like trouble in each component's log (first few, and a count)."""
    found: dict[str, list[str]] = {}
    for path in sorted(log_dir.glob("*.log")):
        lines = [
            line
            for line in path.read_text(errors="replace").splitlines()
            if LOG_PROBLEM.search(line) and "Memory overcommit" not in line
        ]
        if lines:
            found[path.name] = lines
    return found


def run_size(customers: int, args: argparse.Namespace, log_root: Path) -> dict[str, Any]:
    directory = log_root / f"n{customers}"
    arrive_s = customers / args.rate
    # All N queued at once from the last arrival through the window, with room for a slow ramp.
    patience_s = args.patience or round(arrive_s * 1.5 + args.window + 2 * UPDATE_S + 20)
    row: dict[str, Any] = {"customers": customers, "patience_s": patience_s}
    with LocalPipeline(directory) as pipeline:
        pipeline.start_redis()
        pipeline.start_simulator()
        server = pipeline.start_server("--waiting-room", "on", "--room-doors", "closed")
        url = pipeline.server_url
        client = redis.Redis.from_url(pipeline.redis_url, decode_responses=True)
        assert client.connection_pool.connection_kwargs["port"] != 6379
        time.sleep(2)
        server_pids = descendants(server.pid)
        row["server_processes"] = len(server_pids)
        row["rss_before_kib"] = rss_kib(server_pids)
        row["fds_before"] = open_fds(server.pid)
        report_path = directory / "loadgen.json"
        loadgen = Child(
            "loadgen",
            flashsale_argv(
                *("loadgen", "--url", url, "--customers", str(customers)),
                *("--rate", f"{args.rate:g}/s", "--patience", f"{patience_s}s"),
                *("--processes", str(args.processes), "--cards", "visa"),
                *("--tokenize", "test-tokens", "--timeout", "60s", "--no-dashboard"),
                *("--no-default-slos", "--max-lag", "60s", "--max-cpu", "101"),
                *("--report", str(report_path)),
            ),
            pipeline.log_dir / "loadgen.log",
            env=pipeline.env,
        )
        limit_s = arrive_s * 2 + patience_s + 120
        started = time.monotonic()
        loadgen.start()
        try:
            with HealthProber(url, every_s=PROBE_S) as prober:
                deadline = started + patience_s - args.window - 2 * UPDATE_S - 10
                queued, took = wait_all_queued(client, url, customers, deadline, loadgen)
                row["queued_after_s"] = took
                try:
                    row.update(measure_window(server, loadgen, client, url, args, prober))
                except (redis.RedisError, httpx.HTTPError, OSError) as error:
                    row["failure"] = f"{type(error).__name__}: {error}"
                row["queued_at_start"] = queued
            # The crowd runs out of patience and leaves; the run ends by itself.
            while loadgen.alive() and time.monotonic() - started < limit_s:
                time.sleep(1)
            row["loadgen_exit"] = loadgen.process.poll() if loadgen.process else None
            if loadgen.alive():
                row["loadgen_exit"] = "killed at the time limit"
            loadgen.stop()
            row["wall_s"] = time.monotonic() - started
            time.sleep(args.grace + 2)  # the room lets the gone go after its grace
            row["rss_after_kib"] = rss_kib(descendants(server.pid))
            row["queued_after_run"] = room.counts(client, SKU)["queued"]
            row["server_alive"] = server.alive()
        finally:
            loadgen.stop()
    row["problems"] = log_problems(directory / "logs")
    if report_path.exists():
        report = json.loads(report_path.read_text())
        got = report.get("room", {})
        row["room"] = got
        row["outcomes"] = {k: v for k, v in report["outcomes"].items() if v}
        row["errors"] = dict(list(report.get("errors", {}).items())[:4])
        row["server_errors"] = report.get("server_errors", 0)
        row["gen_valid"] = report["generator"]["valid"]
        row["gen_invalid"] = report["generator"]["invalid_reasons"]
        row["gen_peak_sockets"] = report["generator"]["peak_sockets"]
        row["gen_cpu_pct_run"] = report["generator"]["cpu_percent"]
        queued_n = got.get("queued", 0)
        if queued_n:
            # Owed: one on joining (welcome), then one per UPDATE_S while patient.
            owed = 1 + patience_s / UPDATE_S
            row["updates_per_customer"] = got.get("position_updates", 0) / queued_n
            row["updates_owed"] = owed
    row["log_dir"] = str(directory / "logs")
    return row


def zscore_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return int(stats.get("cmdstat_zscore", {}).get("calls", 0))


def wait_tick_end(client: redis.Redis, timeout_s: float = 3 * UPDATE_S + 30) -> bool:
    """Until the server's next position update is done: its ZSCOREs (one per queued socket,
    core.waiting_room.places, in batches of 500) start, then stay still for QUIET_S. False on
    timeout. The window's true count of updates is checked after: ZSCOREs / held."""
    deadline = time.monotonic() + timeout_s
    base = zscore_calls(client)
    while zscore_calls(client) == base:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    seen, still_since = zscore_calls(client), time.monotonic()
    while time.monotonic() - still_since < QUIET_S:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
        now = zscore_calls(client)
        if now != seen:
            seen, still_since = now, time.monotonic()
    return True


def measure_window(
    server: Child,
    loadgen: Child,
    client: redis.Redis,
    url: str,
    args: argparse.Namespace,
    prober: HealthProber,
) -> dict[str, Any]:
    """From the end of one position update to the end of the K-th after it (K periods of
    UPDATE_S covering --window), so the window holds exactly K updates."""
    ticks = max(1, math.ceil(args.window / UPDATE_S))
    server_pids = descendants(server.pid)
    gen_pids = descendants(loadgen.pid)
    aligned = wait_tick_end(client)
    queued0 = room.counts(client, SKU)["queued"]
    emits0 = scrape(url)["queue_emits"]
    cpu0, gen_cpu0 = tree_cpu_s(server_pids), tree_cpu_s(gen_pids)
    t0 = time.time()
    redis0 = redis_figures(client)
    # Inside the window nothing of ours touches Redis but INFO (ours, subtracted) and the
    # /healthz probes' PING (subtracted).
    rss_samples = []
    for _ in range(ticks):
        aligned = wait_tick_end(client) and aligned
        rss_samples.append(rss_kib(server_pids))
    redis1 = redis_figures(client)
    t1 = time.time()
    cpu1, gen_cpu1 = tree_cpu_s(server_pids), tree_cpu_s(gen_pids)
    metrics1 = scrape(url)
    queued1 = room.counts(client, SKU)["queued"]
    elapsed = t1 - t0
    diff = {
        name: count - redis0["calls"].get(name, 0)
        for name, count in redis1["calls"].items()
        if count - redis0["calls"].get(name, 0)
    }
    ours = diff.pop("info", 0) + diff.pop("ping", 0)
    held = min(queued0, queued1)
    waits = prober.between(t0, t1)
    return {
        "held": held,
        "aligned": aligned,
        "ticks": ticks,
        # The updates the window really held, counted by their lookups (one ZSCORE a socket).
        "ticks_seen": diff.get("zscore", 0) / held if held else None,
        "queued_window": (queued0, queued1),
        "sockets_window": metrics1["sockets"],
        "rss_hold_kib": max(rss_samples),
        "fds_hold": open_fds(server.pid),
        "server_cpu_pct": (cpu1 - cpu0) / elapsed * 100,
        "gen_rss_kib": rss_kib(gen_pids),
        "gen_processes": len(gen_pids),
        "gen_cpu_pct": (gen_cpu1 - gen_cpu0) / elapsed * 100,
        "redis_total": redis1["total"] - redis0["total"] - ours,
        "redis_calls": sum(diff.values()),
        "redis_per_socket": diff.get("zrank", 0) + diff.get("zscore", 0),
        "redis_by_command": dict(sorted(diff.items(), key=lambda kv: -kv[1])[:9]),
        "window_s": elapsed,
        "queue_emits": metrics1["queue_emits"] - emits0,
        "worst_healthz_s": max(waits) if waits else None,
        "healthz_failures": prober.failures,
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    print()
    header = (
        f"{'N':>6} {'held':>6} {'RSS idle':>9} {'RSS held':>9} {'KiB/sock':>8} {'srv CPU':>7} "
        f"{'cmd/c/s':>7} {'sock/c/s':>8} {'fixed/s':>7} {'sent/c/s':>8} {'sent/tick':>9} "
        f"{'recv/c/s':>8} {'owed':>5} {'steps/s':>7} {'healthz':>7} {'gen RSS':>8} "
        f"{'gen CPU':>7} {'fds':>6}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        if "window_s" not in row:
            print(f"{row['customers']:>6,} not measured: {row.get('failure')}")
            continue
        held, window = row["held"], row["window_s"]
        per = held * window if held else None
        recv = row.get("updates_per_customer")
        # Received per customer per second: the updates after the welcome, over the patience.
        recv_rate = (recv - 1) / row["patience_s"] if recv is not None else None
        grown = row["rss_hold_kib"] - row["rss_before_kib"]
        per_update = row["queue_emits"] / row["ticks_seen"] if row["ticks_seen"] else None
        fixed = (row["redis_total"] - row["redis_per_socket"]) / window
        print(
            f"{row['customers']:>6,} {held:>6,} "
            f"{row['rss_before_kib'] / 1024:>7.1f}MB {row['rss_hold_kib'] / 1024:>7.1f}MB "
            f"{fmt(grown / held if held else None, '>8.1f')} "
            f"{row['server_cpu_pct']:>6.0f}% "
            f"{fmt(row['redis_total'] / per if per else None, '>7.3f')} "
            f"{fmt(row['redis_per_socket'] / per if per else None, '>8.3f')} "
            f"{fixed:>7.0f} "
            f"{fmt(row['queue_emits'] / per if per else None, '>8.3f')} "
            f"{fmt(per_update, '>9.0f')} "
            f"{fmt(recv_rate, '>8.3f')} {1 / UPDATE_S:>5.2f} "
            f"{row['redis_by_command'].get('evalsha', 0) / window:>7.1f} "
            f"{fmt(row['worst_healthz_s'], '>6.2f')}s "
            f"{row['gen_rss_kib'] / 1024:>6.0f}MB {row['gen_cpu_pct']:>6.0f}% "
            f"{row['fds_hold']:>6}"
        )
    print(
        "\nKiB/sock = (RSS held - RSS idle) / held; srv CPU = % of one core in the window; "
        "cmd/c/s = Redis commands in the window (INFO total_commands_processed; Redis 7 counts "
        "the commands inside scripts too) per queued customer per second, without our INFO and "
        "the /healthz PINGs; sock/c/s = the part of it that is per socket (ZRANK + ZSCORE of the "
        "updates); fixed/s = the rest a second (admission steps, batch HGET/TIME, loadgen's 1/s "
        "/metrics scrape); sent = `queue` events the server emitted in the window (its "
        "/metrics), per customer per second and per update (counted as ZSCOREs / held); "
        "recv = position updates the "
        "customers received over the whole run (loadgen report), after the first, per second "
        "of patience; owed = 1/UPDATE_S; steps/s = admission steps run a second (the loop aims "
        f"at {1 / STEP_S:g}); healthz = slowest /healthz (probed every {PROBE_S} s) in the "
        "window; gen = the load generator."
    )
    for row in rows:
        print(
            f"\nN={row['customers']:,}: patience {row['patience_s']}s, all queued after "
            f"{fmt(row.get('queued_after_s'), '.0f')}s, queued at window start/end "
            f"{row.get('queued_window')}, sockets {fmt(row.get('sockets_window'), '.0f')}, window "
            f"{fmt(row.get('window_s'), '.1f')}s = {row.get('ticks')} updates (aligned "
            f"{row.get('aligned')}, ZSCOREs/held {fmt(row.get('ticks_seen'), '.2f')}), run "
            f"{fmt(row.get('wall_s'), '.0f')}s, server processes "
            f"{row['server_processes']}, server alive after {row.get('server_alive')}"
        )
        print(
            f"  Redis in window: {row.get('redis_total')} commands (commandstats "
            f"{row.get('redis_calls')}); top {row.get('redis_by_command')}"
        )
        print(
            f"  server RSS after the crowd left {row.get('rss_after_kib', 0) / 1024:.1f} MB, "
            f"queued left {row.get('queued_after_run')}, fds idle/held {row['fds_before']}/"
            f"{row.get('fds_hold')}, /healthz failures {row.get('healthz_failures')}"
        )
        print(
            f"  loadgen: exit {row.get('loadgen_exit')}, room {row.get('room')}, outcomes "
            f"{row.get('outcomes')}, 5xx {row.get('server_errors')}, errors {row.get('errors')}"
        )
        print(
            f"  generator: valid {row.get('gen_valid')} {row.get('gen_invalid') or ''}, peak "
            f"sockets {row.get('gen_peak_sockets')}, {row.get('gen_processes')} processes, run "
            f"CPU {fmt(row.get('gen_cpu_pct_run'), '.0f')}%; position updates per customer "
            f"{fmt(row.get('updates_per_customer'), '.2f')} of "
            f"{fmt(row.get('updates_owed'), '.2f')} owed"
        )
        for name, lines in row["problems"].items():
            print(f"  {name}: {len(lines)} suspicious lines, e.g. {lines[:2]}")
        print(f"  logs: {row['log_dir']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", default="1000,5000,10000", help="sizes, comma-separated")
    parser.add_argument("--rate", type=float, default=120.0, help="arrivals per second")
    parser.add_argument("--window", type=float, default=20.0, help="steady window, seconds")
    parser.add_argument("--patience", type=int, default=0, help="seconds (0: sized per N)")
    parser.add_argument("--processes", type=int, default=1, help="loadgen --processes")
    parser.add_argument("--grace", type=float, default=10.0, help="the room's grace (serve's)")
    args = parser.parse_args(argv)
    nofile = raise_open_files_limit()
    print(f"open files limit {nofile} (children inherit it)", flush=True)
    log_root = Path(tempfile.mkdtemp(prefix="flashsale-bench-room-"))
    rows = []
    for customers in (int(n) for n in args.customers.split(",")):
        print(f"N={customers:,} at {args.rate:g}/s ...", flush=True)
        rows.append(run_size(customers, args, log_root))
    print_table(rows)
    print_provenance()
    return 0


if __name__ == "__main__":
    sys.exit(main())

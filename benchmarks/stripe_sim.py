"""Benchmark of `flashsale stripe-sim`: token+charge throughput, latency and memory per charge.

100 concurrent keep-alive clients each create a token then charge it (Idempotency-Key and
metadata[order_id], as the worker does), on a fresh ledger and again after preloading 50,000
stored charges through the API. Prints requests/s, p50/p99 per request and per token+charge
pair, the throughput ratio, and RSS per stored charge. Every phase is bounded in count and time.

    .venv/bin/python benchmarks/stripe_sim.py
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from hdrh.histogram import HdrHistogram

from flashsale.ops.processes import Child, flashsale_argv
from flashsale.settings import SIM_PUBLISHABLE_KEY, SIM_SECRET_KEY

CARD = {
    "card[number]": "4242424242424242",
    "card[exp_month]": "12",
    "card[exp_year]": str(time.gmtime().tm_year + 2),
    "card[cvc]": "123",
}


@dataclass
class PhaseResult:
    pairs: int
    errors: int
    seconds: float
    requests: HdrHistogram  # one token or charge request, microseconds
    pair_latency: HdrHistogram  # token then charge, microseconds

    @property
    def requests_per_s(self) -> float:
        return 2 * self.pairs / self.seconds

    @property
    def charges_per_s(self) -> float:
        return self.pairs / self.seconds


def new_histogram() -> HdrHistogram:
    return HdrHistogram(1, 60_000_000, 3)


async def run_phase(base_url: str, pairs: int, clients: int, time_limit_s: float) -> PhaseResult:
    """`clients` workers share a budget of `pairs` token+charge pairs; stop early at the limit."""
    requests, pair_latency = new_histogram(), new_histogram()
    budget = itertools.count()
    order_ids = itertools.count()
    done = 0
    errors = 0
    deadline = time.monotonic() + time_limit_s
    connector = aiohttp.TCPConnector(limit=clients, force_close=False)
    secret = {"Authorization": f"Bearer {SIM_SECRET_KEY}"}

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal done, errors
        while next(budget) < pairs and time.monotonic() < deadline:
            started = time.perf_counter()
            async with session.post(
                "/v1/tokens", data={**CARD, "key": SIM_PUBLISHABLE_KEY}
            ) as response:
                token = await response.json()
            middle = time.perf_counter()
            order_id = f"bench-{next(order_ids)}-{started}"
            async with session.post(
                "/v1/charges",
                data={
                    "amount": "4999",
                    "currency": "usd",
                    "source": token.get("id", "tok_missing"),
                    "metadata[order_id]": order_id,
                },
                headers={**secret, "Idempotency-Key": order_id},
            ) as response:
                await response.read()
                ok = response.status == 200
            ended = time.perf_counter()
            requests.record_value(max(1, int((middle - started) * 1e6)))
            requests.record_value(max(1, int((ended - middle) * 1e6)))
            pair_latency.record_value(max(1, int((ended - started) * 1e6)))
            done += 1
            errors += not ok

    async with aiohttp.ClientSession(base_url, connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(clients)))
        seconds = time.perf_counter() - started
    return PhaseResult(done, errors, seconds, requests, pair_latency)


def cpu_s(pid: int) -> float:
    """User+system CPU seconds the process has used: capacity, unlike wall time on a busy box."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measured_phase(url: str, pid: int, args: argparse.Namespace) -> tuple[PhaseResult, float]:
    """A phase plus the simulator's CPU microseconds per request during it."""
    before = cpu_s(pid)
    result = await run_phase(url, args.pairs, args.clients, args.time_limit)
    return result, (cpu_s(pid) - before) * 1e6 / max(1, 2 * result.pairs)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


async def ledger_size(base_url: str) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{base_url}/_sim/stats") as response,
    ):
        return int((await response.json())["ledger"]["charges"])


def describe(name: str, result: PhaseResult) -> str:
    ms = 1000.0
    return (
        f"{name:<22} {result.requests_per_s:8.0f} req/s  {result.charges_per_s:7.0f} charges/s  "
        f"request p50 {result.requests.get_value_at_percentile(50) / ms:6.1f} ms "
        f"p99 {result.requests.get_value_at_percentile(99) / ms:6.1f} ms  "
        f"pair p50 {result.pair_latency.get_value_at_percentile(50) / ms:6.1f} ms "
        f"p99 {result.pair_latency.get_value_at_percentile(99) / ms:6.1f} ms  "
        f"({result.pairs} pairs in {result.seconds:.1f}s, {result.errors} errors)"
    )


def start_sim(log_dir: Path, name: str, args: argparse.Namespace) -> tuple[Child, str]:
    child = Child(
        "stripe-sim", flashsale_argv("stripe-sim", "--port", "0", *args.sim_arg), log_dir / name
    ).start()
    try:
        return child, child.wait_listening()
    except BaseException:
        child.stop()
        raise


async def preload(url: str, target: int, args: argparse.Namespace) -> None:
    """Store `target` charges through the API (token+charge pairs, like the measured load)."""
    started = time.perf_counter()
    while (stored := await ledger_size(url)) < target:
        await run_phase(url, min(10_000, target - stored), args.clients, args.time_limit)
        if time.perf_counter() - started > args.preload_limit:
            print(f"preload stopped at its {args.preload_limit:.0f}s limit")
            return


async def bench(args: argparse.Namespace) -> None:
    """Rounds alternate a brand-new simulator with one holding the preloaded ledger, so load
    from other processes on this shared machine hits both sides alike; medians are reported."""
    log_dir = Path(tempfile.mkdtemp(prefix="bench-stripe-sim-"))
    loaded_child, loaded_url = start_sim(log_dir, "loaded.log", args)
    try:
        await run_phase(loaded_url, args.warmup, args.clients, args.time_limit)
        before_kib, before_charges = rss_kib(loaded_child.pid), await ledger_size(loaded_url)
        started = time.perf_counter()
        await preload(loaded_url, args.preload, args)
        after_kib, after_charges = rss_kib(loaded_child.pid), await ledger_size(loaded_url)
        print(
            f"preloaded {after_charges - before_charges:,} charges in "
            f"{time.perf_counter() - started:.1f}s (log {log_dir})"
        )
        fresh_runs: list[tuple[PhaseResult, float]] = []
        loaded_runs: list[tuple[PhaseResult, float]] = []
        for round_number in range(1, args.rounds + 1):
            fresh_child, fresh_url = start_sim(log_dir, f"fresh{round_number}.log", args)
            try:
                await run_phase(fresh_url, args.warmup, args.clients, args.time_limit)
                fresh_runs.append(await measured_phase(fresh_url, fresh_child.pid, args))
            finally:
                fresh_child.stop()
            stored = await ledger_size(loaded_url)
            loaded_runs.append(await measured_phase(loaded_url, loaded_child.pid, args))
            for label, (result, cpu_us) in (
                (f"round {round_number} fresh", fresh_runs[-1]),
                (f"round {round_number} {stored // 1000}k", loaded_runs[-1]),
            ):
                print(f"{describe(label, result)}  sim CPU {cpu_us:.0f} us/req")
        fresh_rps = statistics.median(r.requests_per_s for r, _ in fresh_runs)
        loaded_rps = statistics.median(r.requests_per_s for r, _ in loaded_runs)
        fresh_cpu = statistics.median(cpu for _, cpu in fresh_runs)
        loaded_cpu = statistics.median(cpu for _, cpu in loaded_runs)
        per_charge = (after_kib - before_kib) * 1024 / max(1, after_charges - before_charges)
        print("medians over rounds:")
        print(
            f"  fresh ledger:          {fresh_rps:6.0f} token+charge requests/s "
            f"({fresh_rps / 2:.0f} charges/s), {fresh_cpu:.0f} us simulator CPU per request"
        )
        print(
            f"  >= {args.preload:,} charges:    {loaded_rps:6.0f} token+charge requests/s "
            f"({loaded_rps / 2:.0f} charges/s), {loaded_cpu:.0f} us simulator CPU per request"
        )
        print(
            f"  loaded / fresh: throughput {loaded_rps / fresh_rps:.1%}, "
            f"CPU cost per request {fresh_cpu / loaded_cpu:.1%}"
        )
        print(
            f"  RSS {before_kib / 1024:.1f} MiB at {before_charges:,} charges -> "
            f"{after_kib / 1024:.1f} MiB at {after_charges:,}: {per_charge:.0f} bytes per stored "
            "charge (with its token and idempotency keys)"
        )
        print("targets: >= 1,500 requests/s; >= 90% of fresh at 50,000 charges; <= 2,048 B/charge")
    finally:
        loaded_child.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--pairs", type=int, default=10_000, help="token+charge pairs per phase")
    parser.add_argument("--rounds", type=int, default=3, help="fresh/loaded measurement rounds")
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--preload", type=int, default=50_000, help="stored charges to reach")
    parser.add_argument("--time-limit", type=float, default=60.0, help="seconds per phase")
    parser.add_argument("--preload-limit", type=float, default=240.0, help="seconds to preload")
    parser.add_argument(
        "--sim-arg", action="append", default=[], help="extra stripe-sim flag (repeatable)"
    )
    args = parser.parse_args()
    print("command:", shlex.join([Path(sys.executable).name, *sys.argv]))
    asyncio.run(bench(args))


if __name__ == "__main__":
    main()

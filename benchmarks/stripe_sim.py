"""Benchmark of `flashsale stripe-sim`: throughput, latency and memory per stored payment.

100 concurrent keep-alive clients each pay once per journey, on a fresh ledger and again after
preloading 50,000 stored payments through the API. `--journey charges` (default): a token, then
a charge of it; `--journey intents`: one PaymentIntent created and confirmed with pm_card_visa
in one call. Both with an Idempotency-Key and metadata[order_id], as the worker sends them.
Prints requests/s, p50/p99 per request and per journey, the throughput ratio, RSS per stored
payment, and (intents) webhook deliveries per second to a receiver on loopback. Every phase is
bounded in count and time.

    .venv/bin/python benchmarks/stripe_sim.py
    .venv/bin/python benchmarks/stripe_sim.py --journey intents
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
from aiohttp import web
from hdrh.histogram import HdrHistogram

from flashsale.ops.processes import Child, flashsale_argv
from flashsale.settings import SIM_PUBLISHABLE_KEY, SIM_SECRET_KEY

CARD = {
    "card[number]": "4242424242424242",
    "card[exp_month]": "12",
    "card[exp_year]": str(time.gmtime().tm_year + 2),
    "card[cvc]": "123",
}


REQUESTS_PER_JOURNEY = {"charges": 2, "intents": 1}
LEDGER_KEY = {"charges": "charges", "intents": "payment_intents"}


@dataclass
class PhaseResult:
    pairs: int  # journeys: token+charge pairs, or confirmed PaymentIntents
    errors: int
    seconds: float
    requests: HdrHistogram  # one API request, microseconds
    pair_latency: HdrHistogram  # one whole journey, microseconds
    per_journey: int = 2

    @property
    def requests_per_s(self) -> float:
        return self.per_journey * self.pairs / self.seconds

    @property
    def charges_per_s(self) -> float:
        return self.pairs / self.seconds


def new_histogram() -> HdrHistogram:
    return HdrHistogram(1, 60_000_000, 3)


async def run_phase(
    base_url: str, pairs: int, clients: int, time_limit_s: float, journey: str = "charges"
) -> PhaseResult:
    """`clients` workers share a budget of `pairs` journeys; stop early at the limit."""
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
            if journey == "intents":
                await pay_with_intent(session)
                continue
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

    async def pay_with_intent(session: aiohttp.ClientSession) -> None:
        nonlocal done, errors
        started = time.perf_counter()
        order_id = f"bench-{next(order_ids)}-{started}"
        async with session.post(
            "/v1/payment_intents",
            data={
                "amount": "4999",
                "currency": "usd",
                "payment_method": "pm_card_visa",
                "confirm": "true",
                "metadata[order_id]": order_id,
            },
            headers={**secret, "Idempotency-Key": order_id},
        ) as response:
            body = await response.json()
            ok = response.status == 200 and body.get("status") == "succeeded"
        elapsed = max(1, int((time.perf_counter() - started) * 1e6))
        requests.record_value(elapsed)
        pair_latency.record_value(elapsed)
        done += 1
        errors += not ok

    async with aiohttp.ClientSession(base_url, connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(clients)))
        seconds = time.perf_counter() - started
    return PhaseResult(done, errors, seconds, requests, pair_latency, REQUESTS_PER_JOURNEY[journey])


def cpu_s(pid: int) -> float:
    """User+system CPU seconds the process has used: capacity, unlike wall time on a busy box."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measured_phase(url: str, pid: int, args: argparse.Namespace) -> tuple[PhaseResult, float]:
    """A phase plus the simulator's CPU microseconds per request during it."""
    before = cpu_s(pid)
    result = await run_phase(url, args.pairs, args.clients, args.time_limit, args.journey)
    return result, (cpu_s(pid) - before) * 1e6 / max(1, result.per_journey * result.pairs)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


async def sim_stats(base_url: str) -> dict:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{base_url}/_sim/stats") as response,
    ):
        return await response.json()


async def ledger_size(base_url: str, journey: str = "charges") -> int:
    return int((await sim_stats(base_url))["ledger"][LEDGER_KEY[journey]])


def describe(name: str, result: PhaseResult) -> str:
    ms = 1000.0
    return (
        f"{name:<22} {result.requests_per_s:8.0f} req/s  {result.charges_per_s:7.0f} payments/s  "
        f"request p50 {result.requests.get_value_at_percentile(50) / ms:6.1f} ms "
        f"p99 {result.requests.get_value_at_percentile(99) / ms:6.1f} ms  "
        f"journey p50 {result.pair_latency.get_value_at_percentile(50) / ms:6.1f} ms "
        f"p99 {result.pair_latency.get_value_at_percentile(99) / ms:6.1f} ms  "
        f"({result.pairs} journeys in {result.seconds:.1f}s, {result.errors} errors)"
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
    """Store `target` payments through the API (the same journeys as the measured load)."""
    started = time.perf_counter()
    while (stored := await ledger_size(url, args.journey)) < target:
        await run_phase(
            url, min(10_000, target - stored), args.clients, args.time_limit, args.journey
        )
        if time.perf_counter() - started > args.preload_limit:
            print(f"preload stopped at its {args.preload_limit:.0f}s limit")
            return


async def bench(args: argparse.Namespace) -> None:
    """Rounds alternate a brand-new simulator with one holding the preloaded ledger, so load
    from other processes on this shared machine hits both sides alike; medians are reported."""
    journey = args.journey
    what = {"charges": "charges", "intents": "PaymentIntents"}[journey]
    per_request = {"charges": "token+charge requests/s", "intents": "confirmations/s"}[journey]
    log_dir = Path(tempfile.mkdtemp(prefix="bench-stripe-sim-"))
    loaded_child, loaded_url = start_sim(log_dir, "loaded.log", args)
    try:
        await run_phase(loaded_url, args.warmup, args.clients, args.time_limit, journey)
        before_kib = rss_kib(loaded_child.pid)
        before_stored = await ledger_size(loaded_url, journey)
        started = time.perf_counter()
        await preload(loaded_url, args.preload, args)
        after_kib, after_stored = rss_kib(loaded_child.pid), await ledger_size(loaded_url, journey)
        print(
            f"preloaded {after_stored - before_stored:,} {what} in "
            f"{time.perf_counter() - started:.1f}s (log {log_dir})"
        )
        fresh_runs: list[tuple[PhaseResult, float]] = []
        loaded_runs: list[tuple[PhaseResult, float]] = []
        for round_number in range(1, args.rounds + 1):
            fresh_child, fresh_url = start_sim(log_dir, f"fresh{round_number}.log", args)
            try:
                await run_phase(fresh_url, args.warmup, args.clients, args.time_limit, journey)
                fresh_runs.append(await measured_phase(fresh_url, fresh_child.pid, args))
            finally:
                fresh_child.stop()
            stored = await ledger_size(loaded_url, journey)
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
        per_stored = (after_kib - before_kib) * 1024 / max(1, after_stored - before_stored)
        per_journey = REQUESTS_PER_JOURNEY[journey]
        print("medians over rounds:")
        print(
            f"  fresh ledger:          {fresh_rps:6.0f} {per_request} "
            f"({fresh_rps / per_journey:.0f} {what}/s), {fresh_cpu:.0f} us simulator CPU per "
            "request"
        )
        print(
            f"  >= {args.preload:,} {what}: {loaded_rps:6.0f} {per_request} "
            f"({loaded_rps / per_journey:.0f} {what}/s), {loaded_cpu:.0f} us simulator CPU per "
            "request"
        )
        print(
            f"  loaded / fresh: throughput {loaded_rps / fresh_rps:.1%}, "
            f"CPU cost per request {loaded_cpu / fresh_cpu:.1%}"
        )
        held = {
            "charges": "with its token and idempotency key",
            "intents": "with its PaymentMethod, card, charge, 3 events and idempotency key",
        }[journey]
        print(
            f"  RSS {before_kib / 1024:.1f} MiB at {before_stored:,} {what} -> "
            f"{after_kib / 1024:.1f} MiB at {after_stored:,}: {per_stored:.0f} bytes per stored "
            f"{what[:-1]} ({held})"
        )
        print(
            f"targets: >= 1,500 {per_request}; >= 90% of fresh at 50,000 {what}; "
            f"<= 2,048 B per stored {what[:-1]}"
        )
    finally:
        loaded_child.stop()
    if journey == "intents":
        await webhook_phase(log_dir, args)


async def webhook_phase(log_dir: Path, args: argparse.Namespace) -> None:
    """Deliveries per second: confirmations on a simulator with a webhook to a receiver here."""
    delivered = 0
    last_at = 0.0

    async def receive(request: web.Request) -> web.Response:
        nonlocal delivered, last_at
        await request.read()
        delivered += 1
        last_at = time.perf_counter()
        return web.Response()

    app = web.Application()
    app.router.add_post("/hook", receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    hook = argparse.Namespace(
        **{**vars(args), "sim_arg": [*args.sim_arg, "--webhook", f"http://127.0.0.1:{port}/hook"]}
    )
    child, url = start_sim(log_dir, "webhooks.log", hook)
    try:
        started = time.perf_counter()
        result = await run_phase(url, args.pairs, args.clients, args.time_limit, "intents")
        expected = 3 * result.pairs  # created, charge.succeeded, payment_intent.succeeded
        deadline = time.monotonic() + args.time_limit
        while delivered < expected and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        stats = (await sim_stats(url))["webhooks"]
        seconds = (last_at or time.perf_counter()) - started
        print(
            f"webhooks: {delivered:,} of {expected:,} events delivered in {seconds:.1f}s = "
            f"{delivered / seconds:.0f} deliveries/s beside {result.charges_per_s:.0f} "
            f"confirmations/s; retries {stats['retries']}, gave up {stats['gave_up']}, "
            f"lag median {stats['lag_s'].get('median')} s max {stats['lag_s'].get('max')} s"
        )
    finally:
        child.stop()
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument(
        "--journey", choices=("charges", "intents"), default="charges", help="what one payment is"
    )
    parser.add_argument("--pairs", type=int, default=10_000, help="payments per phase")
    parser.add_argument("--rounds", type=int, default=3, help="fresh/loaded measurement rounds")
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--preload", type=int, default=50_000, help="stored payments to reach")
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

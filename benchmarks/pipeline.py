"""Benchmark the whole pipeline on this machine: sustained checkouts/s, e2e p99, CPU per checkout.

Starts everything local and private (redis-server, stripe-sim with no latency and no rate limit,
`flashsale serve`, `flashsale worker`s) and steps an open-model `flashsale loadgen` (a separate
process, full journey: raw tokenization, socket join, POST /charges, result on the socket) up
through --rates. A step is sustained when every customer succeeded, the generator stayed valid,
the achieved rate is within 5% of the target and e2e p99 < --p99-limit; the first step that is
not ends the ramp. CPU milliseconds per checkout for each component come from /proc/PID/stat
(utime + stime of the process and its descendants, e.g. gunicorn workers) before and after.

Then --notify http (the original design's HTTP callback per result) against the default
message-queue path at the same rate in the same run: server CPU per checkout and e2e p99.

Prints every step and the command that reproduces it. Never asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flashsale.ops.processes import (
    Child,
    flashsale_argv,
    free_port,
    redis_server_argv,
    wait_for_redis,
)

WORKER_READY = re.compile(r"flashsale worker ready")
TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """utime + stime of one process (all its threads), seconds; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    # After the command: state is field 3, utime 14 and stime 15 (1-based, man 5 proc).
    return (int(fields[11]) + int(fields[12])) / TICKS


def descendants(pid: int) -> list[int]:
    """pid and every process below it (gunicorn's workers, a Celery pool)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(parents.get(current, []))
    return found


def tree_cpu(pids: dict[str, list[int]]) -> dict[str, float]:
    return {name: sum(process_cpu_s(pid) for pid in tree) for name, tree in pids.items()}


@dataclass
class Pipeline:
    """The private pipeline this benchmark drives; components by name for CPU accounting."""

    redis_url: str
    sim_url: str
    children: dict[str, list[Child]]
    log_dir: Path
    env: dict[str, str]
    server_url: str = ""

    def pids(self) -> dict[str, list[int]]:
        return {
            name: [pid for child in group for pid in descendants(child.pid)]
            for name, group in self.children.items()
        }

    def start_app(
        self,
        sku: str,
        server_workers: int,
        workers: int,
        concurrency: int,
        notify: str,
        worker_flags: tuple[str, ...] = (),
    ) -> None:
        """(Re)start server and workers for one sale; redis and the simulator stay."""
        for name in ("server", "worker"):
            for child in self.children.pop(name, []):
                child.stop()
        flags = ["--notify", notify]
        server = Child(
            "server",
            flashsale_argv(
                "serve",
                "--port",
                "0",
                "--workers",
                str(server_workers),
                "--sku",
                sku,
                "--stock",
                "100000000",
                *flags,
            ),
            self.log_dir / f"server-{sku}.log",
            env=self.env,
        ).start()
        self.children["server"] = [server]
        self.server_url = server.wait_listening(timeout_s=60)
        env = {**self.env, "FLASHSALE_SERVER_URL": self.server_url}
        group = []
        for index in range(workers):
            worker = Child(
                f"worker{index}",
                flashsale_argv("worker", "--concurrency", str(concurrency), *flags, *worker_flags),
                self.log_dir / f"worker{index}-{sku}.log",
                env=env,
            ).start()
            group.append(worker)
        self.children["worker"] = group
        for worker in group:
            worker.wait_for(WORKER_READY, timeout_s=60)

    def stop(self) -> None:
        for group in reversed(list(self.children.values())):
            for child in group:
                child.stop()


def start_pipeline(log_dir: Path) -> Pipeline:
    port = free_port()
    redis = Child("redis", redis_server_argv(port, log_dir), log_dir / "redis.log").start()
    redis_url = f"redis://127.0.0.1:{port}/0"
    wait_for_redis(redis_url, redis)
    sim = Child(
        "sim",
        flashsale_argv("stripe-sim", "--port", "0", "--rate-limit", "off", "--latency", "0"),
        log_dir / "sim.log",
    ).start()
    sim_url = sim.wait_listening()
    env = {
        **os.environ,
        "FLASHSALE_REDIS_URL": redis_url,
        "STRIPE_API_BASE": sim_url,
        "STRIPE_SECRET_KEY": "sk_test_bench_pipeline",
        "FLASHSALE_SECRET": "bench-secret",
    }
    return Pipeline(redis_url, sim_url, {"redis": [redis], "sim": [sim]}, log_dir, env)


def run_step(
    pipeline: Pipeline,
    rate: float,
    duration_s: float,
    tag: str,
    processes: int = 1,
    tokenize: str = "raw",
) -> dict[str, Any]:
    """One open-model loadgen run at rate; its report plus CPU ms per checkout per component."""
    report_path = pipeline.log_dir / f"loadgen-{tag}.json"
    loadgen = Child(
        "loadgen",
        flashsale_argv(
            "loadgen",
            "--url",
            pipeline.server_url,
            "--rate",
            f"{rate:g}/s",
            "--duration",
            f"{duration_s:g}s",
            "--cards",
            "visa",
            "--tokenize",
            tokenize,
            "--timeout",
            "30s",
            "--no-dashboard",
            "--report",
            str(report_path),
            "--processes",
            str(processes),
        ),
        pipeline.log_dir / f"loadgen-{tag}.log",
        env=pipeline.env,
    )
    pids = pipeline.pids()
    before = tree_cpu(pids)
    started = time.monotonic()
    loadgen.start()
    generator_cpu: dict[int, float] = {}
    # Sample the generator (and any processes it forks) while it runs: a process's CPU is gone
    # from /proc once it exits.
    while loadgen.alive() and time.monotonic() - started < duration_s + 120:
        for pid in descendants(loadgen.pid):
            generator_cpu[pid] = max(generator_cpu.get(pid, 0.0), process_cpu_s(pid))
        time.sleep(0.2)
    loadgen_cpu = sum(generator_cpu.values())
    exit_code = loadgen.stop()
    # Results still in flight when loadgen stopped waiting are done by now or never.
    after = tree_cpu(pids)
    report = json.loads(report_path.read_text())
    checkouts = max(1, report["outcomes"]["succeeded"])
    cpu_ms = {name: (after[name] - before[name]) * 1000 / checkouts for name in before}
    cpu_ms["loadgen"] = loadgen_cpu * 1000 / checkouts
    failures = {k: v for k, v in report["outcomes"].items() if v and k != "succeeded"}
    return {
        "rate": rate,
        "exit_code": exit_code,
        "customers": report["customers"],
        "achieved": report["rate"]["achieved_per_s"],
        "p50": report["latency_ms"]["e2e"]["p50"],
        "p99": report["latency_ms"]["e2e"]["p99"],
        "failures": failures,
        "errors": dict(list(report["errors"].items())[:3]),
        "valid": report["generator"]["valid"],
        "generator_cpu_percent": report["generator"]["cpu_percent"],
        "cpu_ms": cpu_ms,
    }


def sustained(step: dict[str, Any], p99_limit_ms: float) -> bool:
    return (
        not step["failures"]
        and step["valid"]
        and step["p99"] is not None
        and step["p99"] < p99_limit_ms
        and step["achieved"] >= 0.95 * step["rate"]
    )


def describe(step: dict[str, Any]) -> str:
    cpu = ", ".join(f"{name} {ms:.2f}" for name, ms in step["cpu_ms"].items())
    return (
        f"rate {step['rate']:g}/s: achieved {step['achieved']:.1f}/s, {step['customers']} "
        f"customers, e2e p50 {step['p50']:.0f} ms p99 {step['p99']:.0f} ms, failures "
        f"{step['failures'] or 'none'}, generator {step['generator_cpu_percent']:.0f}% CPU "
        f"(valid {step['valid']}), CPU ms/checkout: {cpu}"
        + (f", errors {step['errors']}" if step["errors"] else "")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="50,100,150,200,250,300", help="steps, per second")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per step")
    parser.add_argument("--p99-limit", type=float, default=1000.0, help="ms")
    parser.add_argument("--server-workers", type=int, default=1, help="serve --workers")
    parser.add_argument("--workers", type=int, default=1, help="flashsale worker processes")
    parser.add_argument("--concurrency", type=int, default=32, help="threads per worker")
    parser.add_argument("--compare-rate", type=float, default=100.0, help="queue vs http rate")
    parser.add_argument("--compare-runs", type=int, default=1, help="runs of each notify mode")
    parser.add_argument("--attempts", type=int, default=2, help="tries per step (noise)")
    parser.add_argument("--no-events", action="store_true", help="worker --no-events")
    parser.add_argument(
        "--tokenize", choices=["raw", "test-tokens"], default="raw", help="loadgen --tokenize"
    )
    parser.add_argument("--skip-ramp", action="store_true")
    parser.add_argument("--skip-compare", action="store_true")
    args = parser.parse_args()

    log_dir = Path(tempfile.mkdtemp(prefix="flashsale-bench-pipeline-"))
    print(f"logs: {log_dir}; machine: {os.cpu_count()} cores", flush=True)
    pipeline = start_pipeline(log_dir)
    shape = (args.server_workers, args.workers, args.concurrency)
    worker_flags = ("--no-events",) if args.no_events else ()
    best: dict[str, Any] | None = None
    try:
        if not args.skip_ramp:
            pipeline.start_app("BENCH-RAMP", *shape, notify="queue", worker_flags=worker_flags)
            for rate in (float(text) for text in args.rates.split(",")):
                # Other jobs share these cores: a step gets --attempts tries before it counts
                # as not sustained.
                for attempt in range(1, args.attempts + 1):
                    step = run_step(
                        pipeline,
                        rate,
                        args.duration,
                        f"ramp-{rate:g}-{attempt}",
                        tokenize=args.tokenize,
                    )
                    print(f"[{attempt}] {describe(step)}", flush=True)
                    if sustained(step, args.p99_limit):
                        break
                if not sustained(step, args.p99_limit):
                    print(f"  not sustained at {rate:g}/s: ramp ends", flush=True)
                    break
                best = step
        compare: dict[str, list[dict[str, Any]]] = {"queue": [], "http": []}
        if not args.skip_compare:
            for run in range(args.compare_runs):
                for notify in ("queue", "http"):
                    pipeline.start_app(
                        f"BENCH-{notify.upper()}-{run}",
                        *shape,
                        notify=notify,
                        worker_flags=worker_flags,
                    )
                    step = run_step(
                        pipeline,
                        args.compare_rate,
                        args.duration,
                        f"{notify}-{run}",
                        tokenize=args.tokenize,
                    )
                    print(f"notify {notify}: {describe(step)}", flush=True)
                    compare[notify].append(step)
    finally:
        pipeline.stop()

    print()
    print(
        f"shape: serve --workers {args.server_workers}, {args.workers} worker process(es) x "
        f"{args.concurrency} threads{' --no-events' if args.no_events else ''}, stripe-sim "
        f"latency 0 and no rate limit, one loadgen process (--tokenize {args.tokenize})"
    )
    if best:
        cpu = ", ".join(f"{name} {ms:.2f}" for name, ms in best["cpu_ms"].items())
        print(
            f"sustained: {best['achieved']:.1f} checkouts/s (step {best['rate']:g}/s), e2e p99 "
            f"{best['p99']:.0f} ms; CPU ms per checkout: {cpu}"
        )
    elif not args.skip_ramp:
        print("sustained: none of the steps")
    if compare["queue"] and compare["http"]:

        def med(notify: str, pick: Any) -> float:
            return statistics.median(pick(step) for step in compare[notify])

        server = {n: med(n, lambda s: s["cpu_ms"]["server"]) for n in compare}
        p99 = {n: med(n, lambda s: s["p99"]) for n in compare}
        print(
            f"notify at {args.compare_rate:g}/s (median of {args.compare_runs}): server CPU per "
            f"checkout queue {server['queue']:.2f} ms vs http {server['http']:.2f} ms "
            f"(http/queue = {server['http'] / max(server['queue'], 1e-9):.2f}x); e2e p99 queue "
            f"{p99['queue']:.0f} ms vs http {p99['http']:.0f} ms"
        )
    print("reproduce: .venv/bin/python benchmarks/pipeline.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()

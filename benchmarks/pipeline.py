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

With --payments-runs N: the two payment paths at --compare-rate, alternating, each run in a fresh
pipeline: Charges (a token, POST /v1/charges), PaymentIntents (a PaymentMethod, one confirmed
PaymentIntent, the webhook deliveries to the server) and PaymentIntents with 10% 3D Secure cards
(the generator answers the challenge): CPU per checkout per component and e2e p99, medians.

Prints every step and the command that reproduces it. Never asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

from provenance import print_provenance
from trees import generator_env, tree_env

from flashsale.ops.pipeline import LocalPipeline
from flashsale.ops.processes import Child, flashsale_argv


def start_pipeline(directory: Path, tree: str | None = None) -> LocalPipeline:
    """Redis and a simulator with no latency and no limit; sales get their servers later. With
    a tree, the pipeline runs that checkout's flashsale (benchmarks/trees.py)."""
    pipeline = LocalPipeline(directory, env=tree_env(tree))
    pipeline.start_redis()
    pipeline.start_simulator("--rate-limit", "off", "--latency", "0")
    return pipeline


def start_app(
    pipeline: LocalPipeline,
    sku: str,
    server_workers: int,
    workers: int,
    concurrency: int,
    notify: str,
    worker_flags: tuple[str, ...] = (),
    payments: str = "charges",
) -> None:
    """(Re)start server and workers for one sale; redis and the simulator stay. On
    PaymentIntents the simulator delivers its events to the server's /stripe/webhook."""
    pipeline.stop_kind("worker")
    pipeline.stop_kind("server")
    flags = ("--notify", notify)
    # By environment, not --payments: a baseline tree from before PaymentIntents has no such
    # flag (and pays with charges).
    pipeline.env["FLASHSALE_PAYMENTS"] = payments
    pipeline.start_server(
        *("--workers", str(server_workers), "--sku", sku, "--stock", "100000000", *flags),
        webhook=payments == "intents",
    )
    pipeline.env["FLASHSALE_SERVER_URL"] = pipeline.server_url
    started = [
        pipeline.start_worker("--concurrency", str(concurrency), *flags, *worker_flags, wait=False)
        for _ in range(workers)
    ]
    for worker in started:
        pipeline.wait_ready(worker)


def run_step(
    pipeline: LocalPipeline,
    rate: float,
    duration_s: float,
    tag: str,
    processes: int = 1,
    tokenize: str = "raw",
    cards: str = "visa",
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
            cards,
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
        env=generator_env(pipeline.env),
    )
    before = pipeline.cpu_seconds()
    loadgen_cpu, _ = loadgen.run_measured(duration_s + 120, every_s=0.2)
    exit_code = loadgen.process.returncode if loadgen.process else None
    # Results still in flight when loadgen stopped waiting are done by now or never.
    after = pipeline.cpu_seconds()
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
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
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
    parser.add_argument(
        "--payments-runs", type=int, default=0, help="runs of each payment path (0: none)"
    )
    parser.add_argument(
        "--paths",
        default=",".join(PAYMENT_PATHS),
        help="payment paths --payments-runs compares, comma-separated",
    )
    parser.add_argument(
        "--baseline",
        metavar="TREE",
        help="a checkout whose pipeline --payments-runs also runs, alternating with this one",
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
            start_app(pipeline, "BENCH-RAMP", *shape, notify="queue", worker_flags=worker_flags)
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
                    start_app(
                        pipeline,
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
    paths = compare_payments(log_dir, args, shape) if args.payments_runs else {}

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
    if paths:
        print_payments(paths, args)
    print_provenance()


# name -> (serve --payments, loadgen --cards)
PAYMENT_PATHS = {
    "charges": ("charges", "visa"),
    "intents": ("intents", "visa"),
    "intents+3ds10%": ("intents", "visa=90,three_d_secure=10"),
}


def compare_payments(
    log_dir: Path, args: argparse.Namespace, shape: tuple[int, int, int]
) -> dict[str, list[dict[str, Any]]]:
    """Each payment path of --paths at --compare-rate, alternating (with --baseline, each path
    on the baseline tree, then on this one), each run in a fresh pipeline (a fresh ledger and no
    webhook endpoint left from another run)."""
    trees: list[tuple[str, str | None]] = [("", None)]
    if args.baseline:
        trees.insert(0, ("@baseline", str(Path(args.baseline).resolve())))
    names = args.paths.split(",")
    unknown = sorted(set(names) - set(PAYMENT_PATHS))
    if unknown:
        raise SystemExit(f"--paths: no such path {unknown}; known: {', '.join(PAYMENT_PATHS)}")
    steps: dict[str, list[dict[str, Any]]] = {}
    for run in range(args.payments_runs):
        for name in names:
            payments, cards = PAYMENT_PATHS[name]
            for suffix, tree in trees:
                label = f"{name}{suffix}"
                directory = log_dir / f"payments-{run}-{label.replace('%', '').replace('@', '-')}"
                pipeline = start_pipeline(directory, tree)
                try:
                    start_app(pipeline, "BENCH-PAY", *shape, notify="queue", payments=payments)
                    step = run_step(
                        pipeline,
                        args.compare_rate,
                        args.duration,
                        f"{label}-{run}",
                        tokenize=args.tokenize,
                        cards=cards,
                    )
                finally:
                    pipeline.stop()
                print(f"payments {label}: {describe(step)}", flush=True)
                steps.setdefault(label, []).append(step)
    return steps


def print_payments(paths: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> None:
    print(
        f"payment paths at {args.compare_rate:g}/s, medians of {args.payments_runs} alternating "
        "runs (CPU ms per checkout):"
    )
    for name, steps in paths.items():
        parts = {
            component: statistics.median(step["cpu_ms"][component] for step in steps)
            for component in steps[0]["cpu_ms"]
        }
        total = sum(parts.values())
        p99 = statistics.median(step["p99"] for step in steps)
        failures = [step["failures"] for step in steps if step["failures"]]
        cpu = ", ".join(f"{component} {ms:.2f}" for component, ms in parts.items())
        print(
            f"  {name:>24}: total {total:.2f} ({cpu}); e2e p99 {p99:.0f} ms"
            + (f"; failures {failures}" if failures else "")
        )


if __name__ == "__main__":
    main()

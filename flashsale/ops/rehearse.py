"""The one-command rehearsal: start a private pipeline, send a flash sale, reconcile, judge."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis as redis_lib

from flashsale.core import keys, orders, store
from flashsale.errors import ComponentFailed, ConfigError
from flashsale.ops.chaos import FaultRecord, Injector
from flashsale.ops.faults import Fault, check_target, parse_spec
from flashsale.ops.plan import RehearsalPlan, as_flags
from flashsale.ops.processes import (
    Child,
    flashsale_argv,
    free_port,
    redis_server_argv,
    wait_for_redis,
)
from flashsale.ops.reconcile import Reconciliation, reconcile_live
from flashsale.settings import Settings

WORKER_READY = re.compile(r"flashsale worker ready")
# Faults that strand a worker's unacknowledged tasks until the broker's visibility timeout: a
# fault rehearsal shortens it (and what it must exceed) unless the scenario sets them.
REDELIVERY_FAULTS = {"kill-worker", "restart-redis"}
FAST_REDELIVERY = {"visibility_timeout": 12, "stripe_timeout": 4, "retry_backoff_max": 4}
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INVALID, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


@dataclass
class RehearsalResult:
    """Everything the verdict panel and report.json show."""

    plan: RehearsalPlan
    run_dir: Path
    loadgen_exit: int | None = None
    loadgen_report: dict[str, Any] | None = None
    reconciliation: Reconciliation | None = None
    checks: list[Check] = field(default_factory=list)
    chaos: list[FaultRecord] = field(default_factory=list)
    # Workers that died on their own and were replaced (not those chaos killed on purpose).
    worker_restarts: list[dict[str, Any]] = field(default_factory=list)
    interrupted: bool = False
    exit_code: int = EXIT_FAILED

    @property
    def passed(self) -> bool:
        return self.exit_code == EXIT_OK


@dataclass
class Pipeline:
    """The children of one rehearsal and how to reach them."""

    redis_url: str
    sim_url: str | None
    server_url: str
    env: dict[str, str]
    children: list[Child] = field(default_factory=list)

    def by_name(self, prefix: str) -> list[Child]:
        return [child for child in self.children if child.name.startswith(prefix)]


class Rehearsal:
    """Runs one plan; every child it starts is stopped when run() returns, however it returns."""

    def __init__(
        self,
        settings: Settings,
        plan: RehearsalPlan,
        run_dir: Path,
        *,
        redis_url: str | None = None,
        redis_durable: bool = False,
        chaos: str | None = None,
        stripe: str = "sim",
        loadgen_args: tuple[str, ...] = (),
        dashboard: bool = True,
        drain_timeout_s: float = 60.0,
        say: Any = print,
    ) -> None:
        if stripe not in ("sim", "test"):
            raise ConfigError(f"--stripe must be 'sim' or 'test', not {stripe!r}")
        if stripe == "test" and settings.stripe_mode != "test":
            raise ConfigError(
                "--stripe test needs STRIPE_SECRET_KEY and STRIPE_PUBLISHABLE_KEY (sk_test_/"
                "pk_test_ keys) and STRIPE_API_BASE=https://api.stripe.com"
            )
        self.settings = settings
        self.plan = plan
        self.run_dir = run_dir
        self.external_redis_url = redis_url
        self.redis_durable = redis_durable or plan.redis_durable
        spec = chaos or plan.chaos
        self.faults: list[Fault] = parse_spec(spec) if spec else []
        check_target(self.faults, has_simulator=stripe == "sim")
        if redis_url and any(fault.name == "restart-redis" for fault in self.faults):
            raise ConfigError("restart-redis needs the private Redis of rehearse, not --redis-url")
        if {fault.name for fault in self.faults} & REDELIVERY_FAULTS and not any(
            key in plan.pipeline for key in FAST_REDELIVERY
        ):
            plan = plan.with_overrides(pipeline=FAST_REDELIVERY)
            self.plan = plan
        # Set once the pipeline runs; the chaos injector reaches the children through these.
        self.redis_url = ""
        self.sim_url: str | None = None
        self.server_port = 0
        self.env: dict[str, str] = {}
        self.stripe = stripe
        self.loadgen_args = loadgen_args
        self.dashboard = dashboard
        self.drain_timeout_s = drain_timeout_s
        self.say = say
        self.children: list[Child] = []
        # Workers already dealt with (killed by chaos and replaced, or restarted on their death).
        self._workers_lock = threading.Lock()
        self._replaced: set[int] = set()
        self.worker_restarts: list[dict[str, Any]] = []

    # --- the whole run ----------------------------------------------------------------------

    def run(self) -> RehearsalResult:
        result = RehearsalResult(plan=self.plan, run_dir=self.run_dir)
        with self._stop_children_on_exit():
            try:
                pipeline = self.start_pipeline()
                supervisor = WorkerSupervisor(self).start()
                try:
                    injector = Injector(self, self.faults, say=self.say) if self.faults else None
                    if injector is not None:
                        self.say(f"chaos: {', '.join(str(fault) for fault in self.faults)}")
                        injector.start()
                    try:
                        result.loadgen_exit, result.loadgen_report = self.run_loadgen(pipeline)
                    finally:
                        if injector is not None:
                            result.chaos = injector.stop()
                    self.say("waiting for every order to reach a final state ...")
                    self.drain(pipeline)
                finally:
                    supervisor.stop()
                    result.worker_restarts = list(self.worker_restarts)
                result.reconciliation = reconcile_live(
                    self.pipeline_settings(pipeline), store.connect(pipeline.redis_url)
                )
            except KeyboardInterrupt:
                result.interrupted = True
        result.checks = judge(result)
        result.exit_code = exit_code_for(result)
        self.write_report(result)
        return result

    @contextmanager
    def _stop_children_on_exit(self) -> Iterator[None]:
        """SIGTERM becomes a clean stop too, so a supervisor killing us leaves no orphans."""

        def terminate(signum: int, _frame: object) -> None:
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGTERM, terminate)
        try:
            yield
        finally:
            # A second Ctrl-C while stopping must not leave children behind.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            for child in reversed(self.children):
                child.stop()
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, previous)

    # --- starting ---------------------------------------------------------------------------

    def _child(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Child:
        child = Child(name, argv, self.run_dir / "logs" / f"{name}.log", env=env).start()
        self.children.append(child)
        return child

    def start_redis(self) -> str:
        if self.external_redis_url:
            client = store.connect(self.external_redis_url)
            store.check(client)
            if client.exists(keys.order_index()) or client.exists(keys.stock("*")):
                raise ConfigError(
                    f"{self.external_redis_url} already holds a sale (orders or stock); rehearse "
                    "on an empty database, e.g. another /N, or let rehearse start a private Redis"
                )
            return self.external_redis_url
        data_dir = self.run_dir / "redis"
        data_dir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        child = self._child("redis", redis_server_argv(port, data_dir, durable=self.redis_durable))
        url = f"redis://127.0.0.1:{port}/0"
        wait_for_redis(url, child)
        return url

    def start_pipeline(self) -> Pipeline:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.say(f"run directory: {self.run_dir}")
        redis_url = self.start_redis()
        env = {
            **os.environ,
            "FLASHSALE_REDIS_URL": redis_url,
            # A fresh secret per run: room tokens of one rehearsal never open another's rooms.
            "FLASHSALE_SECRET": secrets.token_urlsafe(32),
            "PYTHONUNBUFFERED": "1",
            # Marks every child of this run, so an operator (or a test) can find strays.
            "FLASHSALE_RUN_DIR": str(self.run_dir),
        }
        self.env = env
        sim_url = None
        if self.stripe == "sim":
            sim = self._child(
                "stripe-sim",
                flashsale_argv("stripe-sim", "--port", "0", *as_flags(self.plan.stripe_sim)),
                env=env,
            )
            sim_url = sim.wait_listening()
            env["STRIPE_API_BASE"] = sim_url
            # The workers' 'auto' budget keeps to the limit the simulator was started with.
            env["FLASHSALE_STRIPE_LIMIT"] = str(self.plan.stripe_sim.get("rate_limit", "off"))
            env.pop("STRIPE_SECRET_KEY", None)
            env.pop("STRIPE_PUBLISHABLE_KEY", None)
            self.say(f"stripe-sim: {sim_url}")
        server = self._child("server", self.server_argv(0), env=env)
        workers = [self._start_worker(f"worker{index}") for index in range(self.plan.workers)]
        server_url = server.wait_listening()
        self.server_port = int(server_url.rsplit(":", 1)[1])
        self.redis_url, self.sim_url = redis_url, sim_url
        self.say(f"server: {server_url}")
        for worker in workers:
            worker.wait_for(WORKER_READY)
        self.say(f"workers: {len(workers)} x {self.plan.worker_concurrency} threads ready")
        return Pipeline(redis_url, sim_url, server_url, env, list(self.children))

    def server_argv(self, port: int) -> list[str]:
        return flashsale_argv("serve", "--port", str(port), *as_flags(self.plan.sale))

    def _start_worker(self, name: str) -> Child:
        argv = flashsale_argv(
            "worker",
            "--concurrency",
            str(self.plan.worker_concurrency),
            *self.plan.worker_flags(),
        )
        return self._child(name, argv, env=self.env)

    # --- what chaos acts on (flashsale.ops.chaos.ChaosTarget) -------------------------------

    def workers(self) -> list[Child]:
        return [child for child in self.children if child.name.startswith("worker")]

    def replace_worker(self, dead: Child) -> Child:
        with self._workers_lock:
            self._replaced.add(id(dead))
            child = self._start_worker(f"worker{len(self.workers())}")
        child.wait_for(WORKER_READY)
        return child

    def restart_dead_workers(self, suspects: set[int], t0: float) -> set[int]:
        """Replace each worker that exited without being asked (seen dead on two polls, so a
        chaos kill, which replaces its victim at once, is never replaced twice); returns the
        workers seen dead on this poll."""
        dead_now: set[int] = set()
        for child in self.workers():
            if child.alive() or id(child) in self._replaced:
                continue
            if id(child) not in suspects:
                dead_now.add(id(child))
                continue
            with self._workers_lock:
                if id(child) in self._replaced:
                    continue
                self._replaced.add(id(child))
                code = child.process.returncode if child.process else None
                last = (child.tail(1) or "").strip()[:300]
                replacement = self._start_worker(f"worker{len(self.workers())}")
            self.say(
                f"{child.name} exited unexpectedly (code {code}): {last!r}; "
                f"started {replacement.name} in its place"
            )
            replacement.wait_for(WORKER_READY)
            self.worker_restarts.append(
                {
                    "worker": child.name,
                    "exit_code": code,
                    "at_s": round(time.monotonic() - t0, 2),
                    "last_line": last,
                    "replacement": replacement.name,
                }
            )
        return dead_now

    def server(self) -> Child:
        return [child for child in self.children if child.name.startswith("server")][-1]

    def restart_server(self) -> Child:
        """Same port, so customers (and loadgen's fallback) find it where it was."""
        self.server().stop()
        restarts = len([c for c in self.children if c.name.startswith("server")])
        argv = self.server_argv(self.server_port)
        child = self._child(f"server-restart{restarts}", argv, self.env)
        child.wait_listening()
        return child

    def restart_redis(self) -> None:
        """SIGTERM (Redis writes its AOF on a clean shutdown), then the same port and directory."""
        old = [child for child in self.children if child.name.startswith("redis")][-1]
        old.stop()
        restarts = len([c for c in self.children if c.name.startswith("redis")])
        child = self._child(f"redis-restart{restarts}", old.argv)
        wait_for_redis(self.redis_url, child)

    def pipeline_settings(self, pipeline: Pipeline) -> Settings:
        """The settings the children run with, for reconciliation in this process."""
        base = Settings.from_env(pipeline.env)
        sku = self.plan.sale.get("sku")
        return base.replace(sale_sku=sku).checked()

    # --- load -------------------------------------------------------------------------------

    def run_loadgen(self, pipeline: Pipeline) -> tuple[int, dict[str, Any] | None]:
        """Loadgen runs in the foreground (same terminal, same Ctrl-C) and writes its report."""
        report_path = self.run_dir / "loadgen.json"
        argv = flashsale_argv(
            "loadgen",
            "--url",
            pipeline.server_url,
            "--redis-url",
            pipeline.redis_url,
            "--report",
            str(report_path),
            "--html",
            str(self.run_dir / "report.html"),
            *(["--tokenize", "test-tokens"] if self.stripe == "test" else []),
            *([] if self.dashboard else ["--no-dashboard"]),
            *as_flags(self.plan.loadgen),
            *self.loadgen_args,
        )
        process = subprocess.Popen(argv, env=pipeline.env)
        try:
            code = process.wait()
        except KeyboardInterrupt:
            # The same Ctrl-C reached loadgen: let it finish writing its report, then go on.
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
            raise
        report = json.loads(report_path.read_text()) if report_path.exists() else None
        if code == EXIT_USAGE:
            raise ConfigError("loadgen refused its options (see above)")
        if report is None:
            raise ComponentFailed(f"loadgen exited with {code} and wrote no report")
        return code, report

    def drain(self, pipeline: Pipeline) -> None:
        """Wait until no order is pending (or the drain timeout passes: reconcile says which)."""
        client = store.connect(pipeline.redis_url)
        deadline = time.monotonic() + self.drain_timeout_s
        try:
            while time.monotonic() < deadline:
                if orders.count_by_state(client)[orders.PENDING] == 0:
                    return
                time.sleep(0.2)
        except redis_lib.RedisError as error:
            raise ComponentFailed(f"Redis went away while draining: {error}") from error
        finally:
            client.close()

    # --- output -----------------------------------------------------------------------------

    def write_report(self, result: RehearsalResult) -> None:
        report = {
            "scenario": result.plan.name,
            "plan": {
                "sale": result.plan.sale,
                "pipeline": result.plan.pipeline,
                "stripe_sim": result.plan.stripe_sim,
                "loadgen": result.plan.loadgen,
                "extra_loadgen_args": list(self.loadgen_args),
            },
            "stripe": self.stripe,
            "redis_durable": self.redis_durable,
            "chaos": [record.as_dict() for record in result.chaos],
            "worker_restarts": result.worker_restarts,
            "passed": result.passed,
            "exit_code": result.exit_code,
            "interrupted": result.interrupted,
            "checks": [check.__dict__ for check in result.checks],
            "reconciliation": result.reconciliation.as_dict() if result.reconciliation else None,
            "loadgen_exit": result.loadgen_exit,
            "loadgen": result.loadgen_report,
        }
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "report.json").write_text(json.dumps(report, indent=2, default=str))


class WorkerSupervisor:
    """Restarts workers that die on their own during the sale and drain, like systemd would.

    A worker exits when Celery cannot recover its broker connection (after a Redis restart)
    or when its watchdog finds the consumer stalled; its unacknowledged tasks come back after
    the visibility timeout, so the replacement finishes them.
    """

    POLL_S = 0.5

    def __init__(self, rehearsal: Rehearsal) -> None:
        self.rehearsal = rehearsal
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="worker-supervisor", daemon=True)

    def start(self) -> WorkerSupervisor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        t0 = time.monotonic()
        suspects: set[int] = set()
        while not self._stop.wait(self.POLL_S):
            try:
                suspects = self.rehearsal.restart_dead_workers(suspects, t0)
            except ComponentFailed as error:
                # The replacement did not come up: say so; the drain and reconcile will show it.
                self.rehearsal.say(f"could not restart a worker: {error}")


def judge(result: RehearsalResult) -> list[Check]:
    """The integrity and SLO checks that decide the exit code."""
    checks: list[Check] = []
    report = result.loadgen_report
    rec = result.reconciliation
    if result.interrupted:
        checks.append(Check("completed", False, "interrupted before the rehearsal finished"))
    if result.chaos:
        failed = [r.fault for r in result.chaos if r.error or r.skipped]
        checks.append(
            Check(
                "chaos faults injected",
                not failed,
                f"not injected: {', '.join(failed)}"
                if failed
                else f"{len(result.chaos)} of {len(result.chaos)}",
            )
        )
    if report is not None:
        slo = report.get("slo", {})
        failed = [r["slo"] for r in slo.get("results", []) if not r.get("passed")]
        checks.append(Check("SLOs met", not failed, ", ".join(failed) or "all met"))
        generator = report.get("generator", {})
        reasons = generator.get("invalid_reasons") or []
        checks.append(
            Check("generator kept up", bool(generator.get("valid", True)), "; ".join(reasons))
        )
        problems = report.get("integrity_problems", 0)
        checks.append(
            Check(
                "one final result per customer",
                not problems,
                f"{problems} customers saw conflicting results" if problems else "yes",
            )
        )
    if rec is not None:
        for name, count in rec.discrepancies().items():
            checks.append(Check(name.replace("_", " "), count == 0, str(count)))
        if report is not None:
            seen = report["outcomes"]["succeeded"]
            stored = rec.orders_by_state.get(orders.SUCCEEDED, 0)
            checks.append(
                Check(
                    "loadgen successes = paid orders",
                    seen == stored,
                    f"loadgen {seen}, orders {stored}",
                )
            )
    return checks


def exit_code_for(result: RehearsalResult) -> int:
    if result.interrupted:
        return EXIT_INTERRUPTED
    report = result.loadgen_report
    if report is not None and not report.get("generator", {}).get("valid", True):
        return EXIT_INVALID
    if result.reconciliation is None or not all(check.passed for check in result.checks):
        return EXIT_FAILED
    return EXIT_OK

"""The one-command rehearsal: start a private pipeline, send a flash sale, reconcile, judge."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing import resource_tracker
from pathlib import Path
from typing import Any

import redis as redis_lib
from rich.console import Console

from flashsale import outputs
from flashsale.core import keys, orders, store, waiting_room
from flashsale.errors import ComponentFailed, ConfigError, OutputError
from flashsale.loadgen import coordinator
from flashsale.loadgen.report import LoadReport
from flashsale.loadgen.stats import FAIRNESS_SLACK_S, OVERTOOK
from flashsale.ops import counters, rehearsal_report
from flashsale.ops.chaos import FaultRecord, Injector
from flashsale.ops.counters import Counters
from flashsale.ops.faults import Fault, check_target, parse_spec
from flashsale.ops.pipeline import LocalPipeline
from flashsale.ops.plan import REHEARSE_OWNS, RehearsalPlan, as_flags
from flashsale.ops.reconcile import Reconciliation, reconcile_live
from flashsale.settings import Settings

# Faults that strand a worker's unacknowledged tasks until the broker's visibility timeout: a
# fault rehearsal shortens it (and what it must exceed) unless the scenario sets them.
# Faults whose repair waits for the visibility timeout (a redelivered task, or the sweeper
# reading the PaymentIntent of an order whose webhook was lost).
REDELIVERY_FAULTS = {"kill-worker", "restart-redis", "failover-redis", "webhook-drop"}
FAST_REDELIVERY = {"visibility_timeout": 12, "stripe_timeout": 4, "retry_backoff_max": 4}
STRIPE_CLOCK_SKEW_S = 5
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INVALID, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_OUTPUT = outputs.EXIT_OUTPUT
# In the environment of every process a rehearsal starts, so an operator (or a test) can find
# strays: FLASHSALE_RUN_DIR=<its run directory>.
RUN_MARKER = "FLASHSALE_RUN_DIR"


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
    loadgen_report: LoadReport | None = None
    reconciliation: Reconciliation | None = None
    checks: list[Check] = field(default_factory=list)
    chaos: list[FaultRecord] = field(default_factory=list)
    # Workers that died on their own and were replaced (not those chaos killed on purpose).
    worker_restarts: list[dict[str, Any]] = field(default_factory=list)
    # What the server, the workers and Stripe counted, and why they cannot be compared (if so).
    counters: Counters | None = None
    counters_not_comparable: str | None = None
    interrupted: bool = False
    exit_code: int = EXIT_FAILED  # the verdict's
    # Reports that could not be written (disk full): the verdict stands, the exit code is 4.
    unwritten: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.exit_code == EXIT_OK

    @property
    def process_exit_code(self) -> int:
        """What `flashsale rehearse` exits with: the verdict's code, unless a report is
        missing (EXIT_OUTPUT, so a script never reads a stale or absent report as a result)."""
        if self.unwritten and not self.interrupted:
            return EXIT_OUTPUT
        return self.exit_code


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
        redis_sentinel: bool = False,
        chaos: str | None = None,
        stripe: str = "sim",
        loadgen_options: dict[str, Any] | None = None,
        dashboard: bool = True,
        drain_timeout_s: float = 60.0,
        say: Any = print,
        console: Console | None = None,
    ) -> None:
        """Check everything before anything starts: a mistake is a ConfigError (exit 2) with
        nothing started and no run directory made. `loadgen_options` are the load options
        given after `--`, as a mapping of option names (max_lag) to values."""
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
        self.redis_sentinel = redis_sentinel or plan.redis_sentinel
        if redis_url and self.redis_sentinel:
            raise ConfigError(
                "--redis-sentinel starts rehearse's own primary, replica and sentinels; for "
                "yours, give --redis-url redis+sentinel://host:port,.../db/service instead"
            )
        spec = chaos or plan.chaos
        self.faults: list[Fault] = parse_spec(spec) if spec else []
        check_target(
            self.faults,
            has_simulator=stripe == "sim",
            sentinel=self.redis_sentinel,
            webhooks=plan.payments == "intents",
        )
        if redis_url and any(fault.name == "restart-redis" for fault in self.faults):
            raise ConfigError("restart-redis needs the private Redis of rehearse, not --redis-url")
        if {fault.name for fault in self.faults} & REDELIVERY_FAULTS and not any(
            key in plan.pipeline for key in FAST_REDELIVERY
        ):
            plan = plan.with_overrides(pipeline=FAST_REDELIVERY)
            self.plan = plan
        # The children of this run; the chaos injector acts on it too.
        self.pipeline = LocalPipeline(run_dir, env={RUN_MARKER: str(run_dir)}, say=say)
        self.stripe = stripe
        self.loadgen_options = dict(loadgen_options or {})
        owned = sorted(set(self.loadgen_options) & REHEARSE_OWNS)
        if owned:
            raise ConfigError(f"options after --: rehearse sets {', '.join(owned)} itself")
        try:
            self.load_config = plan.load_config(
                self.loadgen_options,
                report=str(run_dir / "loadgen.json"),
                no_dashboard=not dashboard,
                **({"tokenize": "test-tokens"} if stripe == "test" else {}),
            )
        except ConfigError as error:
            given = " with the options after --" if self.loadgen_options else ""
            raise ConfigError(f"scenario {plan.name} [loadgen]{given}: {error}") from None
        challenged = self.load_config.cards.challenges()
        if stripe == "test" and challenged:
            raise ConfigError(
                f"--stripe test: {', '.join(challenged)} ask for 3D Secure, whose challenge "
                "real Stripe shows in a browser only (the load generator answers the "
                "simulator's); drop them from the card mix"
            )
        self.console = console
        self.dashboard = dashboard
        self.drain_timeout_s = drain_timeout_s
        self.say = say
        self.worker_restarts: list[dict[str, Any]] = []

    # --- the whole run ----------------------------------------------------------------------

    def run(self) -> RehearsalResult:
        result = RehearsalResult(plan=self.plan, run_dir=self.run_dir)
        # Reconcile reads only what Stripe created from now on: on a test account that other
        # rehearsals share, their charges are not this sale's (a few seconds for clock skew).
        since = int(time.time()) - STRIPE_CLOCK_SKEW_S
        with self._stop_children_on_exit():
            try:
                pipeline = self.start_pipeline()
                supervisor = WorkerSupervisor(self).start()
                try:
                    injector = (
                        Injector(pipeline, self.faults, say=self.say) if self.faults else None
                    )
                    if injector is not None:
                        self.say(f"chaos: {', '.join(str(fault) for fault in self.faults)}")
                        injector.start()
                    try:
                        loaded = self.run_loadgen(pipeline)
                        result.loadgen_exit, result.loadgen_report = loaded.exit_code, loaded.report
                        result.unwritten += loaded.unwritten
                    finally:
                        if injector is not None:
                            result.chaos = injector.stop()
                    self.say("waiting for every order to reach a final state ...")
                    self.drain(pipeline)
                finally:
                    supervisor.stop()
                    result.worker_restarts = list(self.worker_restarts)
                result.counters = counters.collect(
                    pipeline.server_url, pipeline.sim_url, pipeline.log_dir
                )
                result.counters_not_comparable = counters.why_not_comparable(
                    self.plan.server_workers, len(pipeline.of_kind("server")) > 1
                )
                result.reconciliation = reconcile_live(
                    self.pipeline_settings(pipeline), store.connect(pipeline.redis_url), since
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
            self.pipeline.stop()
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, previous)

    # --- starting ---------------------------------------------------------------------------

    def start_pipeline(self) -> LocalPipeline:
        outputs.check_room(self.run_dir)
        self.say(f"run directory: {self.run_dir}")
        pipeline = self.pipeline
        if self.external_redis_url:
            self.check_external_redis(self.external_redis_url)
            pipeline.use_redis(self.external_redis_url)
        elif self.redis_sentinel:
            pipeline.start_redis_sentinel(durable=self.redis_durable)
            self.say(f"redis: a primary, a replica and 3 sentinels ({pipeline.redis_url})")
        else:
            pipeline.start_redis(durable=self.redis_durable)
        if self.stripe == "sim":
            pipeline.start_simulator(*as_flags(self.plan.stripe_sim))
        # On PaymentIntents, fulfilment follows Stripe's signed events too, as Stripe advises.
        webhook = self.stripe == "sim" and self.plan.payments == "intents"
        server = pipeline.start_server(*self.plan.server_flags(), wait=False, webhook=webhook)
        workers = [pipeline.start_worker(*self.worker_flags(), wait=False)]
        workers += [
            pipeline.start_worker(*self.worker_flags(), wait=False)
            for _ in range(self.plan.workers - 1)
        ]
        pipeline.wait_ready(server)
        for worker in workers:
            pipeline.wait_ready(worker)
        self.say(f"workers: {len(workers)} x {self.plan.worker_concurrency} threads ready")
        return pipeline

    def check_external_redis(self, url: str) -> None:
        client = store.connect(url)
        store.check(client)
        if client.exists(keys.order_index()) or client.exists(keys.stock("*")):
            raise ConfigError(
                f"{url} already holds a sale (orders or stock); rehearse on an empty database, "
                "e.g. another /N, or let rehearse start a private Redis"
            )

    def worker_flags(self) -> list[str]:
        return ["--concurrency", str(self.plan.worker_concurrency), *self.plan.worker_flags()]

    def workers(self) -> list[Any]:
        return self.pipeline.workers()

    def restart_dead_workers(self, suspects: set[int], t0: float) -> set[int]:
        """Replace each worker that exited without being asked (seen dead on two polls, so a
        chaos kill, which replaces its victim at once, is never replaced twice); returns the
        workers seen dead on this poll."""
        dead_now: set[int] = set()
        for child in self.pipeline.workers():
            if child.alive() or self.pipeline.was_replaced(child):
                continue
            if id(child) not in suspects:
                dead_now.add(id(child))
                continue
            code = child.process.returncode if child.process else None
            last = (child.tail(1) or "").strip()[:300]
            self.say(f"{child.name} exited unexpectedly (code {code}): {last!r}; replacing it")
            replacement = self.pipeline.replace_worker(child)
            if replacement is None:
                continue  # the chaos injector replaced it first
            self.say(f"started {replacement.name} in place of {child.name}")
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

    def pipeline_settings(self, pipeline: LocalPipeline) -> Settings:
        """The settings the children run with, for reconciliation in this process."""
        base = Settings.from_env(pipeline.env)
        sku = self.plan.sale.get("sku")
        return base.replace(sale_sku=sku).checked()

    # --- load -------------------------------------------------------------------------------

    def room_opener(self, pipeline: LocalPipeline) -> Callable[[float], None] | None:
        """With the waiting room's doors closed, what opens them at loadgen's doors instant."""
        if not self.plan.room_on or self.plan.waiting_room.get("room_doors") != "closed":
            return None
        sku = self.pipeline_settings(pipeline).sale_sku

        def open_room(at_s: float) -> None:
            queued = waiting_room.open_doors(store.connect(pipeline.redis_url), sku, at_s=at_s)
            self.say(f"waiting room: doors open for {queued} queued customers")

        return open_room

    def run_loadgen(self, pipeline: LocalPipeline) -> coordinator.RunResult:
        """The load runs here, in the foreground (same terminal, same Ctrl-C): its shards play
        in their own processes, this process coordinates and draws the dashboard."""
        config = dataclasses.replace(self.load_config, url=pipeline.server_url)
        # The shards are spawned from this process and inherit its environment: marked like
        # every other process of the run, so strays can be found (see LocalPipeline's env).
        # multiprocessing's resource tracker, started with the first spawn, serves this process
        # for its whole life, not the run: it starts unmarked.
        resource_tracker.ensure_running()
        previous = os.environ.get(RUN_MARKER)
        os.environ[RUN_MARKER] = str(self.run_dir)
        try:
            result = coordinator.run(config, self.console, on_doors=self.room_opener(pipeline))
        finally:
            if previous is None:
                os.environ.pop(RUN_MARKER, None)
            else:
                os.environ[RUN_MARKER] = previous
        if result.report.run.interrupted:
            raise KeyboardInterrupt  # Ctrl-C reached the load run: the rehearsal stops too
        return result

    def drain(self, pipeline: LocalPipeline) -> None:
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
                "waiting_room": result.plan.waiting_room
                if result.plan.room_on
                else {"enabled": False},
                "extra_loadgen_options": self.loadgen_options,
            },
            "stripe": self.stripe,
            "redis_durable": self.redis_durable,
            "redis_sentinel": self.redis_sentinel,
            "chaos": [record.as_dict() for record in result.chaos],
            "worker_restarts": result.worker_restarts,
            "counters": result.counters.as_dict() if result.counters else None,
            "counters_not_comparable": result.counters_not_comparable,
            "passed": result.passed,
            "exit_code": result.exit_code,
            "interrupted": result.interrupted,
            "checks": [check.__dict__ for check in result.checks],
            "reconciliation": result.reconciliation.as_dict() if result.reconciliation else None,
            "loadgen_exit": result.loadgen_exit,
            "loadgen": result.loadgen_report.as_dict() if result.loadgen_report else None,
        }
        verdict = verdict_line(result)
        report["verdict"] = verdict
        report["unwritten"] = result.unwritten  # loadgen.json, if it could not be written
        document = json.dumps(report, indent=2, default=str)
        writes = (
            lambda: outputs.write_text(self.run_dir / "report.json", document),
            # Written last, after reconciliation: the whole rehearsal, not only its load run.
            lambda: rehearsal_report.write(result, report, verdict, self.run_dir / "report.html"),
        )
        for write in writes:  # one failing does not stop the other
            try:
                write()
            except OutputError as error:
                result.unwritten.append(str(error))


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
        failed = report.slo.failed
        checks.append(Check("SLOs met", not failed, ", ".join(failed) or "all met"))
        generator = report.generator
        checks.append(
            Check("generator kept up", generator.valid, "; ".join(generator.invalid_reasons))
        )
        problems = len(report.integrity_problems)
        checks.append(
            Check(
                "one final result per customer",
                not problems,
                f"{problems} customers saw conflicting results" if problems else "yes",
            )
        )
    if report is not None and OVERTOOK in report.room:
        overtook = report.room[OVERTOOK]
        checks.append(
            Check(
                "no customer admitted ahead of an earlier arrival",
                overtook == 0,
                f"{overtook} admitted while someone who came over {FAIRNESS_SLACK_S:g} s "
                "earlier still waited",
            )
        )
    if report is not None and result.counters is not None:
        checks.append(cross_check(report, result.counters, result.counters_not_comparable))
    if rec is not None:
        for name, count in rec.discrepancies().items():
            checks.append(Check(name.replace("_", " "), count == 0, str(count)))
        if report is not None:
            checks.append(unsold_check(rec, report))
            seen = report.outcomes["succeeded"]
            stored = rec.orders_by_state.get(orders.SUCCEEDED, 0)
            checks.append(
                Check(
                    "loadgen successes = paid orders",
                    seen == stored,
                    f"loadgen {seen}, orders {stored}",
                )
            )
    return checks


def unsold_check(rec: Reconciliation, report: LoadReport) -> Check:
    """No customer may be told sold out while a unit could still be sold: at the end, units
    left (or held) beside customers turned away are sales lost to the answer's timing."""
    unsold = rec.stock_left + rec.units_held
    turned_away = report.outcomes.get("sold_out", 0)
    lost = min(unsold, turned_away)
    detail = f"{unsold} unsold, {turned_away} customers told sold out"
    if rec.sell_through is not None:
        detail += f"; sell-through {rec.sell_through:.1%}"
    return Check("units unsold while customers were turned away", lost == 0, detail)


def verdict_line(result: RehearsalResult) -> str:
    """The verdict's first line: PASSED, or why not (the first check that failed)."""
    if result.interrupted:
        return "INTERRUPTED: the rehearsal stopped before it finished"
    if result.passed:
        return "PASSED: every check and SLO held"
    failed = [check for check in result.checks if not check.passed]
    if result.exit_code == EXIT_INVALID and result.loadgen_report is not None:
        reasons = result.loadgen_report.generator.invalid_reasons
        return "INVALID: the load generator could not keep up: " + "; ".join(reasons)
    if failed:
        first = failed[0]
        more = f" (and {len(failed) - 1} more checks)" if len(failed) > 1 else ""
        return f"FAILED: {first.name}: {first.detail}{more}"
    return "FAILED: not reconciled"


def cross_check(report: LoadReport, seen: Counters, not_comparable: str | None) -> Check:
    """The 5xx customers were answered against the 5xx the server says it answered."""
    name = "customers' 5xx = the server's"
    pairs = {
        endpoint: (
            report.requests.get(endpoint, {}).get("server_errors", 0),
            seen.server_5xx(endpoint),
        )
        for endpoint in counters.ROUTES
    }
    detail = ", ".join(f"{e}: customers {c}, server {s}" for e, (c, s) in pairs.items())
    if not_comparable or seen.unavailable:
        why = not_comparable or "; ".join(seen.unavailable)
        return Check(name, True, f"not compared: {why} ({detail})")
    return Check(name, all(c == s for c, s in pairs.values()), detail)


def exit_code_for(result: RehearsalResult) -> int:
    if result.interrupted:
        return EXIT_INTERRUPTED
    report = result.loadgen_report
    if report is not None and not report.generator.valid:
        return EXIT_INVALID
    if result.reconciliation is None or not all(check.passed for check in result.checks):
        return EXIT_FAILED
    return EXIT_OK

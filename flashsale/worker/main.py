"""The `flashsale worker` process: run the Celery worker with its watchdog and sweeper."""

from __future__ import annotations

import logging
import os
import sys

from celery.signals import (
    task_postrun,
    task_prerun,
    worker_ready,
    worker_shutdown,
    worker_shutting_down,
)

from flashsale.core import jobs, store
from flashsale.errors import ComponentFailed, ConfigError
from flashsale.settings import Settings
from flashsale.worker import READY_LINE
from flashsale.worker.app import create_celery
from flashsale.worker.notify import require_notify_secret
from flashsale.worker.sweeper import PendingSweeper
from flashsale.worker.tasks import BUDGET_MAX_WAIT_S
from flashsale.worker.watchdog import ConsumerWatchdog

# The longest one task spends beside its Stripe call: its wait for a Stripe slot, plus slack.
# The watchdog's stall time must exceed a whole task, or busy threads would look stalled.
TASK_OVERHEAD_S = BUDGET_MAX_WAIT_S + 1.0
# Seven INFO lines per order cost ~6% of the worker's CPU (py-spy). Six say nothing the order's
# own line ("order <id> <status>") does not, and show only with --loglevel DEBUG: Celery's
# "Task ... received" and "Task ... succeeded in ..." for both tasks, and stripe's "Request to
# Stripe api" and "Stripe API response". Celery's retry line goes with them (same logger), so the
# tasks log their retries themselves, as warnings. Errors and failures always show.
PER_TASK_LOGGERS = ("celery.worker.strategy", "celery.app.trace", "stripe")


def quiet_task_lines(loglevel: str) -> None:
    """The per-task INFO lines only at DEBUG; set before Celery builds its task tracers."""
    if loglevel.upper() != "DEBUG":
        for name in PER_TASK_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)


def announce_ready(**_: object) -> None:
    print(READY_LINE, file=sys.__stdout__, flush=True)


def check_stall_timeout(settings: Settings, stall_timeout_s: float) -> None:
    minimum = settings.stripe_timeout_s + TASK_OVERHEAD_S
    if 0 < stall_timeout_s <= minimum:
        raise ConfigError(
            f"--stall-timeout must exceed the Stripe timeout plus {TASK_OVERHEAD_S:.0f}s "
            f"({minimum:g}s), or threads busy in slow charges would look stalled (0 turns it off)"
        )


def run_worker(
    settings: Settings,
    concurrency: int,
    loglevel: str = "INFO",
    events: bool = True,
    stall_timeout_s: float = 60.0,
    sweep_after_s: float | None = None,
) -> None:
    """Run a threads-pool worker until SIGTERM/SIGINT; task events and heartbeats unless not.

    Orders pending longer than sweep_after_s (default: the visibility timeout; 0: never) are
    re-queued by a sweeper thread, so an order placed but never queued still gets charged.

    Raises ComponentFailed when Celery stopped the worker on an error (its worker_main would
    return normally and the process exit 0, hiding the failure from any supervisor).
    """
    check_stall_timeout(settings, stall_timeout_s)
    require_notify_secret(settings)  # before Redis: a setup mistake is said first
    store.check(store.connect(settings.redis_url))
    app = create_celery(settings)
    quiet_task_lines(loglevel)
    worker_ready.connect(announce_ready, weak=False)
    if stall_timeout_s > 0:
        watchdog = ConsumerWatchdog(store.connect(settings.redis_url, timeout_s=2), stall_timeout_s)
        task_prerun.connect(watchdog.progress, weak=False)
        task_postrun.connect(watchdog.progress, weak=False)
        worker_ready.connect(lambda **_: watchdog.start(), weak=False)
    after_s = settings.visibility_timeout_s if sweep_after_s is None else sweep_after_s
    if after_s > 0:
        sweeper = PendingSweeper(
            store.connect(settings.redis_url, timeout_s=2),
            lambda order_id: app.send_task(
                jobs.CREATE_CHARGE, queue=jobs.QUEUE, **jobs.publish_options(order_id)
            ),
            after_s,
        )
        worker_ready.connect(lambda **_: sweeper.start(), weak=False)
    exit_codes: list[int] = []
    signalled: list[object] = []  # SIGINT/SIGTERM stops also exit 1: those are asked for
    worker_shutting_down.connect(lambda **kwargs: signalled.append(kwargs.get("sig")), weak=False)
    worker_shutdown.connect(
        lambda sender, **_: exit_codes.append(int(getattr(sender, "exitcode", 0) or 0)),
        weak=False,
    )
    app.worker_main(
        argv=[
            "worker",
            "--pool=threads",
            f"--concurrency={concurrency}",
            # Heartbeats are events too; `flashsale status` pings workers instead.
            *(["--task-events"] if events else ["--without-heartbeat"]),
            f"--loglevel={loglevel}",
            # Results first: kombu polls the queues in turn, so results never wait on charges.
            f"--queues={jobs.RESULTS_QUEUE},{jobs.QUEUE}",
            "--without-mingle",
            "--without-gossip",
            # Unique per process so several workers on one host stay apart in Flower.
            f"--hostname=flashsale-{os.getpid()}@%h",
        ]
    )
    if any(exit_codes) and not signalled:
        # Seen after a Redis restart: kombu closes the lost connection twice and the second
        # close raises ("Unrecoverable error" above); a supervisor restarts a worker that exits.
        raise ComponentFailed(
            f"the worker stopped after an unrecoverable error (Celery exit code {max(exit_codes)});"
            " see the log above; restart it"
        )

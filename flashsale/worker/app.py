"""The Celery app of the charge pipeline: its measured configuration and create_celery()."""

from __future__ import annotations

from celery import Celery

from flashsale.core import broker, jobs
from flashsale.settings import Settings
from flashsale.worker.tasks import WorkerContext, register_tasks


def celery_config(settings: Settings) -> dict[str, object]:
    """The measured settings (ARCHITECTURE.md): at-least-once delivery, no result backend."""
    return {
        **broker.celery_broker(settings.redis_url, **broker_transport_options(settings)),
        "broker_connection_retry_on_startup": True,
        "task_default_queue": jobs.QUEUE,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_ignore_result": True,
        "result_backend": None,
        "worker_prefetch_multiplier": 1,
        # `flashsale worker` turns task events on (-E) for Flower / `celery events` unless
        # --no-events. Sent the way Celery sends them they cost ~40% of the worker's CPU per
        # order (7.2 vs 4.4 ms, benchmarks/stripe_budget.py); in 100 ms batches (the consumer
        # below) about 2% (4.7 vs 4.6 ms per checkout at 150/s, benchmarks/pipeline.py).
        "worker_send_task_events": False,
        "worker_consumer": "flashsale.worker.consumer:Consumer",
        "task_send_sent_event": False,
        "worker_redirect_stdouts": False,
        "worker_hijack_root_logger": True,
    }


def broker_transport_options(settings: Settings) -> dict[str, object]:
    """Redelivery of a dead worker's unacked tasks after visibility_timeout.

    kombu sweeps for them every interval * throttle seconds (100 s by default); sweeping every
    few seconds instead (one cheap ZRANGE under a mutex) bounds recovery near the timeout.
    """
    return {
        "visibility_timeout": settings.visibility_timeout_s,
        "unacked_restore_interval": max(1, min(10, settings.visibility_timeout_s // 2)),
        "unacked_restore_throttle": 1,
    }


def create_celery(settings: Settings) -> Celery:
    """A Celery app with the pipeline's tasks registered, bound to these settings."""
    app = Celery("flashsale", set_as_current=False)
    app.conf.update(celery_config(settings))
    register_tasks(app, WorkerContext.build(settings))
    return app

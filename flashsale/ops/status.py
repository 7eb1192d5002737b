"""One snapshot of a running sale for its operators: Redis, queue, workers, orders, stock."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
import redis
from celery import Celery
from rich.console import RenderableType
from rich.live import Live

from flashsale.core import broker, inventory, jobs, orders, store
from flashsale.settings import Settings

SOCKETS_METRIC = re.compile(r"^flashsale_sockets_connected\s+([0-9.e+]+)$", re.MULTILINE)


@dataclass
class Status:
    """What `flashsale status` shows; fields are None where the part could not be reached."""

    redis_ok: bool
    stripe_mode: str
    sku: str
    redis_error: str | None = None
    queue_depth: int | None = None
    unacked: int | None = None
    workers: list[str] = field(default_factory=list)
    orders_by_state: dict[str, int] = field(default_factory=dict)
    stock_left: int | None = None
    stock_initial: int | None = None
    sockets_connected: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def collect_status(
    settings: Settings, server_url: str | None = None, ping_timeout_s: float = 1.0
) -> Status:
    """Ask each part once; a part that does not answer is shown as unknown, never hidden."""
    status = Status(redis_ok=False, stripe_mode=settings.stripe_mode, sku=settings.sale_sku)
    client = store.connect(settings.redis_url, timeout_s=2.0)
    try:
        client.ping()
        status.redis_ok = True
        status.queue_depth = int(client.llen(jobs.QUEUE))
        # kombu keeps delivered-but-unacknowledged tasks here until the worker acks them.
        status.unacked = int(client.hlen("unacked"))
        status.orders_by_state = orders.count_by_state(client, settings.sale_sku)
        status.stock_left = inventory.stock_left(client, settings.sale_sku)
        status.stock_initial = inventory.initial_stock(client, settings.sale_sku)
    except redis.RedisError as error:
        status.redis_error = str(error)
    finally:
        client.close()
    if status.redis_ok:
        status.workers = ping_workers(settings.redis_url, ping_timeout_s)
    if server_url:
        status.sockets_connected = scrape_sockets(server_url)
    return status


def watch_status(
    settings: Settings,
    server_url: str | None,
    interval_s: float,
    render: Callable[[Status], RenderableType],
    first: Status,
) -> None:
    """`status --watch`: the screen from `first`, refreshed every interval until Ctrl-C."""
    with Live(render(first), refresh_per_second=4) as live:
        try:
            while True:
                time.sleep(interval_s)
                live.update(render(collect_status(settings, server_url)))
        except KeyboardInterrupt:
            pass


def ping_workers(redis_url: str, timeout_s: float) -> list[str]:
    """Names of the Celery workers that answer a broadcast ping within the timeout."""
    app = Celery("flashsale-status", set_as_current=False)
    app.conf.update(broker.celery_broker(redis_url))
    try:
        replies = app.control.ping(timeout=timeout_s) or []
    finally:
        app.close()
    return sorted(name for reply in replies for name in reply)


def scrape_sockets(server_url: str) -> int | None:
    """Sockets connected, from the server's /metrics (None when the server does not answer)."""
    try:
        response = httpx.get(f"{server_url.rstrip('/')}/metrics", timeout=2.0)
        response.raise_for_status()
    except httpx.HTTPError:
        return None
    match = SOCKETS_METRIC.search(response.text)
    return int(float(match.group(1))) if match else None

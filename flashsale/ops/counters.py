"""What the server, the workers and Stripe counted during a rehearsal, beside what customers saw.

A customer's 5xx is a server's 5xx: the two counts must agree, and when they do not, that is
reported (something between them answered, or one side does not count). Read after the sale,
from the server's /metrics, the simulator's /_sim/stats and the workers' logs.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

# The worker logs each retry of a Stripe call as a WARNING (worker/tasks.py retry_later).
RETRY_LINE = re.compile(r"flashsale\.create_charge for order \S+: retry \d+ of \d+")
# What each customer endpoint is called on the server (its route pattern in /metrics).
ROUTES = {"session": ("GET", "/session"), "submit": ("POST", "/charges")}


@dataclass
class Counters:
    """The other side's figures; `unavailable` says what could not be read and why."""

    server_responses: dict[str, dict[str, int]] = field(default_factory=dict)  # route -> status
    server_redis_errors: dict[str, int] = field(default_factory=dict)  # kind -> count
    # Stripe events the server's /stripe/webhook took, by outcome (processed, duplicate, ...).
    server_webhooks: dict[str, int] = field(default_factory=dict)
    stripe: dict[str, Any] = field(default_factory=dict)
    worker_stripe_retries: int = 0
    unavailable: list[str] = field(default_factory=list)

    def server_5xx(self, endpoint: str) -> int:
        method, route = ROUTES[endpoint]
        statuses = self.server_responses.get(f"{method} {route}", {})
        return sum(count for status, count in statuses.items() if status.startswith("5"))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def collect(server_url: str, sim_url: str | None, log_dir: Path) -> Counters:
    counters = Counters()
    try:
        text = httpx.get(f"{server_url}/metrics", timeout=5).text
    except httpx.HTTPError as error:
        counters.unavailable.append(f"server /metrics: {error}")
    else:
        read_metrics(text, counters)
    if sim_url:
        try:
            stats = httpx.get(f"{sim_url}/_sim/stats", timeout=5).json()
        except (httpx.HTTPError, ValueError) as error:
            counters.unavailable.append(f"simulator /_sim/stats: {error}")
        else:
            counters.stripe = {
                "requests": stats.get("requests", {}),
                "rate_limited": stats.get("rate_limited", {}),
                "injected_errors": stats.get("injected_errors", 0),
                "dropped_connections": stats.get("dropped_connections", 0),
                "idempotent_replays": stats.get("idempotent_replays", 0),
                "idempotency_conflicts": stats.get("idempotency_conflicts", 0),
                # Deliveries (delivered, dropped, duplicated, held_back, retries, gave_up) and
                # their lag, event created -> answered 200 by the server (which had applied it or
                # found its order already final).
                "webhooks": stats.get("webhooks", {}),
            }
    counters.worker_stripe_retries = sum(
        len(RETRY_LINE.findall(path.read_text(errors="replace")))
        for path in sorted(log_dir.glob("worker*.log"))
    )
    return counters


def webhook_summary(stripe: dict[str, Any], server_webhooks: dict[str, int]) -> str | None:
    """One line on the webhooks of the sale, as the simulator sent them and the server took
    them; None when there were none (the Charges path)."""
    sent = stripe.get("webhooks") or {}
    if not sent.get("endpoints") and not server_webhooks:
        return None
    faults = ", ".join(
        f"{name.replace('_', ' ')} {sent.get(name, 0)}"
        for name in ("dropped", "duplicated", "held_back", "retries", "gave_up")
    )
    lag = sent.get("lag_s") or {}
    lag_text = (
        f"; lag event -> answered median {lag['median']:g} s, max {lag['max']:g} s" if lag else ""
    )
    taken = ", ".join(f"{k} {v}" for k, v in sorted(server_webhooks.items()) if v) or "none"
    return (
        f"Stripe delivered {sent.get('delivered', 0)} webhook events ({faults}){lag_text}; "
        f"the server took: {taken}"
    )


def read_metrics(text: str, counters: Counters) -> None:
    responses: dict[str, Counter[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "flashsale_http_requests_total":
                key = f"{labels['method']} {labels['route']}"
                responses.setdefault(key, Counter())[labels["status"]] += int(sample.value)
            elif sample.name == "flashsale_redis_errors_total":
                kinds = counters.server_redis_errors
                kinds[labels["kind"]] = kinds.get(labels["kind"], 0) + int(sample.value)
            elif sample.name == "flashsale_stripe_webhooks_total":
                hooks = counters.server_webhooks
                hooks[labels["outcome"]] = hooks.get(labels["outcome"], 0) + int(sample.value)
    counters.server_responses = {key: dict(statuses) for key, statuses in responses.items()}


def why_not_comparable(server_workers: int, server_restarted: bool) -> str | None:
    """When the server's counters cannot be held against the customers' (None: they can)."""
    if server_workers > 1:
        return f"{server_workers} server processes keep their own counters; /metrics shows one"
    if server_restarted:
        return "the server was restarted during the sale, and its counters with it"
    return None

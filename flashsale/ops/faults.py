"""The fault grammar of a rehearsal: which faults exist and FAULT@START[:DURATION] specs.

Kept apart from the injector (ops/chaos.py) so the CLI's help text and the scenario check
import no threads, processes or clients.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from flashsale.errors import ConfigError
from flashsale.units import parse_duration

MAX_FAULTS = 20
MAX_START_S = 3600.0
MAX_DURATION_S = 600.0


@dataclass(frozen=True)
class FaultKind:
    name: str
    duration: str  # "required" | "forbidden" | "optional"
    summary: str
    simulator: bool = False  # acts on the Stripe simulator (not real test mode)
    webhooks: bool = False  # acts on webhook deliveries: only the PaymentIntents path has them


FAULT_KINDS: dict[str, FaultKind] = {
    kind.name: kind
    for kind in (
        FaultKind(
            "kill-worker",
            "forbidden",
            "SIGKILL one worker's process group, start a replacement, wait until it is ready "
            "(its unacknowledged tasks come back after the visibility timeout)",
        ),
        FaultKind(
            "restart-server",
            "forbidden",
            "stop the server (SIGTERM, graceful) and start it again on the same port; "
            "customers' sockets drop and they reconnect or ask GET /orders/<id>",
        ),
        FaultKind("pause-server", "required", "SIGSTOP the server, SIGCONT it after DURATION"),
        FaultKind(
            "redis-listener",
            "optional",
            "drop the server's Redis pub/sub connection (CLIENT KILL TYPE pubsub) so emits are "
            "lost in flight; with DURATION, again every 100 ms for that long",
        ),
        FaultKind(
            "restart-redis",
            "forbidden",
            "stop the private Redis (SIGTERM) and start it again on the same port and data "
            "directory: without --redis-durable it comes back empty",
        ),
        FaultKind(
            "failover-redis",
            "forbidden",
            "SIGKILL the Redis primary (--redis-sentinel): the sentinels promote the replica "
            "and every component follows; what the replica had not yet received is lost; the "
            "old primary comes back as the new replica",
        ),
        FaultKind(
            "sim-stall",
            "required",
            "SIGSTOP the simulator for DURATION: connections are accepted, nothing is answered "
            "(longer than the workers' retry budget, the charges' outcomes are unknown until "
            "it answers again)",
            True,
        ),
        FaultKind(
            "slow-clients",
            "required",
            "200 connections to the server that send their request headers a byte a second, "
            "each reopened when the server cuts it, for DURATION",
        ),
        FaultKind(
            "sim-429", "required", "simulator rate limit at test mode (25/s) for DURATION", True
        ),
        FaultKind("sim-5xx", "required", "simulator answers every request 500 for DURATION", True),
        FaultKind(
            "sim-latency", "required", "simulator adds 1.5 s to every request for DURATION", True
        ),
        FaultKind(
            "sim-drop",
            "required",
            "simulator commits half the charges but drops the connection before answering, "
            "for DURATION",
            True,
        ),
        FaultKind(
            "webhook-delay",
            "required",
            "simulator delivers each webhook event 5 s late, for DURATION",
            True,
            True,
        ),
        FaultKind(
            "webhook-drop",
            "required",
            "simulator never delivers half the webhook events made during DURATION (the "
            "sweeper must read those PaymentIntents)",
            True,
            True,
        ),
        FaultKind(
            "webhook-duplicate",
            "required",
            "simulator delivers half the webhook events made during DURATION twice",
            True,
            True,
        ),
        FaultKind(
            "webhook-reorder",
            "required",
            "simulator holds back half the webhook events made during DURATION, so later "
            "ones overtake them",
            True,
            True,
        ),
    )
}

SPEC_HELP = (
    "Faults to inject while the customers arrive: comma-separated FAULT@START[:DURATION], "
    "times with their unit (5s, 500ms, 1.5s) from the first arrival, e.g. "
    "'kill-worker@5s,pause-server@8s:2s,sim-429@4s:3s'. Faults: "
    + "; ".join(
        f"{kind.name}{' (DURATION)' if kind.duration == 'required' else ''}: {kind.summary}"
        for kind in FAULT_KINDS.values()
    )
    + "."
)

_ITEM = re.compile(r"^(?P<name>[a-z0-9-]+)@(?P<start>[^:]+)(?::(?P<duration>.+))?$")


@dataclass(frozen=True)
class Fault:
    """One planned fault: what, when (seconds after the run starts) and for how long."""

    name: str
    start_s: float
    duration_s: float | None = None

    def __str__(self) -> str:
        text = f"{self.name}@{self.start_s:g}s"
        return text + (f":{self.duration_s:g}s" if self.duration_s is not None else "")


def parse_spec(spec: str) -> list[Fault]:
    """'kill-worker@5s,pause-server@8s:2s' -> faults sorted by start; ConfigError on mistakes."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError("--chaos needs at least one fault, e.g. 'kill-worker@5s'")
    faults: list[Fault] = []
    for raw in spec.split(","):
        item = raw.strip()
        match = _ITEM.match(item)
        if not match:
            raise ConfigError(
                f"chaos fault {item!r} must look like FAULT@START[:DURATION], e.g. 'sim-429@4s:3s'"
            )
        name = match.group("name")
        kind = FAULT_KINDS.get(name)
        if kind is None:
            raise ConfigError(f"unknown chaos fault {name!r}; known: {', '.join(FAULT_KINDS)}")
        start = parse_duration(match.group("start"), f"the start of {name}")
        if start > MAX_START_S:
            raise ConfigError(f"{name} starts at most {MAX_START_S:.0f}s into the run")
        duration_text = match.group("duration")
        duration = None
        if duration_text is not None:
            if kind.duration == "forbidden":
                raise ConfigError(f"{name} is instantaneous: drop ':{duration_text}'")
            duration = parse_duration(duration_text, f"the duration of {name}")
            if not 0 < duration <= MAX_DURATION_S:
                raise ConfigError(
                    f"the duration of {name} must be above 0 and at most {MAX_DURATION_S:.0f}s"
                )
        elif kind.duration == "required":
            raise ConfigError(f"{name} needs a duration, e.g. '{name}@{start:g}s:3s'")
        faults.append(Fault(name, start, duration))
    if len(faults) > MAX_FAULTS:
        raise ConfigError(f"at most {MAX_FAULTS} chaos faults per run, not {len(faults)}")
    return sorted(faults, key=lambda fault: fault.start_s)


def check_target(
    faults: list[Fault], has_simulator: bool, sentinel: bool = False, webhooks: bool = False
) -> None:
    """Refuse, before anything starts, faults this pipeline cannot take (a fault with nothing
    to act on would be a rehearsal that cannot fail)."""
    names = {fault.name for fault in faults}
    hooks = sorted(name for name in names if FAULT_KINDS[name].webhooks)
    if hooks and not webhooks:
        raise ConfigError(
            f"{', '.join(hooks)} act on webhooks, which only --payments intents receives"
        )
    if "failover-redis" in names and not sentinel:
        raise ConfigError("failover-redis needs Redis under Sentinel: add --redis-sentinel")
    if "restart-redis" in names and sentinel:
        raise ConfigError(
            "restart-redis acts on a single Redis; under --redis-sentinel use failover-redis"
        )
    if not has_simulator:
        sim = sorted({fault.name for fault in faults if FAULT_KINDS[fault.name].simulator})
        if sim:
            raise ConfigError(f"{', '.join(sim)} need the simulator, not --stripe test")

"""Fault rehearsal: a schedule of faults parsed from a spec, injected into a running pipeline."""

from __future__ import annotations

import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from flashsale.errors import ConfigError
from flashsale.ops.processes import Child

MAX_FAULTS = 20
MAX_START_S = 3600.0
MAX_DURATION_S = 600.0
# redis-listener with a duration kills the subscriber again this often: each kill loses the
# emits published until it has resubscribed, so a window of kills loses many in flight.
LISTENER_KILL_EVERY_S = 0.1
STOP_JOIN_S = 60.0


@dataclass(frozen=True)
class FaultKind:
    name: str
    duration: str  # "required" | "forbidden" | "optional"
    summary: str


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
        FaultKind("sim-429", "required", "simulator rate limit at test mode (25/s) for DURATION"),
        FaultKind("sim-5xx", "required", "simulator answers every request 500 for DURATION"),
        FaultKind("sim-latency", "required", "simulator adds 1.5 s to every request for DURATION"),
        FaultKind(
            "sim-drop",
            "required",
            "simulator commits half the charges but drops the connection before answering, "
            "for DURATION",
        ),
    )
}

# What each simulator fault posts to /_sim/config; the same keys are restored afterwards.
SIM_CHANGES: dict[str, dict[str, Any]] = {
    "sim-429": {"rate_limit": "test"},
    "sim-5xx": {"error_rate": 1.0},
    "sim-latency": {"latency": "1500ms"},
    "sim-drop": {"drop_rate": 0.5},
}

SPEC_HELP = (
    "Faults to inject while the customers arrive: comma-separated FAULT@START[:DURATION], "
    "times like 5s, 500ms or 1.5 (seconds) from the first arrival, e.g. "
    "'kill-worker@5s,pause-server@8s:2s,sim-429@4s:3s'. Faults: "
    + "; ".join(
        f"{kind.name}{' (DURATION)' if kind.duration == 'required' else ''}: {kind.summary}"
        for kind in FAULT_KINDS.values()
    )
    + "."
)

_ITEM = re.compile(r"^(?P<name>[a-z0-9-]+)@(?P<start>[^:]+)(?::(?P<duration>.+))?$")
_TIME = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)(ms|s)?$")


@dataclass(frozen=True)
class Fault:
    """One planned fault: what, when (seconds after the run starts) and for how long."""

    name: str
    start_s: float
    duration_s: float | None = None

    def __str__(self) -> str:
        text = f"{self.name}@{self.start_s:g}s"
        return text + (f":{self.duration_s:g}s" if self.duration_s is not None else "")


def parse_time(text: str, what: str) -> float:
    match = _TIME.match(text.strip())
    if not match:
        raise ConfigError(f"{what} must be a time like 5s, 500ms or 1.5, not {text!r}")
    seconds = float(match.group(1)) * (0.001 if match.group(2) == "ms" else 1.0)
    return seconds


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
        start = parse_time(match.group("start"), f"the start of {name}")
        if start > MAX_START_S:
            raise ConfigError(f"{name} starts at most {MAX_START_S:.0f}s into the run")
        duration_text = match.group("duration")
        duration = None
        if duration_text is not None:
            if kind.duration == "forbidden":
                raise ConfigError(f"{name} is instantaneous: drop ':{duration_text}'")
            duration = parse_time(duration_text, f"the duration of {name}")
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


class ChaosTarget(Protocol):
    """What the injector acts on: a rehearsal's (or a test's) running pipeline."""

    redis_url: str
    sim_url: str | None

    def workers(self) -> list[Child]: ...

    def replace_worker(self, dead: Child) -> Child:
        """Start a worker in place of dead (already killed) and wait until it is ready."""
        ...

    def server(self) -> Child: ...

    def restart_server(self) -> Child:
        """Stop the server and start it again on the same port; return once it listens."""
        ...

    def restart_redis(self) -> None:
        """Stop Redis and start it again on the same port and data directory."""
        ...


@dataclass
class FaultRecord:
    """What really happened, in seconds since the injector started (and wall-clock time)."""

    fault: str
    planned_start_s: float
    planned_duration_s: float | None
    started_s: float | None = None
    ended_s: float | None = None
    started_at: float | None = None
    detail: str = ""
    error: str | None = None
    skipped: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Injector:
    """Runs each fault in its own thread at its time; stop() ends waits and undoes faults.

    Bounded: at most MAX_FAULTS threads, each waiting on one shared stop event, and stop()
    joins them with a timeout. A fault whose time has not come when the run ends is skipped.
    """

    target: ChaosTarget
    faults: list[Fault]
    say: Callable[[str], None] = print
    records: list[FaultRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one process action at a time (children lists)
        self._threads: list[threading.Thread] = []
        self._t0 = 0.0
        self._sim_baseline: dict[str, Any] = {}

    def start(self) -> Injector:
        self._t0 = time.monotonic()
        if any(fault.name in SIM_CHANGES for fault in self.faults):
            self._sim_baseline = self._sim_get()
        for fault in self.faults:
            record = FaultRecord(str(fault), fault.start_s, fault.duration_s)
            self.records.append(record)
            thread = threading.Thread(
                target=self._run_one, args=(fault, record), name=f"chaos-{fault.name}", daemon=True
            )
            self._threads.append(thread)
            thread.start()
        return self

    def stop(self) -> list[FaultRecord]:
        """End the schedule: faults not yet started are skipped, running ones are undone."""
        self._stop.set()
        deadline = time.monotonic() + STOP_JOIN_S
        for thread in self._threads:
            thread.join(timeout=max(0.1, deadline - time.monotonic()))
        return self.records

    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    def all_fired(self) -> bool:
        return all(r.started_s is not None and r.error is None for r in self.records)

    # --- one fault ------------------------------------------------------------------------

    def _run_one(self, fault: Fault, record: FaultRecord) -> None:
        if self._stop.wait(max(0.0, fault.start_s - self.elapsed())):
            record.skipped = True
            record.detail = "the run ended before its time"
            return
        record.started_s = round(self.elapsed(), 3)
        record.started_at = time.time()
        self.say(f"chaos: {fault} begins at {record.started_s:.1f}s")
        try:
            record.detail = self._inject(fault)
        except Exception as error:  # a fault that cannot be injected is reported, not raised
            record.error = f"{type(error).__name__}: {error}"
            self.say(f"chaos: {fault} could not be injected: {record.error}")
        record.ended_s = round(self.elapsed(), 3)
        self.say(f"chaos: {fault} over at {record.ended_s:.1f}s ({record.detail or 'failed'})")

    def _hold(self, seconds: float | None) -> None:
        """Keep a fault in force for its duration, or until the run stops."""
        if seconds:
            self._stop.wait(seconds)

    def _inject(self, fault: Fault) -> str:
        name = fault.name
        if name == "kill-worker":
            return self._kill_worker()
        if name == "restart-server":
            with self._lock:
                began = time.monotonic()
                child = self.target.restart_server()
            return f"server pid {child.pid} listening again after {time.monotonic() - began:.1f}s"
        if name == "pause-server":
            server = self.target.server()
            server.signal(signal.SIGSTOP)
            try:
                self._hold(fault.duration_s)
            finally:
                server.signal(signal.SIGCONT)
            return f"server pid {server.pid} stopped and continued"
        if name == "redis-listener":
            return self._kill_listeners(fault.duration_s)
        if name == "restart-redis":
            with self._lock:
                began = time.monotonic()
                self.target.restart_redis()
            return f"redis answering again after {time.monotonic() - began:.1f}s"
        if name in SIM_CHANGES:
            changes = SIM_CHANGES[name]
            self._sim_post(changes)
            try:
                self._hold(fault.duration_s)
            finally:
                self._sim_post({key: self._sim_baseline[key] for key in changes})
            return f"simulator {changes} then restored"
        raise ConfigError(f"unknown chaos fault {name!r}")  # parse_spec prevents this

    def _kill_worker(self) -> str:
        with self._lock:
            alive = [child for child in self.target.workers() if child.alive()]
            if not alive:
                raise RuntimeError("no live worker to kill")
            victim = alive[0]
            victim.signal(signal.SIGKILL)  # the whole group: no goodbye, no ack
            if victim.process is not None:
                victim.process.wait(timeout=10)
            began = time.monotonic()
            replacement = self.target.replace_worker(victim)
        return (
            f"killed worker pid {victim.pid}; replacement pid {replacement.pid} ready after "
            f"{time.monotonic() - began:.1f}s"
        )

    def _kill_listeners(self, duration_s: float | None) -> str:
        import redis as redis_lib  # here, not at import: see _sim_get

        client = redis_lib.Redis.from_url(self.target.redis_url, socket_timeout=2)
        killed = 0
        try:
            deadline = time.monotonic() + (duration_s or 0)
            while True:
                killed += int(client.client_kill_filter(_type="pubsub"))
                if time.monotonic() >= deadline or self._stop.wait(LISTENER_KILL_EVERY_S):
                    break
        finally:
            client.close()
        return f"{killed} pub/sub connection(s) killed"

    # --- the simulator's control API ------------------------------------------------------

    def _sim_url(self) -> str:
        if not self.target.sim_url:
            raise ConfigError("simulator faults need the simulator (--stripe sim)")
        return self.target.sim_url

    def _sim_get(self) -> dict[str, Any]:
        # httpx and redis are imported where used: the CLI imports this module for SPEC_HELP at
        # start-up, and `serve --workers` (gunicorn's master) must not load ssl before its
        # workers patch gevent.
        import httpx

        response = httpx.get(f"{self._sim_url()}/_sim/config", timeout=5)
        response.raise_for_status()
        return dict(response.json())

    def _sim_post(self, changes: dict[str, Any]) -> None:
        import httpx

        response = httpx.post(f"{self._sim_url()}/_sim/config", json=changes, timeout=5)
        response.raise_for_status()


def check_target(faults: list[Fault], has_simulator: bool) -> None:
    """Refuse, before anything starts, faults this pipeline cannot take."""
    if not has_simulator:
        sim = sorted({fault.name for fault in faults if fault.name in SIM_CHANGES})
        if sim:
            raise ConfigError(f"{', '.join(sim)} need the simulator, not --stripe test")

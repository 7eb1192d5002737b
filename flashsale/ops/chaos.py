"""Fault injection: runs a rehearsal's faults (ops/faults.py) against its running pipeline."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from flashsale.errors import ConfigError
from flashsale.ops.faults import Fault
from flashsale.ops.processes import Child

# redis-listener with a duration kills the subscriber again this often: each kill loses the
# emits published until it has resubscribed, so a window of kills loses many in flight.
LISTENER_KILL_EVERY_S = 0.1
STOP_JOIN_S = 60.0
# slow-clients: this many connections, each sending one byte of its headers this often.
SLOW_CLIENTS = 200
SLOW_BYTE_EVERY_S = 1.0


# What each simulator fault posts to /_sim/config; the same keys are restored afterwards.
SIM_CHANGES: dict[str, dict[str, Any]] = {
    "sim-429": {"rate_limit": "test"},
    "sim-5xx": {"error_rate": 1.0},
    "sim-latency": {"latency": "1500ms"},
    "sim-drop": {"drop_rate": 0.5},
    "webhook-delay": {"webhook_latency": "5s"},
    "webhook-drop": {"webhook_drop_rate": 0.5},
    "webhook-duplicate": {"webhook_duplicate_rate": 0.5},
    "webhook-reorder": {"webhook_out_of_order_rate": 0.5},
}


class ChaosTarget(Protocol):
    """What the injector acts on: a running pipeline (ops.pipeline.LocalPipeline)."""

    redis_url: str
    sim_url: str | None
    server_url: str

    def of_kind(self, kind: str) -> list[Child]: ...

    def workers(self) -> list[Child]: ...

    def replace_worker(self, dead: Child) -> Child | None:
        """Start a worker in place of dead (already killed) and wait until it is ready; None
        when someone else (a supervisor) replaced it first."""
        ...

    def server(self) -> Child: ...

    def restart_server(self) -> Child:
        """Stop the server and start it again on the same port; return once it listens."""
        ...

    def restart_redis(self) -> None:
        """Stop Redis and start it again on the same port and data directory."""
        ...

    def failover_redis(self) -> str:
        """Kill the Sentinel-watched primary, return once the replica is promoted."""
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
        if name == "sim-stall":
            simulator = self.target.of_kind("stripe-sim")[-1]
            simulator.signal(signal.SIGSTOP)
            try:
                self._hold(fault.duration_s)
            finally:
                simulator.signal(signal.SIGCONT)
            return f"simulator pid {simulator.pid} stopped and continued"
        if name == "slow-clients":
            return self._slow_clients(fault.duration_s or 0)
        if name == "failover-redis":
            with self._lock:
                return self.target.failover_redis()
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
        if replacement is None:
            return f"killed worker pid {victim.pid}; replaced by the worker supervisor"
        return (
            f"killed worker pid {victim.pid}; replacement pid {replacement.pid} ready after "
            f"{time.monotonic() - began:.1f}s"
        )

    def _kill_listeners(self, duration_s: float | None) -> str:
        from flashsale.core import store  # here, not at import: see _sim_get

        client = store.connect(self.target.redis_url, timeout_s=2)
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

    def _slow_clients(self, duration_s: float) -> str:
        """SLOW_CLIENTS connections dripping their headers; each one the server cuts is opened
        again, so the pressure lasts the whole duration. Bounded in count and time."""
        import socket
        from urllib.parse import urlsplit

        address = urlsplit(self.target.server_url)
        host, port = address.hostname or "127.0.0.1", address.port or 80
        line = f"GET /healthz HTTP/1.1\r\nHost: {host}\r\nX-Slow: ".encode()
        sockets: list[tuple[socket.socket, int]] = []
        opened = cut = 0

        def open_one() -> tuple[socket.socket, int] | None:
            nonlocal opened
            try:
                conn = socket.create_connection((host, port), timeout=2)
            except OSError:
                return None
            opened += 1
            return conn, 0

        deadline = time.monotonic() + duration_s
        try:
            sockets = [s for s in (open_one() for _ in range(SLOW_CLIENTS)) if s]
            while not self._stop.wait(SLOW_BYTE_EVERY_S) and time.monotonic() < deadline:
                kept: list[tuple[socket.socket, int]] = []
                for conn, sent in sockets:
                    byte = line[sent : sent + 1] or b"x"
                    try:
                        conn.sendall(byte)
                        kept.append((conn, sent + 1))
                    except OSError:  # the server closed it: open another in its place
                        cut += 1
                        conn.close()
                        again = open_one()
                        if again:
                            kept.append(again)
                sockets = kept
        finally:
            for conn, _ in sockets:
                conn.close()
        return f"{opened} slow connections opened, {cut} cut by the server"

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

"""Benchmark the Socket.IO client manager's per-event costs as the crowd grows.

With N customers connected (each in its namespace, its sid room and a customer room of its own,
as server/sockets.py joins them), times what the server does per customer event: a connect and
join, an emit to one customer's room, get_rooms, and a disconnect. python-socketio's own manager
(`socketio.Manager`) against flashsale's (server/rooms.RoomIndex on the same manager: the Redis
manager's room table is this one, Redis only carries the emits between processes), in
alternating rounds so both see the same machine. Figures: microseconds per operation, median
over rounds, at each N, and each manager's cost at the largest N over its cost at the smallest
(flat is 1x; python-socketio's disconnect grows with N). Prints the command that reproduces it
and the load average. Never asserts.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import socketio
from provenance import print_provenance

from flashsale.server.rooms import RoomIndex

NAMESPACE = "/"
OPERATIONS = ("connect", "emit", "get_rooms", "disconnect")


class IndexedManager(RoomIndex, socketio.Manager):
    """flashsale's index on the in-memory manager (no Redis needed to measure the table)."""


class Muted(socketio.Server):
    """A server whose sends go nowhere: the manager's bookkeeping is what is measured."""

    def _send_eio_packet(self, eio_sid: str, eio_pkt: Any) -> None:
        return None


def crowd(manager_class: type, size: int) -> tuple[Any, list[str]]:
    manager = manager_class()
    Muted(client_manager=manager)
    sids = [join(manager, f"eio-{i}", i) for i in range(size)]
    return manager, sids


def join(manager: Any, eio_sid: str, customer: int) -> str:
    sid = manager.connect(eio_sid, NAMESPACE)
    manager.enter_room(sid, NAMESPACE, f"customer:{customer}")
    return str(sid)


def per_op_us(manager_class: type, size: int, sample: int) -> dict[str, float]:
    """Microseconds per operation on a crowd of `size`, each timed over `sample` customers."""
    manager, sids = crowd(manager_class, size)
    chosen = sids[:: max(1, size // sample)][:sample]
    found: dict[str, float] = {}

    def timed(name: str, each: Callable[[int, str], Any]) -> None:
        start = time.perf_counter()
        for i, sid in enumerate(chosen):
            each(i, sid)
        found[name] = (time.perf_counter() - start) / len(chosen) * 1e6

    timed("emit", lambda i, sid: manager.emit("x", {"i": i}, NAMESPACE, to=f"customer:{i}"))
    timed("get_rooms", lambda i, sid: manager.get_rooms(sid, NAMESPACE))
    timed("disconnect", lambda i, sid: manager.disconnect(sid, NAMESPACE))
    timed("connect", lambda i, sid: join(manager, f"again-{i}", size + i))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,5000,10000", help="crowd sizes (customers)")
    parser.add_argument("--sample", type=int, default=500, help="customers timed per operation")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (median)")
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",")]
    managers = {"python-socketio": socketio.Manager, "flashsale": IndexedManager}
    runs: dict[tuple[str, int], list[dict[str, float]]] = {}
    for _ in range(args.rounds):
        for size in sizes:
            for name, manager_class in managers.items():
                runs.setdefault((name, size), []).append(
                    per_op_us(manager_class, size, args.sample)
                )
    median = {
        key: {op: statistics.median(run[op] for run in found) for op in OPERATIONS}
        for key, found in runs.items()
    }
    print(f"microseconds per operation, median of {args.rounds} rounds")
    print(f"{'manager':<16} {'customers':>9} " + " ".join(f"{op:>11}" for op in OPERATIONS))
    for size in sizes:
        for name in managers:
            row = median[(name, size)]
            print(f"{name:<16} {size:>9,} " + " ".join(f"{row[op]:>11.1f}" for op in OPERATIONS))
    small, large = sizes[0], sizes[-1]
    print(f"\ncost at {large:,} customers / cost at {small:,}:")
    for name in managers:
        ratios = [median[(name, large)][op] / median[(name, small)][op] for op in OPERATIONS]
        print(
            f"{name:<16} "
            + " ".join(f"{op} {ratio:.2f}x" for op, ratio in zip(OPERATIONS, ratios, strict=True))
        )
    print_provenance()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Engine.IO's heartbeat pings from one loop per server process, not one greenlet per socket.

python-engineio 4.x schedules each socket's next ping by starting a background task that sleeps
the ping interval and sends it (Socket.schedule_ping -> _send_ping): one parked greenlet, its
saved stack, its frames and its timer for every connected customer, all the time. The interval
is the same for every socket, so the sockets due next form a FIFO: one deque and one loop
send them in order (benchmarks/waiting_room.py measures the memory per held socket).
"""

from __future__ import annotations

import collections
import time
from typing import Any

from engineio import packet
from engineio.socket import Socket

# The loop yields to the other greenlets after this many pings sent back to back.
PINGS_PER_TURN = 200


class SharedPings:
    """Takes over an engine.io server's ping tasks: install() once, right after it is built."""

    def __init__(self, eio: Any) -> None:
        self.eio = eio
        self.interval_s = float(eio.ping_interval)
        self.spawn = eio.start_background_task
        self.due: collections.deque[tuple[float, Socket]] = collections.deque()
        self.wake = eio.create_event()
        self.loop: Any = None

    def install(self) -> SharedPings:
        # An instance attribute shadows the method: only this server's pings are taken over.
        self.eio.start_background_task = self.start_background_task
        return self

    def start_background_task(self, target: Any, *args: Any, **kwargs: Any) -> Any:
        """engine.io's start_background_task, except that a socket's ping joins the queue."""
        if getattr(target, "__func__", None) is Socket._send_ping and not args and not kwargs:
            self.schedule(target.__self__)
            return None  # schedule_ping ignores the task it started
        return self.spawn(target, *args, **kwargs)

    def schedule(self, socket: Socket) -> None:
        self.due.append((time.monotonic() + self.interval_s, socket))
        if self.loop is None:
            self.loop = self.spawn(self.run)
        self.wake.set()

    def run(self) -> None:
        while True:
            if not self.due:
                self.wake.clear()
                self.wake.wait()
                continue
            wait_s = self.due[0][0] - time.monotonic()
            if wait_s > 0:
                self.eio.sleep(wait_s)
                continue
            self.send_due()

    def send_due(self) -> None:
        """Ping the sockets whose interval has passed, as Socket._send_ping does after its sleep."""
        sent = 0
        now = time.monotonic()
        while self.due and self.due[0][0] <= now:
            _, socket = self.due.popleft()
            if not socket.closing and not socket.closed:
                socket.last_ping = time.time()
                socket.send(packet.Packet(packet.PING))
                sent += 1
                if sent % PINGS_PER_TURN == 0:
                    self.eio.sleep(0)

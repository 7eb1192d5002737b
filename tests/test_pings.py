"""Engine.IO's heartbeat from one loop per server process (server/pings.py), in both serving modes.

A real `flashsale serve` (one gevent process, and gunicorn with two workers) with a 1 s ping
interval: raw engine.io websockets count the pings they get and answer them; each socket is
pinged once per interval, never sooner, for as long as it answers, and many sockets connected
at once are each pinged in turn, and one that stops answering is closed by the server (the only
way a client that vanished without closing leaves a held socket). With python-engineio's own
server, a socket's next ping joins
the loop's queue instead of starting a task of its own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import engineio
import pytest
import websocket
from engineio.socket import Socket
from engineio_client import SERVING_MODES, open_socket, serve

from flashsale.server.pings import SharedPings

INTERVAL_S = 1
PINGS = 4
SOCKETS = 40
# How late a ping may come on a loaded two-core machine; a timer never fires early.
LATE_S = 1.0
EARLY_S = 0.05


@pytest.fixture(scope="module", **SERVING_MODES)
def server_url(
    request: pytest.FixtureRequest, module_redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    yield from serve(
        request, module_redis_url, tmp_path_factory, "--ping-interval", f"{INTERVAL_S}s"
    )


def open_pinged_socket(url: str) -> websocket.WebSocket:
    ws, handshake = open_socket(url)
    assert handshake["pingInterval"] == INTERVAL_S * 1000
    return ws


def ping_times(ws: websocket.WebSocket, count: int, deadline: float) -> list[float]:
    """When the next `count` pings came (monotonic), each answered with a pong."""
    seen: list[float] = []
    while len(seen) < count:
        ws.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            frame = ws.recv()
        except websocket.WebSocketTimeoutException:
            raise AssertionError(f"{len(seen)} pings of {count} by the deadline") from None
        if frame == "2":
            seen.append(time.monotonic())
            ws.send("3")
    return seen


def test_a_socket_that_answers_is_pinged_once_an_interval(server_url: str) -> None:
    ws = open_pinged_socket(server_url)
    try:
        started = time.monotonic()
        times = ping_times(ws, PINGS, started + PINGS * (INTERVAL_S + LATE_S) + 5)
    finally:
        ws.close()
    gaps = [later - earlier for earlier, later in zip([started, *times], times, strict=False)]
    print("gaps between pings:", [f"{gap:.2f}s" for gap in gaps])
    # The first one counts from the connection (slightly before `started`).
    assert all(gap >= INTERVAL_S - EARLY_S for gap in gaps[1:]), gaps
    assert all(gap <= INTERVAL_S + LATE_S for gap in gaps), gaps


def test_many_sockets_are_each_pinged_in_turn(server_url: str) -> None:
    sockets = [open_pinged_socket(server_url) for _ in range(SOCKETS)]
    try:
        deadline = time.monotonic() + 3 * (INTERVAL_S + LATE_S) + 10
        # Each answered as it comes: the next ping is scheduled when the pong arrives.
        with ThreadPoolExecutor(SOCKETS) as pool:
            counts = list(pool.map(lambda ws: len(ping_times(ws, 2, deadline)), sockets))
    finally:
        for ws in sockets:
            ws.close()
    assert counts == [2] * SOCKETS


def test_a_socket_that_stops_answering_pings_is_closed(server_url: str) -> None:
    """engine.io's service task closes a socket whose pong is later than the ping timeout (the
    client gets the websocket's close frame: engine.io's CLOSE packet is not sent on this path,
    its send() refuses a socket past the timeout)."""
    ws, handshake = open_socket(server_url)
    timeout_s = float(handshake["pingTimeout"]) / 1000  # type: ignore[arg-type]
    opened = time.monotonic()
    # Pinged after an interval; closed once the timeout has passed, found by a service task
    # that goes through every socket once a timeout.
    deadline = opened + INTERVAL_S + 2 * timeout_s + LATE_S + 5
    frames: list[str] = []
    closed_at = None
    try:
        while closed_at is None and time.monotonic() < deadline:
            ws.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                frame = ws.recv()  # pings are read, never answered
            except websocket.WebSocketConnectionClosedException:
                closed_at = time.monotonic()
                break
            except websocket.WebSocketTimeoutException:
                break
            frames.append(frame)
            if frame == "":  # the close frame
                closed_at = time.monotonic()
    finally:
        ws.close()
    assert closed_at is not None, f"still open after {deadline - opened:.0f}s: {frames}"
    assert "2" in frames, frames  # pinged, and never answered
    assert closed_at - opened >= timeout_s, (closed_at - opened, timeout_s)


def test_a_sockets_next_ping_joins_the_queue_instead_of_starting_a_task() -> None:
    """python-engineio's own server and socket: schedule_ping asks start_background_task for
    _send_ping, which SharedPings takes; any other task still starts."""
    eio = engineio.Server(async_mode="threading", ping_interval=INTERVAL_S)
    pings = SharedPings(eio).install()
    socket = Socket(eio, "sid-1")
    threads_before = threading.active_count()
    socket.schedule_ping()
    assert [queued for _, queued in pings.due] == [socket]
    # The loop itself is the one task started (and the first schedule starts it).
    assert threading.active_count() == threads_before + 1
    Socket(eio, "sid-2").schedule_ping()
    assert threading.active_count() == threads_before + 1
    assert len(pings.due) == 2

    ran = threading.Event()
    task = eio.start_background_task(ran.set)
    task.join(5)
    assert ran.is_set()

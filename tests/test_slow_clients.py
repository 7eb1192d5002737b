"""Slow and idle clients cannot hold `flashsale serve`'s connections, in both serving modes.

A real server child (one gevent process, and gunicorn with two workers) with short read
timeouts: a connection that sends nothing, drips its headers, stops mid-body or idles after a
keep-alive request is closed by the server within its timeout (plus a margin), while other
requests are served; a Socket.IO websocket outlives every timeout; and 200 idle sockets
against a server whose file descriptors they exhaust are reclaimed, so /healthz answers again.
Each check waits on the socket (recv returning b'' by a deadline), never on a fixed sleep.
"""

from __future__ import annotations

import contextlib
import select
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import socketio

from flashsale.core import events
from flashsale.ops.pipeline import LocalPipeline
from flashsale.ops.processes import Child, descendants, flashsale_argv

HEADER_S = 1.5
BODY_S = 1.0
KEEPALIVE_S = 0.5
TIMEOUT_FLAGS = (
    "--header-timeout",
    f"{HEADER_S:g}s",
    "--body-timeout",
    f"{BODY_S:g}s",
    "--keepalive-timeout",
    f"{int(KEEPALIVE_S * 1000)}ms",
)
# How late past its timeout a connection may be closed: a loaded two-core machine, and
# gunicorn's workers answering on their own schedule.
MARGIN_S = 1.5
# A timer never fires early; the client's clock starts a little after the server's.
EARLY_S = 0.1
TIMED_OUT = b"HTTP/1.1 408 Request Timeout\r\n"


def server_flags(workers: int, *more: str) -> tuple[str, ...]:
    return ("--workers", str(workers), "--ignore-ledger", *more)


@pytest.fixture(scope="module", params=[1, 2], ids=["gevent", "gunicorn-2"])
def server(
    request: pytest.FixtureRequest,
    module_redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, Child]]:
    """`flashsale serve --workers 1|2` with short timeouts; yields its URL and child. No Stripe:
    the sale opens without its ledger and nothing here charges."""
    local = LocalPipeline(tmp_path_factory.mktemp(f"slow-clients-{request.param}"))
    local.use_redis(module_redis_url)
    try:
        child = local.start_server(*server_flags(request.param, *TIMEOUT_FLAGS))
        yield local.server_url, child
    finally:
        local.stop()


def address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    assert host == "127.0.0.1"
    return host, int(port)


def connect(url: str) -> socket.socket:
    return socket.create_connection(address(url), timeout=10)


def read_until_closed(sock: socket.socket, deadline: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and when it did (monotonic);
    fails if it is still open at the deadline."""
    received = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"still open at the deadline; received {received!r}")
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return received, time.monotonic()
        if not chunk:
            return received, time.monotonic()
        received += chunk


def read_response(sock: socket.socket) -> bytes:
    """One whole HTTP response (headers and Content-Length body) from a kept-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed mid-response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, f"closed mid-body: {data!r}"
        body += chunk
    assert len(body) == length, "more than one response"
    return head + b"\r\n\r\n" + body


def assert_healthy(url: str, within_s: float) -> float:
    """/healthz answers 200 on a fresh connection within within_s; returns its latency."""
    started = time.monotonic()
    response = httpx.get(f"{url}/healthz", timeout=within_s)
    latency = time.monotonic() - started
    assert response.status_code == 200, response.text
    assert latency < within_s
    return latency


def assert_closed_in_time(opened: float, closed: float, timeout_s: float) -> None:
    took = closed - opened
    print(f"closed after {took:.3f}s (timeout {timeout_s:g}s)")
    assert timeout_s - EARLY_S <= took <= timeout_s + MARGIN_S, (
        f"closed after {took:.2f}s; the timeout is {timeout_s}s"
    )


def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(
    server: tuple[str, Child],
) -> None:
    url, _ = server
    opened = time.monotonic()
    sock = connect(url)
    try:
        assert_healthy(url, within_s=HEADER_S)  # served while the silent one waits
        received, closed = read_until_closed(sock, opened + HEADER_S + MARGIN_S)
    finally:
        sock.close()
    assert received == b""  # it asked nothing: closed without an answer
    assert_closed_in_time(opened, closed, HEADER_S)


def test_headers_sent_a_byte_at_a_time_are_cut_at_the_header_timeout(
    server: tuple[str, Child],
) -> None:
    """Slowloris: every byte arrives well within any per-read timeout, the whole never does."""
    url, _ = server
    opened = time.monotonic()
    sock = connect(url)
    drip = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 1000
    sent = 0
    try:
        sock.sendall(drip[:20])
        sent = 20
        assert_healthy(url, within_s=HEADER_S)
        deadline = opened + HEADER_S + MARGIN_S
        # One byte every 100 ms until the server answers or closes.
        while not select.select([sock], [], [], 0.1)[0]:
            assert time.monotonic() < deadline, f"still reading headers after {sent} bytes"
            sock.sendall(drip[sent : sent + 1])
            sent += 1
        received, closed = read_until_closed(sock, deadline)
    finally:
        sock.close()
    assert received.startswith(TIMED_OUT), received
    assert_closed_in_time(opened, closed, HEADER_S)
    assert sent > 20  # it did keep sending until cut


def test_a_body_shorter_than_its_content_length_is_cut_at_the_body_timeout(
    server: tuple[str, Child],
) -> None:
    url, child = server
    sock = connect(url)
    try:
        sock.sendall(
            b"POST /charges HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b'Content-Length: 200\r\n\r\n{"customer_id": "'
        )
        headers_sent = time.monotonic()
        assert_healthy(url, within_s=BODY_S)
        received, closed = read_until_closed(sock, headers_sent + BODY_S + MARGIN_S)
    finally:
        sock.close()
    assert received.startswith(TIMED_OUT), received
    assert b'"request_timeout"' in received
    assert_closed_in_time(headers_sent, closed, BODY_S)
    # The body is read before the app runs: no view waited on it, nothing failed.
    assert "Traceback" not in child.log_text()


def test_a_kept_alive_connection_is_served_then_closed_once_idle(
    server: tuple[str, Child],
) -> None:
    url, _ = server
    sock = connect(url)
    request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    try:
        sock.sendall(request)
        assert read_response(sock).startswith(b"HTTP/1.1 200 ")
        # A next request within the keep-alive timeout is served on the same connection.
        ready = select.select([sock], [], [], KEEPALIVE_S / 4)[0]
        assert not ready, "closed or answered before a second request"
        sock.sendall(request)
        assert read_response(sock).startswith(b"HTTP/1.1 200 ")
        answered = time.monotonic()
        received, closed = read_until_closed(sock, answered + KEEPALIVE_S + MARGIN_S)
    finally:
        sock.close()
    assert received == b""  # idle between requests: closed without a word
    assert_closed_in_time(answered, closed, KEEPALIVE_S)
    assert closed - answered < HEADER_S  # the keep-alive timeout, not the header one


def test_a_websocket_outlives_every_read_timeout(server: tuple[str, Child]) -> None:
    """Once a request is the app's nothing times it: a Socket.IO socket silent for three
    times the longest timeout still gets the server's broadcasts."""
    url, _ = server
    http = httpx.Client(timeout=10)
    session = http.get(f"{url}/session").json()
    client = socketio.SimpleClient()
    client.connect(
        url,
        auth={"room_token": session["room_token"], "watch_stock": True},
        transports=["websocket"],
        wait_timeout=10,
    )
    try:
        seen: dict[str, Any] = {}
        quiet_until = time.monotonic() + 3 * max(HEADER_S, BODY_S, KEEPALIVE_S)
        while (left := quiet_until - time.monotonic()) > 0:
            try:
                event, data = client.receive(timeout=left)
            except socketio.exceptions.TimeoutError:
                break
            seen[event] = data
        assert events.JOINED in seen and events.STOCK in seen, seen
        assert client.connected
        before = seen[events.STOCK]["stock_left"]

        # The server still reaches it: an order takes a unit and the stock is broadcast.
        response = http.post(
            f"{url}/charges",
            json={
                "customer_id": session["customer_id"],
                "room_token": session["room_token"],
                "token": "tok_visa",
            },
        )
        assert response.status_code == 202, response.text
        deadline = time.monotonic() + 10
        while True:
            event, data = client.receive(timeout=max(0.1, deadline - time.monotonic()))
            if event == events.STOCK and data["stock_left"] < before:
                break
        assert client.connected
    finally:
        client.disconnect()
        http.close()


# --- starvation: idle sockets against a low file descriptor limit ---------------------------

IDLE_SOCKETS = 200
# RLIMIT_NOFILE per server process, by workers: with its own ~15 descriptors, the server can
# hold more than half of the idle sockets but not all of them (one process: ~145; two gunicorn
# workers: 2 x ~80). It is exhausted, and /healthz is accepted after one round of closing.
NOFILE = {1: 160, 2: 96}
STARVED_HEADER_S = 2.0


def with_nofile(limit: int, argv: list[str]) -> list[str]:
    """argv run with RLIMIT_NOFILE lowered to limit (soft and hard): children inherit it."""
    code = (
        "import os, resource, sys; "
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({limit}, {limit})); "
        "os.execv(sys.argv[1], sys.argv[1:])"
    )
    return [sys.executable, "-c", code, *argv]


def open_descriptors(child: Child) -> dict[int, int]:
    found: dict[int, int] = {}
    for pid in descendants(child.pid):
        with contextlib.suppress(FileNotFoundError):  # it exited meanwhile
            found[pid] = len(list(Path(f"/proc/{pid}/fd").iterdir()))
    return found


def wait_exhausted(child: Child, servers: list[int], limit: int, deadline: float) -> dict[int, int]:
    """Until every serving process holds limit descriptors (the flood exhausted them all)."""
    while True:
        held = open_descriptors(child)
        if all(held.get(pid, 0) >= limit for pid in servers):
            return held
        assert time.monotonic() < deadline, f"not exhausted: {held} (serving: {servers})"
        time.sleep(0.02)


@pytest.mark.parametrize("workers", [1, 2], ids=["gevent", "gunicorn-2"])
def test_idle_sockets_that_exhaust_descriptors_are_reclaimed(
    workers: int, module_redis_url: str, tmp_path: Path
) -> None:
    """200 silent connections exhaust a server's descriptors: it holds what it can, closes
    those at the header timeout, takes the rest, and /healthz (queued behind them) answers
    soon after; then every idle socket has been closed by the server."""
    # A small Redis pool (it is opened at start, --max-in-flight connections): the limits
    # above leave the rest of the descriptors to the clients.
    flags = server_flags(
        workers, "--header-timeout", f"{STARVED_HEADER_S:g}s", "--max-in-flight", "8"
    )
    env = {**LocalPipeline(tmp_path).env, "FLASHSALE_REDIS_URL": module_redis_url}
    child = Child(
        "server",
        with_nofile(NOFILE[workers], flashsale_argv("serve", "--port", "0", *flags)),
        tmp_path / "server.log",
        env=env,
    ).start()
    idle: list[socket.socket] = []
    try:
        url = child.wait_listening(60)
        assert_healthy(url, within_s=5)  # its Redis connection is open before the flood
        servers = [child.pid] if workers == 1 else descendants(child.pid)[1:]
        opened = time.monotonic()
        idle = [connect(url) for _ in range(IDLE_SOCKETS)]
        held = wait_exhausted(
            child, servers, NOFILE[workers], deadline=opened + STARVED_HEADER_S / 2
        )
        # Queued behind the idle ones (the listen backlog is first come, first served), it is
        # accepted once the server has closed enough of them; gevent retries a failed accept
        # within a second.
        starved = assert_healthy(url, within_s=STARVED_HEADER_S + 1 + MARGIN_S)
        # The first ones at the header timeout, the rest (accepted then) one timeout later.
        deadline = opened + 2 * STARVED_HEADER_S + 1 + MARGIN_S
        closed_at = [read_until_closed(sock, deadline)[1] for sock in idle]
        recovered = assert_healthy(url, within_s=1)
        assert child.alive()
    finally:
        for sock in idle:
            sock.close()
        child.stop()
    last = max(closed_at) - opened
    print(
        f"workers={workers}: /healthz {starved * 1000:.0f} ms behind {IDLE_SOCKETS} idle "
        f"sockets, {recovered * 1000:.0f} ms after; descriptors held {held}; last idle socket "
        f"closed {last:.2f}s after opening"
    )

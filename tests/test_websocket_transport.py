"""engine.io's websocket transport without a greenlet per socket (server/websocket_transport.py,
server/held_websockets.py).

A real `flashsale serve` (one gevent process, and gunicorn with two workers) and raw engine.io
websockets: 300 packets that each draw an answer get 300 answers, in the order asked, however
the writes bunch up; messages sent in one write, a frame split across writes and a frame sent
with the handshake itself are all read; a client's engine.io CLOSE is answered by the server
closing the websocket, and the socket no longer counts as connected; a held socket keeps one
descriptor, given back when it goes.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import websocket
from conftest import wait_until
from engineio_client import SERVING_MODES, open_socket, serve

from flashsale.server.serving import PID_HEADER

ANSWERS = 300
CONNECTED = re.compile(r"^flashsale_sockets_connected (\S+)$", re.MULTILINE)


@pytest.fixture(scope="module", **SERVING_MODES)
def server_url(
    request: pytest.FixtureRequest, module_redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    yield from serve(request, module_redis_url, tmp_path_factory)


def next_packet(ws: websocket.WebSocket, prefix: str) -> str:
    """The next Socket.IO packet starting with prefix; answers pings, skips the rest."""
    while True:
        frame = ws.recv()
        if frame == "2":
            ws.send("3")
        elif frame.startswith(prefix):
            return str(frame)


def connected_sockets(url: str) -> float:
    """flashsale_sockets_connected of the process that answers (one process: the server's)."""
    match = CONNECTED.search(httpx.get(f"{url}/metrics", timeout=10).text)
    assert match, "no sockets gauge in /metrics"
    return float(match.group(1))


def client_frame(text: str) -> bytes:
    """A masked text frame, as a client sends it."""
    return bytes(websocket.ABNF.create_frame(text, websocket.ABNF.OPCODE_TEXT).format())


def refused_names(answers: list[str]) -> list[str]:
    return [answer.split(",", 1)[0].removeprefix("44/") for answer in answers]


def test_every_answer_arrives_in_the_order_asked(server_url: str) -> None:
    ws, _ = open_socket(server_url)
    try:
        # A namespace the server does not serve is refused with a CONNECT_ERROR naming it.
        for number in range(ANSWERS):
            ws.send(f"40/missing{number},")
        answers = [next_packet(ws, "44/missing") for _ in range(ANSWERS)]
    finally:
        ws.close()
    assert refused_names(answers) == [f"missing{number}" for number in range(ANSWERS)]


def test_messages_sent_in_one_write_are_all_read(server_url: str) -> None:
    """The held socket reads exactly one frame's bytes at a time: the rest stays in the kernel,
    where the descriptor's watcher sees it."""
    ws, _ = open_socket(server_url)
    try:
        next_packet(ws, "40")
        ws.sock.sendall(b"".join(client_frame(f"40/together{n},") for n in range(3)))
        answers = [next_packet(ws, "44/together") for _ in range(3)]
    finally:
        ws.close()
    assert refused_names(answers) == ["together0", "together1", "together2"]


def test_a_frame_split_across_writes_is_read_whole(server_url: str) -> None:
    ws, _ = open_socket(server_url)
    try:
        next_packet(ws, "40")
        frame = client_frame("40/split,")
        for part in (frame[:1], frame[1:4], frame[4:]):
            ws.sock.sendall(part)
        answers = [next_packet(ws, "44/split")]
    finally:
        ws.close()
    assert refused_names(answers) == ["split"]


def test_a_frame_sent_with_the_handshake_is_not_lost(server_url: str) -> None:
    """Bytes the handshake's read buffer took past the request go to the held socket."""
    address = urlsplit(server_url)
    key = base64.b64encode(os.urandom(16)).decode()
    handshake = (
        "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n"
        f"Host: {address.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    with socket.create_connection((address.hostname, address.port), timeout=10) as raw:
        raw.sendall(handshake.encode() + client_frame("40/early,"))
        received = b""
        deadline = time.monotonic() + 10
        while b"44/early" not in received and time.monotonic() < deadline:
            chunk = raw.recv(4096)
            if not chunk:
                break
            received += chunk
    assert received.startswith(b"HTTP/1.1 101"), received[:80]
    assert b"44/early" in received, received


def test_a_client_close_is_answered_by_the_server_closing(server_url: str) -> None:
    ws, _ = open_socket(server_url)
    next_packet(ws, "40")  # connected to the namespace
    ws.send("1")  # engine.io CLOSE
    deadline = time.monotonic() + 10
    closed = False
    while time.monotonic() < deadline:
        ws.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            frame = ws.recv()
        except websocket.WebSocketConnectionClosedException:
            closed = True
            break
        except websocket.WebSocketTimeoutException:
            break
        if frame == "":  # the server's close frame
            closed = True
            break
    ws.close()
    assert closed, "the server did not close the websocket"


def test_sockets_gone_no_longer_count(server_url: str, request: pytest.FixtureRequest) -> None:
    if "gunicorn" in request.node.callspec.id:
        pytest.skip("/metrics answers for one worker of several")
    before = connected_sockets(server_url)
    sockets = [open_socket(server_url)[0] for _ in range(10)]
    for ws in sockets:
        next_packet(ws, "40")
    assert connected_sockets(server_url) == before + 10
    for ws in sockets[:5]:
        ws.send("1")
    for ws in sockets[5:]:
        ws.close()
    deadline = time.monotonic() + 10
    while connected_sockets(server_url) != before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert connected_sockets(server_url) == before


def server_ends(server_port: int, ports: set[int]) -> set[str]:
    """The socket inodes of the server's ends of the open connections from these client ports."""
    found: set[str] = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], fields[9]
        if (
            int(local.rsplit(":", 1)[1], 16) == server_port
            and int(remote.rsplit(":", 1)[1], 16) in ports
            and inode != "0"  # closing: no socket left
        ):
            found.add(f"socket:[{inode}]")
    return found


def descriptors_of(pid: int, inodes: set[str]) -> int:
    """How many of the process's descriptors are one of these sockets (a dup is another)."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(FileNotFoundError):  # closed meanwhile
            count += os.readlink(fd) in inodes
    return count


def test_a_held_socket_keeps_one_descriptor_until_it_goes(
    server_url: str, request: pytest.FixtureRequest
) -> None:
    """The handler's descriptor is closed at the handshake (the held socket has its own dup),
    and the held one when the socket goes: none is left behind either way."""
    if "gunicorn" in request.node.callspec.id:
        pytest.skip("one process's descriptors: the gevent server's")
    pid = int(httpx.get(f"{server_url}/healthz", timeout=10).headers[PID_HEADER])
    sockets = [open_socket(server_url)[0] for _ in range(20)]
    for ws in sockets:
        next_packet(ws, "40")
    port = urlsplit(server_url).port
    assert port is not None
    ends = server_ends(port, {ws.sock.getsockname()[1] for ws in sockets})
    assert len(ends) == 20, ends
    wait_until(lambda: descriptors_of(pid, ends) == 20, "one descriptor per held socket", 10)
    for ws in sockets[:10]:
        ws.send("1")  # engine.io CLOSE: the server closes
    for ws in sockets[10:]:
        ws.close()  # the client closes
    wait_until(lambda: descriptors_of(pid, ends) == 0, "no descriptor of a gone socket", 10)
    for ws in sockets[:10]:
        ws.close()

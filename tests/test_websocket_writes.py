"""A websocket's writes from a writer woken by its queue (server/websocket_writes.py).

A real `flashsale serve` (one gevent process, and gunicorn with two workers) and raw engine.io
websockets: 300 packets that each draw an answer get 300 answers, in the order asked, however
the writes bunch up; a client's engine.io CLOSE is answered by the server closing the
websocket, and the socket no longer counts as connected.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import httpx
import pytest
import websocket
from engineio_client import SERVING_MODES, open_socket, serve

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


def test_every_answer_arrives_in_the_order_asked(server_url: str) -> None:
    ws, _ = open_socket(server_url)
    try:
        # A namespace the server does not serve is refused with a CONNECT_ERROR naming it.
        for number in range(ANSWERS):
            ws.send(f"40/missing{number},")
        answers = [next_packet(ws, "44/missing") for _ in range(ANSWERS)]
    finally:
        ws.close()
    names = [answer.split(",", 1)[0].removeprefix("44/") for answer in answers]
    assert names == [f"missing{number}" for number in range(ANSWERS)]


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

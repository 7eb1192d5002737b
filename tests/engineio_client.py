"""A server in both serving modes, and raw engine.io websockets: for tests that look at the
packets themselves (pings, the order of writes, closes), which Socket.IO clients hide."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
import websocket

from flashsale.ops.pipeline import LocalPipeline

# `flashsale serve --workers N`: one gevent process, and gunicorn with two workers.
SERVING_MODES = {"params": [1, 2], "ids": ["gevent", "gunicorn-2"]}


def serve(
    request: pytest.FixtureRequest,
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    *flags: str,
) -> Iterator[str]:
    """A module fixture's body: `flashsale serve --workers <request.param> --ignore-ledger
    *flags` on redis_url (no Stripe: nothing here charges); yields its URL."""
    local = LocalPipeline(tmp_path_factory.mktemp(f"{request.module.__name__}-{request.param}"))
    local.use_redis(redis_url)
    try:
        local.start_server("--workers", str(request.param), "--ignore-ledger", *flags)
        yield local.server_url
    finally:
        local.stop()


def open_socket(url: str) -> tuple[websocket.WebSocket, dict[str, object]]:
    """A raw engine.io websocket that asked to join the main namespace with a fresh room
    token; returns it and the OPEN packet's handshake."""
    session = httpx.get(f"{url}/session", timeout=10).json()
    ws = websocket.create_connection(
        url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket", timeout=10
    )
    opened = ws.recv()
    assert opened.startswith("0"), opened  # engine.io's OPEN
    ws.send("40" + json.dumps({"room_token": session["room_token"]}))
    return ws, json.loads(opened[1:])

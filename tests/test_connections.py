"""A server connection's small read buffer (server/connections.py) still reads whole requests.

A real `flashsale serve` (one gevent process, and gunicorn with two workers): a header line
several times the 1 KiB buffer, and a body of 12 KiB whose last field is the one the server
names in its answer, are read whole, on a fresh connection and on a kept-alive one. And the
greenlet spawn tree is off unless the environment asks for it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest
from engineio_client import SERVING_MODES, serve

from flashsale.server.connections import READ_BUFFER_BYTES, TRACK_TREE_VARIABLE


@pytest.fixture(scope="module", **SERVING_MODES)
def server_url(
    request: pytest.FixtureRequest, module_redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    yield from serve(request, module_redis_url, tmp_path_factory)


def test_a_header_line_longer_than_the_buffer_is_read_whole(server_url: str) -> None:
    pad = "p" * (6 * READ_BUFFER_BYTES)
    with httpx.Client(timeout=10) as client:
        for _ in range(2):  # the second on the kept-alive connection
            response = client.get(f"{server_url}/session", headers={"X-Padding": pad})
            assert response.status_code == 200, response.text
            assert response.json()["customer_id"]


def test_a_body_longer_than_the_buffer_is_read_whole(server_url: str) -> None:
    with httpx.Client(timeout=10) as client:
        session = client.get(f"{server_url}/session").json()
        fields = {
            "customer_id": session["customer_id"],
            "room_token": session["room_token"],
            "token": "tok_visa",
            "padding_" + "q" * (12 * READ_BUFFER_BYTES): 1,
        }
        body = json.dumps(fields)
        assert len(body) > 12 * READ_BUFFER_BYTES
        for _ in range(2):
            response = client.post(
                f"{server_url}/charges", content=body, headers={"Content-Type": "application/json"}
            )
            # Refused for the field at the very end of the body: the server read all of it.
            assert response.status_code == 400, response.text
            assert "padding_qqq" in response.json()["error"]["message"], response.text


@pytest.mark.parametrize(("environment", "tracked"), [(None, False), ("1", True), ("0", False)])
def test_the_greenlet_tree_is_off_unless_the_environment_says(
    environment: str | None, tracked: bool
) -> None:
    env = {key: value for key, value in os.environ.items() if key != TRACK_TREE_VARIABLE}
    if environment is not None:
        env[TRACK_TREE_VARIABLE] = environment
    code = (
        "from flashsale.server.connections import untrack_greenlet_tree; "
        "untrack_greenlet_tree(); import gevent; print(gevent.config.track_greenlet_tree)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == str(tracked)

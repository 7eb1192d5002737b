"""Keeping strangers out: live keys, expired or foreign room tokens, client-set amounts, and
secrets that must never reach a log or a report.

Covered elsewhere and not repeated here: /notify without a valid HMAC, forged room tokens on
/charges, /orders and the socket, cross-origin POST /charges and bodies above the limit
(tests/test_server_http.py); a customer hearing only its own room (tests/test_pipeline.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import socketio
import websocket
from itsdangerous import TimestampSigner, URLSafeTimedSerializer
from pipeline_fixtures import TEST_SECRET, Pipeline, receive_results

from flashsale.core import events, signing
from flashsale.ops.plan import parse_plan
from flashsale.ops.processes import Child, flashsale_argv
from flashsale.ops.rehearse import Rehearsal
from flashsale.settings import SIM_SECRET_KEY, Settings

PRICE = 1234
LIVE_KEY = "sk_live_" + "q" * 24  # built here: no live-key pattern in tracked files


@pytest.fixture(scope="module")
def pipeline(pipeline_factory: Any) -> Pipeline:
    return pipeline_factory(server_flags=("--stock", "20", "--price", str(PRICE)))


def expired_token(customer_id: str) -> str:
    """Genuinely signed two hours ago: past the one-hour room-token TTL."""

    class PastSigner(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time()) - 7200

    serializer = URLSafeTimedSerializer(TEST_SECRET, salt="flashsale.room-token", signer=PastSigner)
    return serializer.dumps(customer_id)


@pytest.mark.parametrize(
    "command",
    [
        ["serve", "--port", "0"],
        ["worker"],
        ["rehearse", "--no-dashboard"],
        ["reconcile"],
        ["status", "--json"],
    ],
)
def test_every_command_refuses_a_live_secret_key(command: list[str], tmp_path: Path) -> None:
    env = {
        **os.environ,
        "STRIPE_SECRET_KEY": LIVE_KEY,
        "FLASHSALE_REDIS_URL": "redis://127.0.0.1:1",
    }
    done = subprocess.run(
        flashsale_argv(*command),
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "refusing a live Stripe secret key" in done.stderr
    assert "Traceback" not in done.stderr
    assert LIVE_KEY not in done.stdout + done.stderr  # not even in the refusal
    assert not (tmp_path / "flashsale-runs").exists()  # rehearse started nothing


def test_an_expired_room_token_opens_nothing(pipeline: Pipeline) -> None:
    session = pipeline.session()
    order_id = pipeline.charge(session, pipeline.tokenize()).json()["order_id"]
    pipeline.wait_final(session, order_id)
    stale = expired_token(session["customer_id"])
    assert signing.verify_room_token(TEST_SECRET, stale, 10**6) == session["customer_id"]
    assert signing.verify_room_token(TEST_SECRET, stale, 3600) is None

    order = pipeline.http.get(
        f"{pipeline.server_url}/orders/{order_id}", params={"room_token": stale}
    )
    assert (order.status_code, order.json()["error"]["code"]) == (403, "invalid_room_token")
    charge = pipeline.charge({**session, "room_token": stale}, pipeline.tokenize())
    assert (charge.status_code, charge.json()["error"]["code"]) == (403, "invalid_room_token")
    client = socketio.SimpleClient()
    with pytest.raises(socketio.exceptions.ConnectionError):
        client.connect(pipeline.server_url, auth={"room_token": stale}, transports=["websocket"])
    client.disconnect()


def test_a_customer_cannot_join_or_read_another_customers_room(pipeline: Pipeline) -> None:
    victim = pipeline.session()
    victim_order = pipeline.charge(victim, pipeline.tokenize()).json()["order_id"]
    pipeline.wait_final(victim, victim_order)
    intruder = pipeline.session()
    # The intruder's own genuine token, plus the victim's id wherever it might be believed.
    client = socketio.SimpleClient()
    client.connect(
        pipeline.server_url,
        auth={
            "room_token": intruder["room_token"],
            "customer_id": victim["customer_id"],
            "room": events.room_for(victim["customer_id"]),
        },
        transports=["websocket"],
        wait_timeout=10,
    )
    try:
        event, data = client.receive(timeout=10)
        assert (event, data) == (events.JOINED, {"customer_id": intruder["customer_id"]})
        # The victim's stored result is replayed to the victim's joins only.
        with pytest.raises(socketio.exceptions.TimeoutError):
            receive_results(client, 1, timeout_s=1.5)
    finally:
        client.disconnect()
    peek = pipeline.http.get(
        f"{pipeline.server_url}/orders/{victim_order}",
        params={"room_token": intruder["room_token"]},
    )
    assert peek.status_code == 404 and victim["customer_id"] not in peek.text


@pytest.mark.parametrize(
    "extra", [{"amount": 1}, {"price": 1}, {"amount": 1, "currency": "jpy"}, {"unit_price": 0}]
)
def test_the_client_cannot_set_the_amount(pipeline: Pipeline, extra: dict[str, Any]) -> None:
    session = pipeline.session()
    refused = pipeline.charge(session, pipeline.tokenize(), **extra)
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "unknown_field"
    with pipeline.redis() as client:
        assert client.llen(f"flashsale:customer:{session['customer_id']}:orders") == 0


def test_the_charge_uses_the_servers_price_times_quantity(pipeline: Pipeline) -> None:
    session = pipeline.session()
    order_id = pipeline.charge(session, pipeline.tokenize(), quantity=2).json()["order_id"]
    final = pipeline.wait_final(session, order_id)
    (charge,) = pipeline.sim_charges(order_id)
    assert final["amount"] == charge["amount"] == 2 * PRICE


TINY = """
name = "secrets"
[sale]
stock = 10
[pipeline]
workers = 1
worker_concurrency = 4
[stripe_sim]
rate_limit = "off"
latency = "10ms"
[loadgen]
customers = 30
rate = "30/s"
cards = "visa=80,insufficient_funds=20"
timeout = "30s"
max_lag = "2s"
max_cpu = 100
"""
# Room tokens are itsdangerous strings: payload.timestamp.signature.
ROOM_TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_\-]{20,}\.[A-Za-z0-9_\-]{4,8}\.[A-Za-z0-9_\-]{20,}")
CARD_NUMBER = re.compile(r"(?<!\d)(?:4242424242424242|4000\d{12})(?!\d)")
CARD_TOKEN = re.compile(r"\btok_[A-Za-z0-9]{6,}")


@pytest.mark.slow
def test_no_secret_reaches_the_logs_or_reports_of_a_rehearsal(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    rehearsal = Rehearsal(
        Settings(), parse_plan(TINY, "secrets.toml"), run_dir, dashboard=False, say=lambda _: None
    )
    result = rehearsal.run()
    assert result.reconciliation is not None and result.reconciliation.orders > 0
    secret = rehearsal.pipeline.env["FLASHSALE_SECRET"]
    files = [
        run_dir / "report.json",
        run_dir / "report.html",
        run_dir / "loadgen.json",
        *sorted((run_dir / "logs").glob("*.log")),
    ]
    assert len(files) >= 7
    for path in files:
        text = path.read_text(errors="replace")
        assert secret not in text, path
        assert SIM_SECRET_KEY not in text, path
        assert not CARD_NUMBER.search(text), path
        assert not CARD_TOKEN.search(text), (path, CARD_TOKEN.search(text))
        for candidate in ROOM_TOKEN_SHAPE.findall(text):
            assert signing.verify_room_token(secret, candidate, 10**6) is None, (path, candidate)


def test_client_events_with_reserved_names_run_no_handler(pipeline: Pipeline) -> None:
    """A hostile client sends 42["connect", ...] and 42["disconnect"] on its own socket: no
    replay of its results, the sockets gauge unchanged, each refusal counted."""
    session = pipeline.session()
    order = pipeline.charge(session, pipeline.tokenize()).json()["order_id"]
    pipeline.wait_final(session, order)
    url = pipeline.server_url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
    raw = websocket.create_connection(url, timeout=10)
    try:
        assert raw.recv().startswith("0{")  # Engine.IO open
        raw.send("40" + json.dumps({"room_token": session["room_token"]}))
        heard: list[str] = []

        def hear_until(predicate: Callable[[list[str]], bool]) -> None:
            deadline = time.monotonic() + 10
            while not predicate(heard):
                assert time.monotonic() < deadline, heard
                message = raw.recv()
                if message == "2":  # ping
                    raw.send("3")
                elif message.startswith("42"):
                    heard.append(json.loads(message[2:])[0])

        hear_until(lambda names: events.CHARGE_RESULT in names)  # joined, then the replay
        before = metric(pipeline, "flashsale_sockets_connected")
        for _ in range(100):
            raw.send("42" + json.dumps(["connect", {}, {"room_token": session["room_token"]}]))
        for _ in range(3):
            raw.send('42["disconnect"]')
        deadline = time.monotonic() + 10
        while metric(pipeline, 'flashsale_socket_refused_events_total{event="disconnect"}') < 3:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert metric(pipeline, 'flashsale_socket_refused_events_total{event="connect"}') == 100
        assert metric(pipeline, "flashsale_sockets_connected") == before
        raw.send('42["ping-me"]')  # an ordinary unknown event still reaches the server
        raw.settimeout(0.5)
        with contextlib.suppress(websocket.WebSocketTimeoutException):
            hear_until(lambda names: False)
        assert heard.count(events.CHARGE_RESULT) == 1 and heard.count(events.JOINED) == 1
    finally:
        raw.close()


def metric(pipeline: Pipeline, name: str) -> float:
    text = pipeline.http.get(f"{pipeline.server_url}/metrics").text
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def token_signed_at(customer_id: str, offset_s: int) -> str:
    class SkewedSigner(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time()) + offset_s

    serializer = URLSafeTimedSerializer(
        TEST_SECRET, salt="flashsale.room-token", signer=SkewedSigner
    )
    return serializer.dumps(customer_id)


def test_a_token_from_a_server_whose_clock_runs_ahead_is_accepted_within_leeway() -> None:
    """Another server's clock 1 s ahead made every fresh token it issued look expired here."""
    customer = "c" * 36
    assert signing.verify_room_token(TEST_SECRET, token_signed_at(customer, 1), 3600) == customer
    assert signing.verify_room_token(TEST_SECRET, token_signed_at(customer, 25), 3600) == customer
    assert signing.verify_room_token(TEST_SECRET, token_signed_at(customer, 120), 3600) is None
    assert signing.verify_room_token(TEST_SECRET, token_signed_at(customer, -3601), 3600) is None


def without_secret() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "FLASHSALE_SECRET"}


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (
            ["serve", "--host", "0.0.0.0", "--port", "0"],
            "serving on 0.0.0.0 needs FLASHSALE_SECRET",
        ),
        (["worker", "--notify", "http"], "--notify http needs FLASHSALE_SECRET"),
    ],
)
def test_no_public_secret_off_loopback_or_for_notify(argv: list[str], says: str) -> None:
    """There is no built-in secret any more: the old public constant let anyone who knew a
    customer id read their order and sign /notify."""
    done = subprocess.run(
        flashsale_argv(*argv),
        env={**without_secret(), "FLASHSALE_REDIS_URL": "redis://127.0.0.1:1/0"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert says in done.stderr and "Traceback" not in done.stderr


def test_the_gunicorn_entry_refuses_to_start_without_a_secret(tmp_path: Path) -> None:
    gunicorn = Path(sys.executable).with_name("gunicorn")
    done = subprocess.run(
        [str(gunicorn), "-c", "python:flashsale.server.gunicorn_conf", "flashsale.server.wsgi:app"],
        env={**without_secret(), "PORT": "0"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "FLASHSALE_SECRET is not set" in done.stdout + done.stderr


def test_a_loopback_server_without_a_secret_makes_a_one_off_one(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """Its tokens open nothing anywhere else, and it says so."""
    child = Child(
        "server-no-secret",
        flashsale_argv("serve", "--port", "0", "--sku", "NO-SECRET"),
        tmp_path / "server.log",
        env={k: v for k, v in pipeline.env.items() if k != "FLASHSALE_SECRET"},
    ).start()
    try:
        url = child.wait_listening()
        assert "using a one-off secret for this run" in child.log_text()
        token = pipeline.http.get(f"{url}/session").json()["room_token"]
        assert signing.verify_room_token(TEST_SECRET, token, 3600) is None
    finally:
        child.stop()

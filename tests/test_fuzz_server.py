"""Fuzzing the server with hypothesis: never a 500, always JSON, and only valid orders move money.

Runs against a real server, worker and simulator. Before and after every example the test reads
the stock (Redis) and the number of charges (the simulator's ledger): a refused request must
change neither; an accepted order is waited for until final, then must have changed exactly
what its outcome says (one charge if Stripe saw the card, its units sold only if it succeeded).

Besides the generated structures: JSON written as text (nesting past Python's recursion limit,
integers past its 4,300-digit limit, 1e400, NaN and Infinity literals), a trailing newline or
other whitespace on every string field of a valid body, and hostile Socket.IO packets (reserved
event names, deep or huge payloads) on a genuinely connected socket.
"""

from __future__ import annotations

import json
import math
import re
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import socketio
import websocket
from engineio import json as engineio_json
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from itsdangerous import TimestampSigner, URLSafeTimedSerializer
from pipeline_fixtures import TEST_SECRET, Pipeline

from flashsale.core import events, inventory, keys, signing
from flashsale.server.app import MAX_BODY_BYTES

PRICE = 4999
MAX_QUANTITY = 3
FUZZ = settings(
    deadline=None,
    derandomize=True,  # the same examples on every CI run: a failure reproduces
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
ACCEPTABLE = {200, 202, 400, 401, 403, 404, 405, 409, 413, 415}
# A card token as the API documents it, matched whole (no trailing newline, no surrounding space).
CARD_TOKEN = re.compile(r"(tok|src|card|pm)_[A-Za-z0-9_]{1,200}")

# Placeholders drawn by hypothesis and resolved per example against live sessions.
GENUINE = ("$customer", "$room", "$other_room", "$other_customer", "$card", "$forged", "$expired")
# What a sloppy client (or a hostile one) leaves at the end of a string: `$` in a regex, a
# strip() here and not there, or a lenient decoder makes "tok_x\n" pass as "tok_x".
SUFFIXES = ("\n", "\r\n", " ", "\t", "\x00", "\u2028", "\u2029", "\x85", "\ufeff", "\n\n")
JSON_WHITESPACE = " \t\n\r"
junk_text = st.text(max_size=40)
suffixed_genuine = st.tuples(st.sampled_from(GENUINE), st.sampled_from(SUFFIXES)).map("".join)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    # Hundreds of digits (json.dumps refuses past Python's 4,300; the raw-text tests go there).
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    junk_text,
    st.sampled_from(GENUINE),
    suffixed_genuine,
    st.sampled_from(["tok_visa", "tok_" + "a" * 30, "src_x", "pm_card", "tok_", "1", "2", "3"]),
)
values = st.one_of(
    scalars, st.lists(scalars, max_size=3), st.dictionaries(junk_text, scalars, max_size=3)
)
charge_fields = st.sampled_from(
    [
        "customer_id",
        "room_token",
        "token",
        "payment_method",
        "quantity",
        "amount",
        "price",
        "currency",
        "sku",
        "status",
    ]
)
charge_dicts = st.dictionaries(st.one_of(charge_fields, junk_text), values, max_size=6)
# A share of well-formed orders, so the "only valid orders move money" half is exercised too.
valid_orders = st.fixed_dictionaries(
    {
        "customer_id": st.just("$customer"),
        "room_token": st.just("$room"),
        "token": st.sampled_from(["$card", "tok_" + "f" * 24]),
    },
    optional={"quantity": st.integers(min_value=-1, max_value=MAX_QUANTITY + 1)},
)
encodings = st.sampled_from(["json", "form", "raw"])
content_types = st.sampled_from(
    [
        "application/json",
        "application/x-www-form-urlencoded",
        "multipart/form-data",
        "text/plain",
        "application/json; charset=latin-1",
        "",
    ]
)
origins = st.sampled_from([None, None, "https://evil.test", "null", "$self"])

# JSON written as text, for what json.dumps cannot or will not produce. Python's parser gives up
# near 1,000 levels (RecursionError) and past 4,300 digits (ValueError); both fit in 16 KiB.
NUMBER_LITERALS = (
    "1e400",
    "-1e400",
    "1e-400",
    "NaN",
    "Infinity",
    "-Infinity",
    "-0",
    "-0.0",
    "2.0",
    "2e0",
    "1E2",
    "0.5",
    "4999",
    "18446744073709551617",
)
number_literals = st.one_of(
    st.sampled_from(NUMBER_LITERALS),
    st.integers(min_value=100, max_value=4000).map(lambda n: "9" * n),
    st.integers(min_value=100, max_value=4000).map(lambda n: "-1" + "0" * n),
    st.integers(min_value=4301, max_value=9000).map(lambda n: "1" * n),  # past the digit limit
)


def nested(kind: str, depth: int, leaf: str) -> str:
    """depth levels of arrays or objects around leaf, written out ("[[[1]]]")."""
    if kind == "array":
        return "[" * depth + leaf + "]" * depth
    if kind == "object":
        return '{"a":' * depth + (leaf or "null") + "}" * depth
    if kind == "keyed":  # the names the server looks for, all the way down
        return '{"customer_id":{"order_id":' * depth + (leaf or "{}") + "}}" * depth
    return '[{"a":' * depth + (leaf or "1") + "}]" * depth


# Shallow (parses), around the parser's limit, and deep (up to the 16 KiB body limit and past).
depths = st.one_of(
    st.integers(min_value=1, max_value=500),
    st.integers(min_value=990, max_value=1010),
    st.integers(min_value=1011, max_value=8300),
)
deep_documents = st.builds(
    nested,
    st.sampled_from(["array", "object", "keyed", "mixed"]),
    depths,
    st.one_of(st.just(""), st.sampled_from(NUMBER_LITERALS), st.just('"tok_visa"')),
)
hostile_documents = st.one_of(deep_documents, number_literals)


@pytest.fixture(scope="module")
def pipeline(pipeline_factory: Any) -> Pipeline:
    return pipeline_factory(
        server_flags=("--stock", "100000", "--max-quantity", str(MAX_QUANTITY), "--price", "4999")
    )


class Ledger:
    """Stock left, charges at Stripe and orders recorded: what a fuzzed request must not change."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.redis = pipeline.redis()

    def snapshot(self) -> tuple[int, int, int]:
        stats = self.pipeline.http.get(f"{self.pipeline.sim_url}/_sim/stats").json()
        stock = inventory.stock_left(self.redis, "FLASH-001")
        return stock, int(stats["charges"]["total"]), int(self.redis.zcard(keys.order_index()))

    def orders_of(self, customer_id: str) -> list[str]:
        return list(self.redis.lrange(keys.customer_orders(customer_id), 0, -1))

    def has_dedupe_key(self, customer_id: str, token: str) -> bool:
        return bool(self.redis.exists(keys.dedupe(customer_id, token)))


@pytest.fixture(scope="module")
def ledger(pipeline: Pipeline) -> Ledger:
    return Ledger(pipeline)


TRACEBACK = "Traceback (most recent call last)"


class ServerLog:
    """What the server wrote to its log since the last look: a traceback is a bug even when the
    answer was a tidy 4xx."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size

    def new(self) -> str:
        with self.path.open("rb") as log:
            log.seek(self.offset)
            data = log.read()
        self.offset += len(data)
        return data.decode(errors="replace")


@pytest.fixture(scope="module")
def server_log(pipeline: Pipeline) -> ServerLog:
    return ServerLog(pipeline.log_dir / "server.log")


def scrape(pipeline: Pipeline) -> dict[str, float]:
    """The server's /metrics as {'name{labels}': value}."""
    found: dict[str, float] = {}
    for line in pipeline.http.get(f"{pipeline.server_url}/metrics").text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            found[name] = float(value)
    return found


SOCKETS = "flashsale_sockets_connected"
RESULT_EMITS = f'flashsale_socket_emits_total{{event="{events.CHARGE_RESULT}"}}'
JOINED_EMITS = f'flashsale_socket_emits_total{{event="{events.JOINED}"}}'


def refused(name: str) -> str:
    return f'flashsale_socket_refused_events_total{{event="{name}"}}'


def wait_metrics(
    pipeline: Pipeline, done: Callable[[dict[str, float]], bool], timeout_s: float = 10
) -> dict[str, float]:
    deadline = time.monotonic() + timeout_s
    while True:
        found = scrape(pipeline)
        if done(found):
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"metrics never got there: {found}")
        time.sleep(0.01)


def no_sockets(pipeline: Pipeline) -> None:
    """Until the server counts no socket (the previous example's disconnect is asynchronous)."""
    wait_metrics(pipeline, lambda found: found.get(SOCKETS) == 0)


def expired_token(customer_id: str) -> str:
    """A genuine signature made two hours ago: past the server's one-hour TTL."""

    class PastSigner(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time()) - 7200

    serializer = URLSafeTimedSerializer(TEST_SECRET, salt="flashsale.room-token", signer=PastSigner)
    return serializer.dumps(customer_id)


class Cast:
    """The live values a placeholder stands for in one example."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.mine = pipeline.session()
        self.other = pipeline.session()
        self.pipeline = pipeline
        self._card: str | None = None

    def resolve(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self.resolve(item) for item in value]
        if isinstance(value, dict):
            return {key: self.resolve(item) for key, item in value.items()}
        if value == "$customer":
            return self.mine["customer_id"]
        if value == "$room":
            return self.mine["room_token"]
        if value == "$other_room":
            return self.other["room_token"]
        if value == "$other_customer":
            return self.other["customer_id"]
        if value == "$forged":
            return signing.issue_room_token("not-the-secret", self.mine["customer_id"])
        if value == "$expired":
            return expired_token(self.mine["customer_id"])
        if value == "$card":
            if self._card is None:
                self._card = self.pipeline.tokenize()
            return self._card
        if isinstance(value, str) and value.startswith(GENUINE):
            for placeholder in GENUINE:
                rest = value[len(placeholder) :]
                if value.startswith(placeholder) and rest in SUFFIXES:
                    return self.resolve(placeholder) + rest
        return value

    def owner_of(self, room_token: object) -> str | None:
        """Whose room a token opens (None: nobody's), as the server must decide it."""
        return signing.verify_room_token(TEST_SECRET, room_token, 3600)


def assert_json_answer(response: httpx.Response) -> Any:
    assert response.status_code in ACCEPTABLE, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json"), response.text[:200]
    body = response.json()
    if response.status_code >= 400:
        error = body["error"]
        assert isinstance(error["code"], str) and error["code"]
        assert isinstance(error["message"], str) and error["message"]
    return body


def post(pipeline: Pipeline, path: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    """POST on the shared keep-alive client; a body past the limit on a connection of its own,
    because the server closes the connection after its 413 without saying so (see
    test_a_413_says_the_connection_closes): the next request on it would find it gone."""
    if len(body) > MAX_BODY_BYTES:
        headers = {**headers, "Connection": "close"}
    return pipeline.http.post(pipeline.server_url + path, content=body, headers=headers)


def encode(data: dict[str, Any], encoding: str, content_type: str) -> tuple[bytes, str]:
    if encoding == "json":
        return json.dumps(data, default=str).encode(), "application/json"
    if encoding == "form":
        pairs = {str(k): json.dumps(v) if not isinstance(v, str) else v for k, v in data.items()}
        return str(httpx.QueryParams(pairs)).encode(), "application/x-www-form-urlencoded"
    return json.dumps(data, default=str).encode()[: len(data) * 7], content_type


def wait_final(pipeline: Pipeline, session: dict[str, Any], order_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        state = pipeline.order(session, order_id).json()
        if state["status"] != "pending":
            return dict(state)
        time.sleep(0.02)
    raise AssertionError(f"order {order_id} never became final")


@pytest.mark.fuzz
@settings(FUZZ, max_examples=400)
@given(
    data=st.one_of(charge_dicts, valid_orders),
    encoding=encodings,
    content_type=content_types,
    origin=origins,
)
def test_fuzzed_charges_never_500_and_only_valid_orders_move_stock_or_money(
    pipeline: Pipeline,
    ledger: Ledger,
    server_log: ServerLog,
    data: dict[str, Any],
    encoding: str,
    content_type: str,
    origin: str | None,
) -> None:
    cast = Cast(pipeline)
    resolved = {str(cast.resolve(k)): cast.resolve(v) for k, v in data.items()}
    body, media_type = encode(resolved, encoding, content_type)
    headers = {"Content-Type": media_type} if media_type else {}
    if origin is not None:
        headers["Origin"] = pipeline.server_url if origin == "$self" else origin
    server_log.new()
    stock0, charges0, orders0 = ledger.snapshot()
    response = post(pipeline, "/charges", body, headers)
    answer = assert_json_answer(response)
    if response.status_code != 202:
        assert response.status_code != 200  # a fresh customer never has an order to repeat
        assert ledger.snapshot() == (stock0, charges0, orders0)
        assert not ledger.orders_of(cast.mine["customer_id"])
        assert TRACEBACK not in server_log.new()
        return
    # Accepted: it must have been a valid order of this customer, priced by the server. The room
    # token may differ from the one issued only by bytes its decoder ignores (same customer).
    assert resolved.get("customer_id") == cast.mine["customer_id"]
    assert cast.owner_of(resolved.get("room_token")) == cast.mine["customer_id"]
    # Exactly one card: a token, or a PaymentMethod (pm_...).
    cards = [resolved[name] for name in ("token", "payment_method") if name in resolved]
    assert len(cards) == 1 and isinstance(cards[0], str) and CARD_TOKEN.fullmatch(cards[0])
    assert "payment_method" not in resolved or cards[0].startswith("pm_")
    assert set(resolved) <= {"customer_id", "room_token", "token", "payment_method", "quantity"}
    assert ledger.orders_of(cast.mine["customer_id"]) == [answer["order_id"]]
    final = wait_final(pipeline, cast.mine, answer["order_id"])
    quantity = final["quantity"]
    assert final["amount"] == PRICE * quantity
    stock1, charges1, orders1 = ledger.snapshot()
    assert orders1 - orders0 == 1
    assert charges1 - charges0 == (1 if final["charge_id"] else 0)
    assert stock0 - stock1 == (quantity if final["status"] == "succeeded" else 0)
    if final["charge_id"]:
        (charge,) = pipeline.sim_charges(final["order_id"])
        assert charge["amount"] == PRICE * quantity
    assert TRACEBACK not in server_log.new()


@pytest.mark.fuzz
@settings(FUZZ, max_examples=150)
@given(
    query=st.dictionaries(junk_text, junk_text, max_size=3),
    header=st.sampled_from(["Accept", "Cookie", "X-Forwarded-For", "Origin", "X-Room-Token"]),
    header_value=st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60),
)
def test_fuzzed_session_requests_answer_json(
    pipeline: Pipeline, ledger: Ledger, query: dict[str, str], header: str, header_value: str
) -> None:
    before = ledger.snapshot()
    response = pipeline.http.get(
        f"{pipeline.server_url}/session", params=query, headers={header: header_value}
    )
    body = assert_json_answer(response)
    assert response.status_code == (200 if not query else 400)
    if response.status_code == 200:
        assert signing.verify_room_token(TEST_SECRET, body["room_token"], 60) == body["customer_id"]
    assert ledger.snapshot() == before


@pytest.fixture(scope="module")
def placed_order(pipeline: Pipeline) -> tuple[dict[str, Any], str]:
    """One finished order of one customer, for the others to try to read."""
    session = pipeline.session()
    order_id = pipeline.charge(session, pipeline.tokenize()).json()["order_id"]
    wait_final(pipeline, session, order_id)
    return session, order_id


order_ids = st.one_of(
    st.just("$order"),
    st.uuids().map(str),
    st.text(max_size=40),
    st.just("$order").map(lambda _: "$ORDER"),
    st.sampled_from(SUFFIXES).map(lambda suffix: "$order" + suffix),
)
room_tokens = st.one_of(
    st.none(),
    st.sampled_from(GENUINE + ("$owner",)),
    st.tuples(st.sampled_from(("$owner", "$room")), st.sampled_from(SUFFIXES)).map("".join),
    junk_text,
)


@pytest.mark.fuzz
@settings(FUZZ, max_examples=250)
@given(
    order_ref=order_ids,
    token=room_tokens,
    in_header=st.booleans(),
    extra=st.dictionaries(
        st.sampled_from(["debug", "x", "token", "fields"]), junk_text, max_size=2
    ),
)
def test_fuzzed_order_reads_only_show_the_owner_their_order(
    pipeline: Pipeline,
    ledger: Ledger,
    placed_order: tuple[dict[str, Any], str],
    order_ref: str,
    token: str | None,
    in_header: bool,
    extra: dict[str, str],
) -> None:
    owner, owned_id = placed_order
    cast = Cast(pipeline)
    order_id = {"$order": owned_id, "$ORDER": owned_id.upper()}.get(order_ref, order_ref)
    if order_id.startswith("$order"):
        order_id = owned_id + order_id[len("$order") :]
    if isinstance(token, str) and token.startswith("$owner"):
        room: Any = owner["room_token"] + token[len("$owner") :]
    else:
        room = cast.resolve(token)
    params: dict[str, str] = dict(extra)
    headers: dict[str, str] = {}
    sent: str | None = None
    if isinstance(room, str):
        if in_header:
            # An HTTP client cannot send control characters in a header, nor spaces around its
            # value (HTTP strips them): the server never sees them.
            sent = "".join(c for c in room if " " <= c <= "~").strip(" ")
            headers["X-Room-Token"] = sent
        else:
            params["room_token"] = room
            sent = room
    before = ledger.snapshot()
    path = "/orders/" + quote(order_id, safe="")
    response = pipeline.http.get(pipeline.server_url + path, params=params, headers=headers)
    if response.status_code == 404 and not response.headers["content-type"].startswith(
        "application/json"
    ):
        pytest.fail(f"non-JSON 404 for {path!r}")
    body = assert_json_answer(response)
    if response.status_code == 200:
        assert order_id == owned_id and not extra
        assert sent and cast.owner_of(sent) == owner["customer_id"], sent
        assert body["order_id"] == owned_id and "token" not in body
    assert ledger.snapshot() == before


notify_bodies = st.one_of(
    st.binary(max_size=80),
    st.dictionaries(st.one_of(st.just("order_id"), junk_text), values, max_size=3).map(
        lambda d: json.dumps(d, default=str).encode()
    ),
    st.sampled_from(["$order", "$random"]).map(lambda ref: ref.encode()),
    # The genuine id with a trailing newline (or space...) inside the string, or after the body.
    st.tuples(st.sampled_from(["$order", "$order-body"]), st.sampled_from(SUFFIXES)).map(
        lambda ref: "\0".join(ref).encode()
    ),
    hostile_documents.map(str.encode),
)


@pytest.mark.fuzz
@settings(FUZZ, max_examples=250)
@given(
    raw=notify_bodies,
    signature=st.sampled_from(["none", "genuine", "other-secret", "other-body", "junk"]),
    content_type=content_types,
)
def test_fuzzed_notify_needs_the_hmac_and_moves_nothing(
    pipeline: Pipeline,
    ledger: Ledger,
    server_log: ServerLog,
    placed_order: tuple[dict[str, Any], str],
    raw: bytes,
    signature: str,
    content_type: str,
) -> None:
    _owner, owned_id = placed_order
    if raw == b"$order":
        raw = json.dumps({"order_id": owned_id}).encode()
    elif raw == b"$random":
        raw = json.dumps({"order_id": str(uuid.uuid4())}).encode()
    elif raw.startswith(b"$order\0"):
        raw = json.dumps({"order_id": owned_id + raw[7:].decode()}).encode()
    elif raw.startswith(b"$order-body\0"):
        raw = json.dumps({"order_id": owned_id}).encode() + raw[12:]
    headers = {"Content-Type": content_type} if content_type else {}
    signed = {
        "genuine": signing.sign_body(TEST_SECRET, raw),
        "other-secret": signing.sign_body("not-the-secret", raw),
        "other-body": signing.sign_body(TEST_SECRET, raw + b" "),
        "junk": "sha256=" + "0" * 64,
    }.get(signature)
    if signed:
        headers[signing.SIGNATURE_HEADER] = signed
    server_log.new()
    before = ledger.snapshot()
    emitted = scrape(pipeline).get(RESULT_EMITS, 0)
    response = post(pipeline, "/notify", raw, headers)
    assert_json_answer(response)
    if signature != "genuine":
        assert response.status_code in (403, 413)
    if response.status_code == 200:
        # The one body that may be delivered: the order's id, exactly, and JSON's own whitespace.
        assert raw.rstrip(JSON_WHITESPACE.encode()) == json.dumps({"order_id": owned_id}).encode()
        assert content_type.startswith("application/json")
    assert ledger.snapshot() == before
    assert scrape(pipeline).get(RESULT_EMITS, 0) - emitted == (
        1 if response.status_code == 200 else 0
    )
    assert TRACEBACK not in server_log.new()


# NaN and infinity are not JSON: the client would send a packet no server can parse. Engine.IO's
# parser refuses integers past 100 characters (engineio.json): a CONNECT carrying one is never
# answered, the client waits out its timeout; the raw CONNECT test below sends those.
json_scalars = scalars.filter(
    lambda v: (
        (not isinstance(v, float) or math.isfinite(v))
        and (not isinstance(v, int) or abs(v) < 10**99)
    )
)
auth_payloads = st.one_of(
    st.none(),
    # Not a bare float: python-socketio writes auth=1.5 as the packet "01.5", which the server
    # reads as ack id 1 and then ".5", and never answers (the client waits out its timeout).
    # The raw CONNECT test and test_a_malformed_socket_packet_writes_no_traceback send those.
    json_scalars.filter(lambda v: not isinstance(v, float)),
    st.dictionaries(
        st.sampled_from(["room_token", "watch_stock", "customer_id", "token"]),
        json_scalars,
        max_size=3,
    ),
)


@pytest.mark.fuzz
@settings(FUZZ, max_examples=150)
@given(auth=auth_payloads)
def test_fuzzed_socket_joins_admit_only_a_genuine_room_token(
    pipeline: Pipeline, ledger: Ledger, auth: Any
) -> None:
    cast = Cast(pipeline)
    resolved = cast.resolve(auth)
    # A genuine token, or one its decoder reads as the same (bytes base64 ignores after it).
    genuine = isinstance(resolved, dict) and cast.owner_of(resolved.get("room_token")) in (
        cast.mine["customer_id"],
        cast.other["customer_id"],
    )
    before = ledger.snapshot()
    client = socketio.SimpleClient()
    try:
        client.connect(
            pipeline.server_url,
            auth=resolved if isinstance(resolved, dict) or resolved is None else resolved,
            transports=["websocket"],
            wait_timeout=5,
        )
    except socketio.exceptions.ConnectionError:
        assert not genuine, resolved
    else:
        assert genuine, resolved
        event, data = client.receive(timeout=5)
        owner = signing.verify_room_token(TEST_SECRET, resolved["room_token"], 3600)
        assert (event, data) == (events.JOINED, {"customer_id": owner})
    finally:
        client.disconnect()
    assert ledger.snapshot() == before


# --- A valid body with one to three parts made hostile --------------------------------------

STRING_FIELDS = ("customer_id", "room_token", "token")
EXTRA_FIELDS = {
    "currency": "usd",
    "sku": "FLASH-001",
    "amount": "4999",
    "price": "1",
    "status": "succeeded",
}
QUANTITY_LITERALS = ("1", "2", "3", "0", "4", "-1", "01", '"2"', '"02"', '"0003"', '"00002"')
QUANTITY_LITERALS += ("true", "null", "[2]", '{"n": 2}')


@st.composite
def hostile_parts(draw: st.DrawFn) -> dict[str, tuple[str, str]]:
    """Which parts of a valid body go wrong and how, as {part: (how, what)}."""
    parts = draw(
        st.sets(
            st.sampled_from([*STRING_FIELDS, "quantity", "extra", "key", "body"]),
            min_size=1,
            max_size=3,
        )
    )
    found: dict[str, tuple[str, str]] = {}
    for part in sorted(parts):
        if part in STRING_FIELDS:
            found[part] = draw(
                st.one_of(
                    st.tuples(st.sampled_from(["suffix", "prefix"]), st.sampled_from(SUFFIXES)),
                    st.tuples(st.just("literal"), number_literals),
                )
            )
        elif part == "quantity":
            found[part] = draw(
                st.one_of(
                    st.tuples(
                        st.just("literal"),
                        st.one_of(st.sampled_from(QUANTITY_LITERALS), number_literals),
                    ),
                    st.tuples(
                        st.just("string"),
                        st.tuples(st.sampled_from("123"), st.sampled_from(SUFFIXES)).map("".join),
                    ),
                )
            )
        elif part == "extra":  # currency "usd\n" and the like: not the client's to set at all
            found[part] = (
                draw(st.sampled_from(sorted(EXTRA_FIELDS))),
                draw(st.sampled_from(("", *SUFFIXES))),
            )
        elif part == "key":  # "token\n": the field's name, not its value
            found[part] = (
                draw(st.sampled_from([*STRING_FIELDS, "quantity"])),
                draw(st.sampled_from(SUFFIXES)),
            )
        else:  # after the closing brace: JSON allows its own whitespace there, nothing else
            found[part] = ("after", draw(st.sampled_from(SUFFIXES)))
    return found


def json_text(pairs: list[tuple[str, Any, bool]]) -> str:
    """A JSON object from (name, value, is_raw) pairs; a raw value is spliced in as written."""
    members = [
        f"{json.dumps(name)}: {value if raw else json.dumps(value)}" for name, value, raw in pairs
    ]
    return "{" + ", ".join(members) + "}"


def hostile_body(
    canonical: dict[str, Any], parts: dict[str, tuple[str, str]], encoding: str
) -> tuple[bytes, str, Any]:
    """The body with its parts made hostile: (bytes, content type, what the server will parse)."""
    pairs: list[tuple[str, Any, bool]] = [(name, value, False) for name, value in canonical.items()]

    def change(name: str, value: Any, raw: bool) -> None:
        nonlocal pairs
        pairs = [(n, v, r) for n, v, r in pairs if n != name] + [(name, value, raw)]

    for part, (how, what) in parts.items():
        if part in STRING_FIELDS:
            value = canonical[part]
            if how == "literal":
                change(part, what, True)
            else:
                change(part, value + what if how == "suffix" else what + value, False)
        elif part == "quantity":
            change("quantity", what, how == "literal")
        elif part == "extra":
            pairs.append((how, EXTRA_FIELDS[how] + what, False))
    if "key" in parts:
        name, suffix = parts["key"]
        if name == "quantity" and not any(n == "quantity" for n, _, _ in pairs):
            pairs.append(("quantity", 1, False))
        pairs = [(n + suffix if n == name else n, v, r) for n, v, r in pairs]
    if encoding == "form":
        form = {n: (v if isinstance(v, str) else json.dumps(v)) for n, v, _ in pairs}
        return str(httpx.QueryParams(form)).encode(), "application/x-www-form-urlencoded", form
    text = json_text(pairs) + parts.get("body", ("", ""))[1]
    try:
        parsed: Any = json.loads(text)
    except ValueError:
        parsed = None
    return text.encode(), "application/json", parsed


def same_order(parsed: Any, customer_id: str, card: str) -> int | None:
    """The quantity when the server must read this body as the valid order of this customer and
    card (the issued room token, or one its decoder reads as the same; quantity a whole number
    1..max or its ASCII digits); None when it is not that order."""
    if not isinstance(parsed, dict) or not set(parsed) <= {*STRING_FIELDS, "quantity"}:
        return None
    if not set(STRING_FIELDS) <= set(parsed):
        return None
    if parsed["customer_id"] != customer_id or parsed["token"] != card:
        return None
    if signing.verify_room_token(TEST_SECRET, parsed["room_token"], 3600) != customer_id:
        return None
    quantity = parsed.get("quantity", 1)
    if isinstance(quantity, str) and quantity.isascii() and quantity.isdigit():
        quantity = int(quantity) if len(quantity) <= 4 else None
    if type(quantity) is not int or not 1 <= quantity <= MAX_QUANTITY:
        return None
    return quantity


def settle(
    pipeline: Pipeline,
    ledger: Ledger,
    before: tuple[int, int, int],
    session: dict[str, Any],
    created: list[str],
) -> None:
    """Wait for the orders this example created; the ledger moved by exactly what they did."""
    finals = [wait_final(pipeline, session, order_id) for order_id in created]
    stock1, charges1, orders1 = ledger.snapshot()
    assert orders1 - before[2] == len(created)
    assert charges1 - before[1] == sum(1 for final in finals if final["charge_id"])
    sold = sum(final["quantity"] for final in finals if final["status"] == "succeeded")
    assert before[0] - stock1 == sold


@pytest.mark.fuzz
@settings(FUZZ, max_examples=400)
@given(
    parts=hostile_parts(),
    encoding=st.sampled_from(["json", "json", "form"]),
    quantity=st.one_of(st.none(), st.integers(min_value=1, max_value=MAX_QUANTITY)),
    ordered_first=st.booleans(),
)
def test_a_valid_body_with_hostile_fields_is_refused_or_is_that_same_one_order(
    pipeline: Pipeline,
    ledger: Ledger,
    server_log: ServerLog,
    parts: dict[str, tuple[str, str]],
    encoding: str,
    quantity: int | None,
    ordered_first: bool,
) -> None:
    """ "tok_visa\n", customer_id + "\n", room_token + "\r\n", currency "usd\n", "quantity": 1e400,
    "token\n" as a name, a NUL after the body: refused, or (when it still means this customer,
    this card and a valid quantity) the one order that customer and card have, never a second."""
    session = pipeline.session()
    customer_id = session["customer_id"]
    card = pipeline.tokenize()
    canonical: dict[str, Any] = {
        "customer_id": customer_id,
        "room_token": session["room_token"],
        "token": card,
    }
    if quantity is not None:
        canonical["quantity"] = quantity
    if encoding == "form":
        parts = {part: how for part, how in parts.items() if part != "body"}
    body, media_type, parsed = hostile_body(canonical, parts, encoding)
    valid = same_order(parsed, customer_id, card)
    server_log.new()
    before = ledger.snapshot()
    created: list[str] = []
    if ordered_first:
        first = pipeline.http.post(f"{pipeline.server_url}/charges", json=canonical)
        assert first.status_code == 202, first.text
        created.append(first.json()["order_id"])
    response = post(pipeline, "/charges", body, {"Content-Type": media_type})
    answer = assert_json_answer(response)
    event(f"{'the same' if valid else 'not the'} order: {response.status_code}")
    if response.status_code == 202:
        assert valid is not None and not ordered_first, (body[:300], answer)
        created.append(answer["order_id"])
        # The same order, both ways round: the canonical body now finds it too.
        again = pipeline.http.post(f"{pipeline.server_url}/charges", json=canonical)
        assert (again.status_code, again.json()["order_id"]) == (200, answer["order_id"])
    elif response.status_code == 200:
        assert valid is not None and ordered_first, (body[:300], answer)
        assert answer["order_id"] == created[0]
    else:
        assert 400 <= response.status_code < 500, (body[:300], answer)
    assert ledger.orders_of(customer_id) == created
    assert ledger.has_dedupe_key(customer_id, card) == bool(created)
    if isinstance(parsed, dict):
        sent_customer, sent_token = parsed.get("customer_id"), parsed.get("token")
        if isinstance(sent_customer, str) and sent_customer != customer_id:
            assert not ledger.orders_of(sent_customer)
        mutated = (sent_customer, sent_token) != (customer_id, card)
        if isinstance(sent_customer, str) and isinstance(sent_token, str) and mutated:
            assert not ledger.has_dedupe_key(sent_customer, sent_token)
    settle(pipeline, ledger, before, session, created)
    if response.status_code == 202:
        assert wait_final(pipeline, session, created[0])["quantity"] == valid
    assert TRACEBACK not in server_log.new()


# --- JSON documents no encoder writes: deep, huge, NaN, trailing garbage ---------------------

CHARGE_PLACES = ("body", "customer_id", "room_token", "token", "quantity", "currency", "inside")
CHARGE_PLACES += ("after",)
NOTIFY_PLACES = ("body", "order_id", "extra", "inside", "after")


def charge_with(canonical: dict[str, Any], document: str, place: str) -> str:
    if place == "body":
        return document
    pairs = [(name, value, False) for name, value in canonical.items()]
    if place == "after":
        return json_text(pairs) + document
    if place == "inside":
        return json_text([*pairs, ("quantity", "[" + document + "]", True)])
    return json_text([(n, v, r) for n, v, r in pairs if n != place] + [(place, document, True)])


def notify_with(order_id: str, document: str, place: str) -> str:
    if place == "body":
        return document
    if place == "order_id":
        return json_text([("order_id", document, True)])
    if place == "extra":
        return json_text([("order_id", order_id, False), ("x", document, True)])
    if place == "inside":
        return json_text([("order_id", "[" + document + "]", True)])
    return json_text([("order_id", order_id, False)]) + document


@pytest.mark.fuzz
@settings(FUZZ, max_examples=300)
@given(
    batch=st.lists(
        st.tuples(
            hostile_documents, st.sampled_from(CHARGE_PLACES), st.sampled_from(NOTIFY_PLACES)
        ),
        min_size=1,
        max_size=4,
    )
)
def test_deep_huge_and_nan_json_is_a_4xx_on_charges_and_signed_notify(
    pipeline: Pipeline,
    ledger: Ledger,
    server_log: ServerLog,
    placed_order: tuple[dict[str, Any], str],
    batch: list[tuple[str, str, str]],
) -> None:
    """1,000 levels of [ or {"a": (written out: no encoder goes there), integers of hundreds and
    thousands of digits, 1e400, NaN, Infinity, as the body, a field, or after the body; /notify
    genuinely signed, so its JSON handling is reached. Each a JSON 4xx; nothing moves."""
    _owner, owned_id = placed_order
    session = pipeline.session()
    card = pipeline.tokenize()
    canonical = {
        "customer_id": session["customer_id"],
        "room_token": session["room_token"],
        "token": card,
    }
    server_log.new()
    before = ledger.snapshot()
    emitted = scrape(pipeline).get(RESULT_EMITS, 0)
    for document, charge_place, notify_place in batch:
        text = charge_with(canonical, document, charge_place)
        response = post(pipeline, "/charges", text.encode(), {"Content-Type": "application/json"})
        assert_json_answer(response)
        assert 400 <= response.status_code < 500, (text[:200], response.text)
        raw = notify_with(owned_id, document, notify_place).encode()
        headers = {
            "Content-Type": "application/json",
            signing.SIGNATURE_HEADER: signing.sign_body(TEST_SECRET, raw),
        }
        response = post(pipeline, "/notify", raw, headers)
        assert_json_answer(response)
        assert 400 <= response.status_code < 500, (raw[:200], response.text)
        assert response.status_code != 403, response.text  # the signature was genuine
    assert ledger.snapshot() == before
    assert not ledger.orders_of(session["customer_id"])
    assert not ledger.has_dedupe_key(session["customer_id"], card)
    assert scrape(pipeline).get(RESULT_EMITS, 0) == emitted
    assert TRACEBACK not in server_log.new()


# --- Socket.IO: hostile CONNECT packets and hostile events -----------------------------------

# The library's names (python-socketio), written here rather than imported from the server.
RESERVED = ("connect", "connect_error", "disconnect", "__disconnect_final")


def doubled(kind: str) -> int:
    return 2 if kind in ("keyed", "mixed") else 1  # two levels per step: an object in an array


@st.composite
def socket_documents(draw: st.DrawFn) -> tuple[str, bool]:
    """A JSON document and whether the server's Socket.IO parser reads it, known by construction:
    Engine.IO's JSON refuses an integer past 100 characters (engineio.json) and Python's parser
    stops near 1,000 levels. Nothing near that edge, where the stack depth of each process
    decides (and hypothesis raises the test's own limit): at most 400 levels, or 1,300 and more."""
    kind = draw(st.sampled_from(["array", "object", "keyed", "mixed"]))
    shape = draw(st.sampled_from(["shallow", "deep", "number"]))
    if shape == "number":
        text = draw(number_literals)
        return text, not (text.lstrip("-").isdigit() and len(text) > 100)
    if shape == "deep":
        return nested(kind, draw(st.integers(min_value=1300, max_value=3000)), ""), False
    depth = draw(st.integers(min_value=1, max_value=400 // doubled(kind)))
    return nested(kind, depth, draw(st.sampled_from(("", *NUMBER_LITERALS)))), True


AUTH_SHAPES = ("whole", "token", "suffix", "prefix", "watch", "list", "nested")


def auth_text(shape: str, document: str, suffix: str, room: str) -> str:
    if shape == "whole":
        # After the packet type, Socket.IO reads digits as an ack id ("01E2": id 1, then "E2");
        # JSON's own leading whitespace keeps the document whole.
        return " " + document if document[:1].isdigit() else document
    if shape == "token":
        return json_text([("room_token", document, True)])
    if shape in ("suffix", "prefix"):
        token = room + suffix if shape == "suffix" else suffix + room
        return json_text([("room_token", token, False)])
    if shape == "watch":
        return json_text([("room_token", room, False), ("watch_stock", document, True)])
    if shape == "list":
        return "[" + json_text([("room_token", room, False)]) + "]"
    return json_text([("auth", json_text([("room_token", room, False)]), True)])


class RawSocket:
    """An Engine.IO websocket spoken by hand (websocket-client), for packets no Socket.IO
    client sends: a second CONNECT with a hostile auth document on the same connection."""

    def __init__(self, pipeline: Pipeline) -> None:
        url = pipeline.server_url.replace("http://", "ws://")
        self.ws = websocket.create_connection(
            url + "/socket.io/?EIO=4&transport=websocket", timeout=10
        )
        assert self.ws.recv().startswith("0{")  # Engine.IO open

    def send(self, packet: str) -> None:
        self.ws.send("4" + packet)  # an Engine.IO message carrying one Socket.IO packet

    def packets(self) -> Any:
        """Socket.IO packets as they arrive (answering the server's pings)."""
        while True:
            message = self.ws.recv()
            if message == "2":
                self.ws.send("3")
            elif message.startswith("4"):
                yield message[1:]

    def close(self) -> None:
        self.ws.close()


@pytest.mark.fuzz
@settings(FUZZ, max_examples=200)
@given(
    shape=st.sampled_from(AUTH_SHAPES),
    document=socket_documents(),
    suffix=st.sampled_from(SUFFIXES),
)
def test_hostile_connect_packets_admit_only_a_genuine_room_token_once(
    pipeline: Pipeline,
    server_log: ServerLog,
    shape: str,
    document: tuple[str, bool],
    suffix: str,
) -> None:
    """40<auth> with a deep, huge or NaN auth, or the token with a suffix, then the genuine
    40{"room_token": ...} on the same connection, then 40/nope, (always refused: its answer is
    the barrier). Exactly one of the two CONNECTs joins, the first only if its token is the
    customer's; one JOINED; the sockets gauge counts one socket, then none."""
    session = pipeline.session()
    customer_id = session["customer_id"]
    text = auth_text(shape, document[0], suffix, session["room_token"])
    readable = document[1] or shape not in ("whole", "token", "watch")
    auth: Any = engineio_json.loads(text) if readable else None
    admitted = (
        isinstance(auth, dict)
        and bool(auth)
        and (signing.verify_room_token(TEST_SECRET, auth.get("room_token"), 3600) == customer_id)
    )
    no_sockets(pipeline)
    server_log.new()
    raw = RawSocket(pipeline)
    try:
        raw.send("0" + text)
        raw.send("0" + json.dumps({"room_token": session["room_token"]}))
        raw.send("0/nope,")
        answers: list[str] = []
        joined: list[Any] = []
        barrier = False
        deadline = time.monotonic() + 10
        for packet in raw.packets():
            if packet.startswith(("0/nope,", "4/nope,")):
                barrier = True
            elif packet[:1] in ("0", "4"):
                answers.append(packet[:1])
            elif packet.startswith("2"):
                name, *args = json.loads(packet[1:])
                assert name in (events.JOINED, events.STOCK), packet[:200]
                if name == events.JOINED:
                    joined.append(args)
            if barrier and joined:
                break
            assert time.monotonic() < deadline, (answers, joined)
        event(f"{'genuine' if admitted else 'hostile'} auth: answers {answers}")
        if admitted:
            assert answers == ["0", "4"], (text[:200], answers)
        elif not readable:
            assert answers == ["0"], (text[:200], answers)  # no answer to what it cannot read
        else:
            assert answers == ["4", "0"], (text[:200], answers)
        assert joined == [[{"customer_id": customer_id}]]
        assert scrape(pipeline)[SOCKETS] == 1
    finally:
        raw.close()
    no_sockets(pipeline)
    # What the server cannot parse it refuses in one warning line (counted, see below).
    log = server_log.new()
    assert TRACEBACK not in log, log[log.index(TRACEBACK) :][:1500]


reserved_names = st.sampled_from(RESERVED)
NEAR_NAMES = ("message", "joined", "charge_result", "stock", "*", "", "Connect", "CONNECT")
NEAR_NAMES += ("connect ", " connect", "connect\n", "disconnect\x00", "connect\u2028")
NEAR_NAMES += ("__disconnect_final\r\n", "connect_error\t", "disconnect/")
string_names = st.one_of(reserved_names, st.sampled_from(NEAR_NAMES), st.text(max_size=30))
event_names = st.one_of(
    reserved_names,
    string_names,
    st.integers(min_value=-(10**30), max_value=10**30),
    st.none(),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
    # Unhashable names: a list or an object where the name goes.
    st.lists(reserved_names, max_size=2),
    st.dictionaries(reserved_names, st.none(), max_size=1),
)
payload_trees = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)
emit_payloads = st.one_of(
    st.none(),
    payload_trees,
    st.binary(max_size=64),
    st.tuples(payload_trees, payload_trees),
    st.tuples(payload_trees, st.binary(max_size=16)),
)
# Packets a Socket.IO client library would not build; none starts a binary packet (that would
# swallow the next packets as its attachments) nor closes or reopens the namespace.
ODD_PACKETS = ("2[]", '2{"a":1}', '2"connect"', '2"disconnect"', "2null", "2", "2[x", "2[1")
ODD_PACKETS += ("4", "9", "3[1]", "31[]", "1/nope,", '2/nope,["connect"]', '2/nope,["x"]')


@st.composite
def hostile_packets(draw: st.DrawFn) -> tuple[str, Any, Any]:
    """("emit", name, data) through the client, or ("raw", packet text, the reserved name the
    server must count for it or None)."""
    kind = draw(st.sampled_from(["emit", "emit", "payload", "name", "odd"]))
    if kind == "emit":
        return "emit", draw(event_names), draw(emit_payloads)
    if kind == "odd":
        packet = draw(st.sampled_from(ODD_PACKETS))
        return "raw", packet, "connect" if packet == '2/nope,["connect"]' else None
    document, readable = draw(socket_documents())
    if kind == "name":  # the document where the name goes: never a reserved name
        return "raw", "2[" + document + "]", None
    name = draw(string_names)
    counted = name if name in RESERVED and readable else None
    return "raw", "2[" + json.dumps(name) + "," + document + "]", counted


@pytest.mark.fuzz
@settings(FUZZ, max_examples=400)
@given(batch=st.lists(hostile_packets(), min_size=1, max_size=8))
def test_hostile_socket_events_move_no_gauge_and_replay_nothing(
    pipeline: Pipeline,
    server_log: ServerLog,
    placed_order: tuple[dict[str, Any], str],
    batch: list[tuple[str, Any, Any]],
) -> None:
    """On a genuinely joined socket (the only one): reserved names ("connect" would re-run the
    join and replay every result, "disconnect" would take the gauge below what is connected),
    near misses, random and unhashable names, deep and huge payloads, odd packets. Each reserved
    one is refused and counted; the gauge stays at one socket; nothing is emitted but the join;
    the socket still gets its results and the server still answers."""
    owner, owned_id = placed_order
    no_sockets(pipeline)
    server_log.new()
    start = scrape(pipeline)
    client = pipeline.connect(owner)  # JOINED received
    try:
        event, replayed = client.receive(timeout=10)
        assert event == events.CHARGE_RESULT and replayed["order_id"] == owned_id
        connected = scrape(pipeline)
        assert connected[SOCKETS] == 1
        expected = {name: start.get(refused(name), 0) for name in RESERVED}
        for kind, what, data in batch:
            if kind == "emit":
                client.emit(what, data)
                if isinstance(what, str) and what in RESERVED:
                    expected[what] += 1
            else:
                client.client.eio.send(what)
                if data is not None:
                    expected[data] += 1
        # The barrier: a last reserved event; once it is counted, everything before it was read.
        client.emit("connect_error")
        expected["connect_error"] += 1
        after = wait_metrics(
            pipeline,
            lambda found: all(found.get(refused(name), 0) >= n for name, n in expected.items()),
        )
        assert {name: after.get(refused(name), 0) for name in RESERVED} == expected
        assert after[SOCKETS] == 1
        assert after.get(JOINED_EMITS, 0) == start.get(JOINED_EMITS, 0) + 1
        assert after.get(RESULT_EMITS, 0) == start.get(RESULT_EMITS, 0) + 1  # the one replay
        assert client.connected
        # Still served: a signed /notify reaches this socket, and it is the next thing it hears.
        raw = json.dumps({"order_id": owned_id}).encode()
        notified = pipeline.http.post(
            f"{pipeline.server_url}/notify",
            content=raw,
            headers={
                "Content-Type": "application/json",
                signing.SIGNATURE_HEADER: signing.sign_body(TEST_SECRET, raw),
            },
        )
        assert notified.status_code == 200, notified.text
        assert client.receive(timeout=10) == [events.CHARGE_RESULT, replayed]
        assert pipeline.http.get(f"{pipeline.server_url}/healthz").status_code == 200
    finally:
        client.disconnect()
    no_sockets(pipeline)
    log = server_log.new()
    assert TRACEBACK not in log, log[log.index(TRACEBACK) :][:1500]


# Packets python-socketio cannot take. Each once wrote an ERROR line and a traceback to the
# server's log, as often as a client cared to send it; now each is refused unread, counted by
# reason, in one warning line (server/sockets.py), and the socket stays connected.
MALFORMED_PACKETS = {
    "unhashable-event-name": ('2[["connect"],{}]', "event_without_a_name"),
    "no-event-name": ("2[]", "event_without_a_name"),
    "no-data": ("2", "event_without_a_name"),
    "object-for-event": ('2{"a":1}', "event_without_a_name"),
    "malformed-json": ("2[x", "undecodable"),
    "deep-payload": ('2["x",' + "[" * 1300 + "]" * 1300 + "]", "undecodable"),
    "huge-integer": ('2["x",' + "9" * 101 + "]", "undecodable"),  # engineio.json: 100 characters
    "huge-integer-in-auth": ('0{"room_token":' + "9" * 101 + "}", "undecodable"),
    "number-auth": ("01.5", "undecodable"),  # python-socketio's auth=1.5: ack id 1, then ".5"
    "deep-connect-auth": ("0" + "[" * 1300 + "]" * 1300, "undecodable"),
    "connect-error-packet": ("4", "packet_type"),
    "unknown-packet-type": ("9", "packet_type"),
}


def refused_packets(reason: str) -> str:
    return f'flashsale_socket_refused_packets_total{{reason="{reason}"}}'


@pytest.mark.fuzz
@pytest.mark.parametrize(
    ("packet", "reason"), list(MALFORMED_PACKETS.values()), ids=list(MALFORMED_PACKETS)
)
def test_a_malformed_socket_packet_is_refused_counted_and_writes_no_traceback(
    pipeline: Pipeline, server_log: ServerLog, packet: str, reason: str
) -> None:
    session = pipeline.session()
    no_sockets(pipeline)
    start = scrape(pipeline)
    client = pipeline.connect(session)
    server_log.new()
    try:
        client.client.eio.send(packet)
        client.emit("connect_error")  # the barrier: once it is counted, the packet was read
        before = start.get(refused("connect_error"), 0)
        after = wait_metrics(
            pipeline, lambda found: found.get(refused("connect_error"), 0) > before
        )
        assert after.get(refused_packets(reason), 0) == start.get(refused_packets(reason), 0) + 1
        assert client.connected
        assert after[SOCKETS] == 1
    finally:
        client.disconnect()
    no_sockets(pipeline)
    log = server_log.new()
    assert TRACEBACK not in log, log[log.index(TRACEBACK) :][:1500]
    assert log.count("refused a client packet on ") == 1, log[-1500:]


@pytest.mark.fuzz
def test_a_413_says_the_connection_closes(pipeline: Pipeline) -> None:
    """Found by the deep-JSON fuzzing: 8,300 levels of [] (16.6 KB) got its 413, and the next
    request on the same httpx connection `Server disconnected without sending a response`:
    the server closes after a body too large to read, so it must say `Connection: close`."""
    host, port = pipeline.server_url.removeprefix("http://").split(":")
    body = b"[" * 8300 + b"]" * 8300
    request = (
        b"POST /charges HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % (host.encode(), len(body))
    ) + body
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(request)
        reader = conn.makefile("rb")
        status = reader.readline()
        head = [status]
        while head[-1] not in (b"\r\n", b""):
            head.append(reader.readline())
        assert b" 413 " in status, head
        length = next(
            int(h.split(b":")[1]) for h in head if h.lower().startswith(b"content-length")
        )
        assert json.loads(reader.read(length))["error"]["code"] == "payload_too_large"
        assert b"connection: close\r\n" in [h.lower() for h in head], head
        assert reader.read() == b""  # and closes it, as it said

"""Fuzzing the server with hypothesis: never a 500, always JSON, and only valid orders move money.

Runs against a real server, worker and simulator. Before and after every example the test reads
the stock (Redis) and the number of charges (the simulator's ledger): a refused request must
change neither; an accepted order is waited for until final, then must have changed exactly
what its outcome says (one charge if Stripe saw the card, its units sold only if it succeeded).
"""

from __future__ import annotations

import json
import math
import time
import uuid
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import socketio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from itsdangerous import TimestampSigner, URLSafeTimedSerializer
from pipeline_fixtures import TEST_SECRET, Pipeline

from flashsale.core import events, inventory, signing

PRICE = 4999
MAX_QUANTITY = 3
FUZZ = settings(
    deadline=None,
    derandomize=True,  # the same examples on every CI run: a failure reproduces
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
ACCEPTABLE = {200, 202, 400, 401, 403, 404, 405, 409, 413, 415}

# Placeholders drawn by hypothesis and resolved per example against live sessions.
GENUINE = ("$customer", "$room", "$other_room", "$other_customer", "$card", "$forged", "$expired")
junk_text = st.text(max_size=40)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    junk_text,
    st.sampled_from(GENUINE),
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


@pytest.fixture(scope="module")
def pipeline(pipeline_factory: Any) -> Pipeline:
    return pipeline_factory(
        server_flags=("--stock", "100000", "--max-quantity", str(MAX_QUANTITY), "--price", "4999")
    )


class Ledger:
    """Stock left and charges at Stripe: what a fuzzed request must not change."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.redis = pipeline.redis()

    def snapshot(self) -> tuple[int, int]:
        stats = self.pipeline.http.get(f"{self.pipeline.sim_url}/_sim/stats").json()
        return inventory.stock_left(self.redis, "FLASH-001"), int(stats["charges"]["total"])


@pytest.fixture(scope="module")
def ledger(pipeline: Pipeline) -> Ledger:
    return Ledger(pipeline)


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
        return value


def assert_json_answer(response: httpx.Response) -> Any:
    assert response.status_code in ACCEPTABLE, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json"), response.text[:200]
    body = response.json()
    if response.status_code >= 400:
        error = body["error"]
        assert isinstance(error["code"], str) and error["code"]
        assert isinstance(error["message"], str) and error["message"]
    return body


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
    stock0, charges0 = ledger.snapshot()
    response = pipeline.http.post(f"{pipeline.server_url}/charges", content=body, headers=headers)
    answer = assert_json_answer(response)
    if response.status_code != 202:
        assert response.status_code != 200  # a fresh customer never has an order to repeat
        assert ledger.snapshot() == (stock0, charges0)
        return
    # Accepted: it must have been a valid order of this customer, priced by the server.
    assert resolved.get("customer_id") == cast.mine["customer_id"]
    assert resolved.get("room_token") == cast.mine["room_token"]
    assert set(resolved) <= {"customer_id", "room_token", "token", "quantity"}
    final = wait_final(pipeline, cast.mine, answer["order_id"])
    quantity = final["quantity"]
    assert final["amount"] == PRICE * quantity
    stock1, charges1 = ledger.snapshot()
    assert charges1 - charges0 == (1 if final["charge_id"] else 0)
    assert stock0 - stock1 == (quantity if final["status"] == "succeeded" else 0)
    if final["charge_id"]:
        (charge,) = pipeline.sim_charges(final["order_id"])
        assert charge["amount"] == PRICE * quantity


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
)
room_tokens = st.one_of(st.none(), st.sampled_from(GENUINE + ("$owner",)), junk_text)


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
    room = owner["room_token"] if token == "$owner" else cast.resolve(token)
    params: dict[str, str] = dict(extra)
    headers: dict[str, str] = {}
    if isinstance(room, str):
        if in_header:
            # An HTTP client cannot send control characters in a header; the server never sees them.
            headers["X-Room-Token"] = "".join(c for c in room if " " <= c <= "~")
        else:
            params["room_token"] = room
    before = ledger.snapshot()
    path = "/orders/" + quote(order_id, safe="")
    response = pipeline.http.get(pipeline.server_url + path, params=params, headers=headers)
    if response.status_code == 404 and not response.headers["content-type"].startswith(
        "application/json"
    ):
        pytest.fail(f"non-JSON 404 for {path!r}")
    body = assert_json_answer(response)
    if response.status_code == 200:
        assert token == "$owner" and order_id == owned_id and not extra
        assert body["order_id"] == owned_id and "token" not in body
    assert ledger.snapshot() == before


notify_bodies = st.one_of(
    st.binary(max_size=80),
    st.dictionaries(st.one_of(st.just("order_id"), junk_text), values, max_size=3).map(
        lambda d: json.dumps(d, default=str).encode()
    ),
    st.sampled_from(["$order", "$random"]).map(lambda ref: ref.encode()),
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
    headers = {"Content-Type": content_type} if content_type else {}
    signed = {
        "genuine": signing.sign_body(TEST_SECRET, raw),
        "other-secret": signing.sign_body("not-the-secret", raw),
        "other-body": signing.sign_body(TEST_SECRET, raw + b" "),
        "junk": "sha256=" + "0" * 64,
    }.get(signature)
    if signed:
        headers[signing.SIGNATURE_HEADER] = signed
    before = ledger.snapshot()
    response = pipeline.http.post(f"{pipeline.server_url}/notify", content=raw, headers=headers)
    assert_json_answer(response)
    if signature != "genuine":
        assert response.status_code in (403, 413)
    if response.status_code == 200:
        assert json.loads(raw) == {"order_id": owned_id}
    assert ledger.snapshot() == before


# NaN and infinity are not JSON: the client would send a packet no server can parse.
json_scalars = scalars.filter(lambda v: not isinstance(v, float) or math.isfinite(v))
auth_payloads = st.one_of(
    st.none(),
    json_scalars,
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
    genuine = isinstance(resolved, dict) and resolved.get("room_token") in (
        cast.mine["room_token"],
        cast.other["room_token"],
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

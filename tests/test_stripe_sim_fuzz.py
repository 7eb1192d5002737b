"""Fuzzing the simulator: whatever arrives, the answer is Stripe-shaped and never a 5xx."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest
from conftest import start_sim
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flashsale.settings import SIM_PUBLISHABLE_KEY, SIM_SECRET_KEY

PATHS = [
    "/v1/tokens",
    "/v1/tokens/tok_visa",
    "/v1/tokens/tok_nope",
    "/v1/charges",
    "/v1/charges/ch_nope",
    "/v1/refunds",
    "/v1/refunds/re_nope",
    "/v1/",
    "/v1//x",
    "/v1/charges/",
]
NAMES = [
    "amount",
    "currency",
    "source",
    "metadata",
    "description",
    "capture",
    "card",
    "charge",
    "limit",
    "starting_after",
    "ending_before",
    "reason",
    "key",
    "expand",
]
SUBKEYS = ["", "number", "exp_month", "exp_year", "cvc", "order_id", "0", "a][b"]
header_text = st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=40)
names = st.one_of(
    st.sampled_from(NAMES),
    st.builds(lambda n, k: f"{n}[{k}]", st.sampled_from(NAMES), st.sampled_from(SUBKEYS)),
    st.text(max_size=12),
)
values = st.one_of(
    st.sampled_from(["4999", "usd", "tok_visa", "tok_chargeDeclined", "4242424242424242", "-1"]),
    st.text(max_size=20),
)
bodies = st.one_of(
    st.dictionaries(names, values, max_size=6).map(lambda d: httpx.QueryParams(d).__str__()),
    st.binary(max_size=60).map(lambda b: b.decode("latin-1")),
)
auth = st.sampled_from(
    [
        None,
        f"Bearer {SIM_SECRET_KEY}",
        f"Bearer {SIM_PUBLISHABLE_KEY}",
        "Bearer sk_live_" + "z" * 24,
        "Basic !!!",
        "Token x",
        "Bearer  x y",
    ]
)
odd_paths = st.text(max_size=15).map(lambda text: "/v1/" + quote(text, safe="/[]"))
requests = st.fixed_dictionaries(
    {
        "method": st.sampled_from(["GET", "POST", "DELETE", "PUT", "OPTIONS"]),
        "path": st.one_of(st.sampled_from(PATHS), odd_paths),
        "body": bodies,
        "query": bodies,
        "auth": auth,
        "idempotency_key": st.one_of(st.none(), header_text),
    }
)


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    child, url = start_sim(tmp_path_factory.mktemp("fuzz"))
    try:
        with httpx.Client(base_url=url) as client:
            yield client
    finally:
        child.stop()


def check(http: httpx.Client, request: dict) -> None:
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if request["auth"] is not None:
        headers["Authorization"] = request["auth"]
    if request["idempotency_key"] is not None:
        headers["Idempotency-Key"] = request["idempotency_key"]
    path = request["path"]
    response = http.request(
        request["method"],
        f"{path}?{quote(request['query'], safe='=&[]%+')}" if request["query"] else path,
        content=request["body"].encode("latin-1", "replace"),
        headers=headers,
    )
    assert response.status_code < 500, response.text
    assert response.headers["Request-Id"].startswith("req_")
    if response.status_code >= 400:
        error = response.json()["error"]
        assert error["type"] in ("invalid_request_error", "card_error", "idempotency_error")
        assert error["message"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=requests)
def test_random_requests_get_stripe_shaped_answers(http: httpx.Client, request: dict) -> None:
    check(http, request)


@pytest.mark.fuzz
@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=requests)
def test_many_random_requests_get_stripe_shaped_answers(http: httpx.Client, request: dict) -> None:
    check(http, request)

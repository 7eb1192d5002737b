"""Charging through the stripe library against the real simulator: outcomes and retry advice."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
import stripe
from fault_proxy import FaultProxy

from flashsale.core import events, payments
from flashsale.core.orders import Order
from flashsale.errors import StripeAuthError, StripeUnavailable
from flashsale.ops.processes import free_port
from flashsale.settings import SIM_PUBLISHABLE_KEY, Settings


@pytest.fixture
def stripe_sim(sim: str) -> Iterator[str]:
    """The module's simulator with its fault settings back to none after each test."""
    yield sim
    reset = {"error_rate": 0.0, "rate_limit": "off", "latency": "0"}
    httpx.post(f"{sim}/_sim/config", json=reset).raise_for_status()


def settings_for(sim_url: str, **changes: object) -> Settings:
    return Settings(stripe_api_base=sim_url, stripe_timeout_s=5).replace(**changes)


def tokenize(sim_url: str, number: str = "4242424242424242") -> str:
    response = httpx.post(
        f"{sim_url}/v1/tokens",
        data={"card[number]": number, "card[exp_month]": "1", "card[exp_year]": "2040"},
        auth=(SIM_PUBLISHABLE_KEY, ""),
    )
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def order_with(token: str, quantity: int = 1) -> Order:
    return Order(
        order_id=str(uuid.uuid4()),
        customer_id=str(uuid.uuid4()),
        sku="SKU-1",
        quantity=quantity,
        amount=1234 * quantity,
        currency="usd",
        token=token,
    )


def test_success_and_the_idempotent_replay_of_the_same_order(stripe_sim: str) -> None:
    client = payments.make_client(settings_for(stripe_sim))
    order = order_with(tokenize(stripe_sim), quantity=2)
    first = payments.charge_order(client, order)
    assert first.status == events.SUCCEEDED and first.charge_id and first.code is None
    again = payments.charge_order(client, order)  # a redelivered task
    assert again == first
    listed = httpx.get(
        f"{stripe_sim}/v1/charges",
        params={"limit": 100},
        headers={"Authorization": "Bearer sk_test_x123456"},
    ).json()["data"]
    mine = [c for c in listed if c["metadata"].get("order_id") == order.order_id]
    assert [c["id"] for c in mine] == [first.charge_id] and mine[0]["amount"] == 2468


def test_a_decline_is_a_final_outcome_with_stripes_codes(stripe_sim: str) -> None:
    client = payments.make_client(settings_for(stripe_sim))
    outcome = payments.charge_order(client, order_with(tokenize(stripe_sim, "4000000000009995")))
    assert outcome.status == events.DECLINED
    assert (outcome.code, outcome.decline_code) == ("card_declined", "insufficient_funds")
    assert outcome.message and outcome.charge_id  # Stripe records declined charges too


def test_a_refused_key_raises_stripe_auth_error(stripe_sim: str) -> None:
    client = payments.make_client(settings_for(stripe_sim, stripe_secret_key="sk_nope_123456"))
    with pytest.raises(StripeAuthError, match="refused the secret key"):
        payments.charge_order(client, order_with(tokenize(stripe_sim)))


def test_server_errors_and_rate_limits_ask_for_a_retry(stripe_sim: str) -> None:
    """A 500 may hide a committed charge (outcome unknown); a 429 was refused before any work."""
    client = payments.make_client(settings_for(stripe_sim))
    order = order_with(tokenize(stripe_sim))
    httpx.post(f"{stripe_sim}/_sim/config", json={"error_rate": 1.0}).raise_for_status()
    with pytest.raises(StripeUnavailable, match="500") as server_error:
        payments.charge_order(client, order)
    assert server_error.value.outcome_known is False
    httpx.post(
        f"{stripe_sim}/_sim/config", json={"error_rate": 0.0, "rate_limit": "1"}
    ).raise_for_status()
    with pytest.raises(StripeUnavailable, match="429") as limited:
        for _ in range(5):
            payments.charge_order(client, order_with(tokenize(stripe_sim)))
    assert limited.value.outcome_known is True


def test_a_5xx_stripe_says_not_to_retry_is_still_no_final_answer(stripe_sim: str) -> None:
    """Stripe-Should-Retry: false on a 500 means a replay returns the same 500, not that nothing
    was charged: the order must not be failed (and its unit released) on it."""
    order = order_with(tokenize(stripe_sim))
    with FaultProxy(
        stripe_sim,
        lambda method, path, _: method == "POST" and path == "/v1/charges",
        status=500,
        headers={"Stripe-Should-Retry": "false"},
    ) as proxy:
        client = payments.make_client(settings_for(proxy.url))
        with pytest.raises(StripeUnavailable, match="500") as error:
            payments.charge_order(client, order)
    assert error.value.outcome_known is False
    assert proxy.shed["POST /v1/charges"] == 1


def test_an_unreachable_stripe_asks_for_a_retry_and_nothing_was_charged() -> None:
    client = payments.make_client(settings_for(f"http://127.0.0.1:{free_port()}"))
    with pytest.raises(StripeUnavailable, match="APIConnectionError") as refused:
        payments.charge_order(client, order_with("tok_visa"))
    assert refused.value.outcome_known is True


def test_a_request_stripe_will_never_accept_fails_without_retry(stripe_sim: str) -> None:
    client = payments.make_client(settings_for(stripe_sim))
    outcome = payments.charge_order(client, order_with("tok_doesnotexist"))
    assert outcome.status == events.FAILED and outcome.code and outcome.message


def test_proxies_from_the_environment_still_apply(
    stripe_sim: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client reads proxy variables once, when made, instead of on every request."""
    tokens = [tokenize(stripe_sim), tokenize(stripe_sim)]  # httpx reads the variables too
    for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")  # nothing listens
    proxied = payments.make_client(settings_for(stripe_sim))
    with pytest.raises(StripeUnavailable, match="ProxyError"):
        payments.charge_order(proxied, order_with(tokens[0]))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    direct = payments.make_client(settings_for(stripe_sim))
    assert payments.charge_order(direct, order_with(tokens[1])).status == events.SUCCEEDED


def test_a_stripe_slower_than_the_timeout_asks_for_a_retry_and_the_retry_replays(
    stripe_sim: str,
) -> None:
    """A read timeout may hide a charge Stripe made: the retry must replay it, not charge again."""
    client = payments.make_client(settings_for(stripe_sim, stripe_timeout_s=0.3))
    order = order_with(tokenize(stripe_sim))
    httpx.post(f"{stripe_sim}/_sim/config", json={"latency": "1s"}).raise_for_status()
    with pytest.raises(StripeUnavailable, match="ReadTimeoutError") as timed_out:
        payments.charge_order(client, order)
    assert timed_out.value.outcome_known is False
    httpx.post(f"{stripe_sim}/_sim/config", json={"latency": "0"}).raise_for_status()
    retried = None
    for _ in range(50):  # Stripe answers 409 while the first attempt is still in flight
        try:
            retried = payments.charge_order(client, order)
            break
        except StripeUnavailable as error:
            assert "409" in str(error)
            time.sleep(0.1)
    assert retried is not None and retried.status == events.SUCCEEDED
    listed = httpx.get(
        f"{stripe_sim}/v1/charges",
        params={"limit": 100},
        headers={"Authorization": "Bearer sk_test_x123456"},
    ).json()["data"]
    assert [c["id"] for c in listed if c["metadata"].get("order_id") == order.order_id] == [
        retried.charge_id
    ]


def test_charges_reuse_one_kept_alive_connection(stripe_sim: str) -> None:
    http_client = payments.Urllib3Client(stripe_sim, timeout=5)
    client = stripe.StripeClient(
        "sk_test_x123456",
        base_addresses={"api": stripe_sim},
        max_network_retries=0,
        http_client=http_client,
    )
    for _ in range(3):
        assert payments.charge_order(client, order_with(tokenize(stripe_sim))).status == (
            events.SUCCEEDED
        )
    pool = http_client.pool.connection_from_url(stripe_sim)
    assert pool.num_connections == 1 and pool.num_requests == 3

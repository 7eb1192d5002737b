"""The Stripe simulator, driven by the real stripe library and by raw HTTP."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import stripe
from conftest import start_sim

from flashsale.settings import SIM_PUBLISHABLE_KEY, SIM_SECRET_KEY

SECRET = {"Authorization": f"Bearer {SIM_SECRET_KEY}"}
NEXT_YEAR = str(time.gmtime().tm_year + 1)

SUCCEEDING = {
    "4242424242424242": ("Visa", "visa"),
    "5555555555554444": ("MasterCard", "mastercard"),
    "378282246310005": ("American Express", "amex"),
}
# number -> (code, decline_code, message, param)
DECLINING = {
    "4000000000000002": ("card_declined", "generic_decline", "Your card was declined.", None),
    "4000000000009995": (
        "card_declined",
        "insufficient_funds",
        "Your card has insufficient funds.",
        None,
    ),
    "4000000000009987": ("card_declined", "lost_card", "Your card was declined.", None),
    "4000000000009979": ("card_declined", "stolen_card", "Your card was declined.", None),
    "4100000000000019": ("card_declined", "fraudulent", "Your card was declined.", None),
    "4000000000000069": ("expired_card", "expired_card", "Your card has expired.", "exp_month"),
    "4000000000000127": (
        "incorrect_cvc",
        "incorrect_cvc",
        "Your card's security code is incorrect.",
        "cvc",
    ),
    "4000000000000119": (
        "processing_error",
        "processing_error",
        "An error occurred while processing your card. Try again in a little bit.",
        None,
    ),
}
ALIASES = {
    "tok_visa": None,
    "tok_mastercard": None,
    "tok_amex": None,
    "tok_chargeDeclined": "generic_decline",
    "tok_chargeDeclinedInsufficientFunds": "insufficient_funds",
    "tok_chargeDeclinedLostCard": "lost_card",
    "tok_chargeDeclinedStolenCard": "stolen_card",
    "tok_chargeDeclinedExpiredCard": "expired_card",
    "tok_chargeDeclinedIncorrectCvc": "incorrect_cvc",
    "tok_chargeDeclinedProcessingError": "processing_error",
    "tok_chargeDeclinedFraudulent": "fraudulent",
}


def client_for(url: str, key: str = SIM_SECRET_KEY, retries: int = 0) -> stripe.StripeClient:
    return stripe.StripeClient(key, base_addresses={"api": url}, max_network_retries=retries)


@pytest.fixture(scope="module")
def browser_client(sim: str) -> stripe.StripeClient:
    """The publishable key, as Stripe.js holds it: the one caller that may send card numbers."""
    return client_for(sim, SIM_PUBLISHABLE_KEY)


def card(number: str, cvc: str | None = "123", **fields: str) -> dict[str, str]:
    given = {"number": number, "exp_month": "12", "exp_year": NEXT_YEAR, **fields}
    if cvc is not None:
        given["cvc"] = "1234" if number.startswith("37") and cvc == "123" else cvc
    return given


def form_card(number: str, **extra: str) -> dict[str, str]:
    return {f"card[{name}]": value for name, value in card(number, **extra).items()}


def charge_params(source: str, order_id: str = "order-1", amount: int = 4999) -> dict:
    return {
        "amount": amount,
        "currency": "usd",
        "source": source,
        "metadata": {"order_id": order_id},
    }


def raw_charge(
    url: str, source: str, headers: dict | None = None, **fields: object
) -> httpx.Response:
    data = {"amount": "4999", "currency": "usd", "source": source, **fields}
    return httpx.post(f"{url}/v1/charges", data=data, headers={**SECRET, **(headers or {})})


def stats(url: str) -> dict:
    return httpx.get(f"{url}/_sim/stats").json()


# --- start-up -------------------------------------------------------------------------------


def test_start_line_names_the_bound_port_and_every_setting(tmp_path: Path) -> None:
    child, url = start_sim(
        tmp_path, "--rate-limit", "test", "--latency", "lognormal:p50=80ms,p99=600ms"
    )
    try:
        line = next(line for line in child.log_text().splitlines() if "listening on" in line)
        port = int(url.rsplit(":", 1)[1])
        assert port > 0 and f"listening on http://127.0.0.1:{port} (" in line
        for setting in (
            "rate_limit=test (25/s)",
            "latency=lognormal:p50=80ms,p99=600ms",
            "error_rate=0",
            "drop_rate=0",
            "idempotency_ttl=86400s",
            "concurrency_limit=off",
        ):
            assert setting in line
    finally:
        assert child.stop() == 0  # SIGTERM is a clean exit
    assert "stripe-sim stopped" in child.log_text()


@pytest.mark.parametrize(
    ("flag", "value", "wording"),
    [
        ("--latency", "banana", "latency must be a duration"),
        ("--rate-limit", "fast", "rate limit must be 'test'"),
        ("--latency", "lognormal:p50=80ms", "both p50 and p99"),
        ("--idempotency-ttl", "0", "at least 1 second"),
    ],
)
def test_bad_options_are_one_clear_line_and_no_traceback(
    flag: str, value: str, wording: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "flashsale", "stripe-sim", "--port", "0", flag, value],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert wording in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


# --- cards, tokens and charges --------------------------------------------------------------


@pytest.mark.parametrize("number", list(SUCCEEDING))
def test_succeeding_cards_charge_through_the_stripe_library(
    client: stripe.StripeClient, browser_client: stripe.StripeClient, number: str
) -> None:
    brand, network = SUCCEEDING[number]
    token = browser_client.v1.tokens.create(params={"card": card(number)})
    assert token.id.startswith("tok_") and token.used is False and token.livemode is False
    assert token.card.brand == brand and token.card.last4 == number[-4:]
    charge = client.v1.charges.create(params=charge_params(token.id, f"ok-{number}"))
    assert charge.id.startswith("ch_") and charge.object == "charge"
    assert (charge.status, charge.paid, charge.captured) == ("succeeded", True, True)
    assert charge.amount == charge.amount_captured == 4999 and charge.amount_refunded == 0
    assert charge.metadata["order_id"] == f"ok-{number}"
    assert charge.source.last4 == number[-4:]
    assert charge.payment_method_details.card.brand == network
    assert charge.outcome.type == "authorized" and charge.failure_code is None
    assert charge.balance_transaction.startswith("txn_") and charge.refunded is False
    assert client.v1.charges.retrieve(charge.id).to_dict() == charge.to_dict()
    assert client.v1.tokens.retrieve(token.id).used is True


@pytest.mark.parametrize("number", list(DECLINING))
def test_declining_cards_answer_402_like_stripe_and_record_the_failed_charge(
    sim: str, client: stripe.StripeClient, browser_client: stripe.StripeClient, number: str
) -> None:
    code, decline_code, message, param = DECLINING[number]
    token = browser_client.v1.tokens.create(params={"card": card(number)})
    with pytest.raises(stripe.CardError) as caught:
        client.v1.charges.create(params=charge_params(token.id))
    error = caught.value
    assert error.http_status == 402 and error.code == code and error.param == param
    assert error.error.decline_code == decline_code and error.user_message == message
    assert error.error.type == "card_error" and error.error.charge.startswith("ch_")
    assert error.error.doc_url == f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}"
    assert error.request_id and error.request_id.startswith("req_")
    failed = client.v1.charges.retrieve(error.error.charge)
    assert (failed.status, failed.paid, failed.captured) == ("failed", False, False)
    assert failed.failure_code == code and failed.failure_message == message
    assert failed.outcome.reason in (decline_code, "highest_risk_level")
    assert failed.balance_transaction is None and failed.amount_captured == 0


@pytest.mark.parametrize("alias", list(ALIASES))
def test_every_test_token_alias_charges_with_its_documented_outcome(
    client: stripe.StripeClient, alias: str
) -> None:
    expected = ALIASES[alias]
    for _ in range(2):  # aliases mint a fresh card per use, so they never count as used
        if expected is None:
            charge = client.v1.charges.create(params=charge_params(alias))
            assert charge.status == "succeeded" and charge.source.object == "card"
        else:
            with pytest.raises(stripe.CardError) as caught:
                client.v1.charges.create(params=charge_params(alias))
            assert caught.value.error.decline_code == expected


@pytest.mark.parametrize(
    ("fields", "code", "param"),
    [
        ({"number": "4242424242424241"}, "incorrect_number", "number"),
        ({"number": "4242-abc"}, "invalid_number", "number"),
        ({"exp_month": "13"}, "invalid_expiry_month", "exp_month"),
        ({"exp_year": "2001"}, "invalid_expiry_year", "exp_year"),
        ({"cvc": "12"}, "invalid_cvc", "cvc"),
        ({"number": "378282246310005", "cvc": "123"}, "invalid_cvc", "cvc"),
    ],
)
def test_tokenization_checks_give_stripes_card_errors(
    sim: str, fields: dict, code: str, param: str
) -> None:
    data = {**form_card("4242424242424242"), **{f"card[{k}]": v for k, v in fields.items()}}
    response = httpx.post(f"{sim}/v1/tokens", data={**data, "key": SIM_PUBLISHABLE_KEY})
    assert response.status_code == 402
    error = response.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("card_error", code, param)
    assert error["message"].startswith("Your card")


def test_tokens_accept_the_publishable_key_as_param_bearer_or_basic_auth(sim: str) -> None:
    data = form_card("4242424242424242")
    by_param = httpx.post(f"{sim}/v1/tokens", data={**data, "key": SIM_PUBLISHABLE_KEY})
    by_bearer = httpx.post(
        f"{sim}/v1/tokens", data=data, headers={"Authorization": f"Bearer {SIM_PUBLISHABLE_KEY}"}
    )
    by_basic = httpx.post(f"{sim}/v1/tokens", data=data, auth=(SIM_PUBLISHABLE_KEY, ""))
    for response in (by_param, by_bearer, by_basic):
        assert response.status_code == 200 and response.json()["id"].startswith("tok_")
    # A publishable key may tokenize but never charge.
    refused = httpx.post(
        f"{sim}/v1/charges",
        data={"amount": "4999", "currency": "usd", "source": by_param.json()["id"]},
        auth=(SIM_PUBLISHABLE_KEY, ""),
    )
    assert refused.status_code == 401
    assert "publishable API key" in refused.json()["error"]["message"]
    # The token was not spent by the refused attempt.
    assert raw_charge(sim, by_param.json()["id"]).status_code == 200


def test_a_token_is_single_use(
    sim: str, client: stripe.StripeClient, browser_client: stripe.StripeClient
) -> None:
    token = browser_client.v1.tokens.create(params={"card": card("4242424242424242")})
    client.v1.charges.create(params=charge_params(token.id))
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.charges.create(params=charge_params(token.id, "again"))
    assert caught.value.http_status == 400 and caught.value.code == "token_already_used"
    assert f"You cannot use a Stripe token more than once: {token.id}" in str(caught.value)
    assert client.v1.tokens.retrieve(token.id).used is True


def test_unknown_tokens_and_charges_are_resource_missing(
    sim: str, client: stripe.StripeClient
) -> None:
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.charges.create(params=charge_params("tok_doesnotexist"))
    assert caught.value.code == "resource_missing" and caught.value.param == "source"
    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.charges.retrieve("ch_nope")
    assert missing.value.http_status == 404 and "No such charge: 'ch_nope'" in str(missing.value)


@pytest.mark.parametrize(
    "key",
    ["sk_live_" + "x" * 24, "rk_live_" + "y" * 24, "sk_bogus_123456789", "not-a-key"],
)
def test_keys_other_than_test_keys_are_refused(sim: str, key: str) -> None:
    with pytest.raises(stripe.AuthenticationError) as caught:
        client_for(sim, key).v1.charges.create(params=charge_params("tok_visa"))
    assert caught.value.http_status == 401
    assert "Invalid API Key provided" in str(caught.value)
    assert key not in str(caught.value)  # masked, like Stripe
    assert stats(sim)["charges"]["total"] >= 0


def test_a_missing_key_is_401_with_stripes_hint(sim: str) -> None:
    response = httpx.post(f"{sim}/v1/charges", data={"amount": "4999"})
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert "You did not provide an API key" in response.json()["error"]["message"]


def test_global_api_base_style_works_too(sim: str) -> None:
    saved = (stripe.api_key, stripe.api_base, stripe.max_network_retries)
    stripe.api_key, stripe.api_base, stripe.max_network_retries = SIM_SECRET_KEY, sim, 0
    try:
        charge = stripe.Charge.create(amount=1500, currency="eur", source="tok_mastercard")
        assert charge.status == "succeeded" and charge.currency == "eur"
        assert stripe.Charge.retrieve(charge.id).amount == 1500
    finally:
        stripe.api_key, stripe.api_base, stripe.max_network_retries = saved


# --- idempotency ------------------------------------------------------------------------------


def test_same_key_same_params_replays_the_first_response(
    sim: str, client: stripe.StripeClient
) -> None:
    before = stats(sim)["ledger"]["charges"]
    options = {"idempotency_key": "order-replay"}
    first = client.v1.charges.create(params=charge_params("tok_visa", "replay"), options=options)
    again = client.v1.charges.create(params=charge_params("tok_visa", "replay"), options=options)
    assert again.id == first.id
    raw = raw_charge(
        sim, "tok_visa", {"Idempotency-Key": "order-replay"}, **{"metadata[order_id]": "replay"}
    )
    assert raw.status_code == 200 and raw.json()["id"] == first.id
    assert raw.headers["Idempotent-Replayed"] == "true"
    assert stats(sim)["ledger"]["charges"] == before + 1


def test_a_replayed_decline_is_the_same_402_and_the_same_failed_charge(sim: str) -> None:
    headers = {"Idempotency-Key": "order-declined-replay"}
    first = raw_charge(sim, "tok_chargeDeclined", headers)
    again = raw_charge(sim, "tok_chargeDeclined", headers)
    assert first.status_code == again.status_code == 402
    assert first.json() == again.json() and "Idempotent-Replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"


def test_same_key_different_params_is_an_idempotency_error(client: stripe.StripeClient) -> None:
    options = {"idempotency_key": "order-mismatch"}
    client.v1.charges.create(params=charge_params("tok_visa", "a"), options=options)
    with pytest.raises(stripe.IdempotencyError) as caught:
        client.v1.charges.create(params=charge_params("tok_visa", "a", 5000), options=options)
    assert caught.value.http_status == 400
    assert "can only be used with the same parameters" in str(caught.value)


def test_a_request_refused_by_validation_does_not_burn_its_key(sim: str) -> None:
    headers = {"Idempotency-Key": "order-validation"}
    refused = raw_charge(sim, "tok_visa", headers, amount="lots")
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "amount"
    accepted = raw_charge(sim, "tok_visa", headers)
    assert accepted.status_code == 200 and "Idempotent-Replayed" not in accepted.headers


def test_a_key_still_in_flight_gets_409(sim_factory: Callable[..., str]) -> None:
    url = sim_factory("--latency", "600ms")
    headers = {"Idempotency-Key": "order-in-flight"}
    first: dict[str, httpx.Response] = {}
    thread = threading.Thread(target=lambda: first.update(r=raw_charge(url, "tok_visa", headers)))
    thread.start()
    deadline = time.monotonic() + 5
    while stats(url)["in_flight"] == 0:  # the first request is being answered (600 ms)
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.01)
    conflict = raw_charge(url, "tok_visa", headers)
    thread.join()
    assert conflict.status_code == 409
    assert conflict.json()["error"]["type"] == "idempotency_error"
    assert first["r"].status_code == 200
    # Once the first finishes, the key replays it.
    assert raw_charge(url, "tok_visa", headers).json()["id"] == first["r"].json()["id"]


def test_keys_expire_after_the_ttl(sim_factory: Callable[..., str]) -> None:
    url = sim_factory("--idempotency-ttl", "1")
    headers = {"Idempotency-Key": "order-ttl"}
    first = raw_charge(url, "tok_visa", headers).json()["id"]
    assert raw_charge(url, "tok_visa", headers).json()["id"] == first
    deadline = time.monotonic() + 10
    while (later := raw_charge(url, "tok_visa", headers)).json()["id"] == first:
        assert time.monotonic() < deadline, "the key never expired"  # replayed until it does
        time.sleep(0.05)
    assert later.status_code == 200 and later.json()["id"] != first
    assert "Idempotent-Replayed" not in later.headers


# --- listing ----------------------------------------------------------------------------------


def test_pagination_walks_more_than_250_charges_newest_first(stripe_sim: str) -> None:
    with httpx.Client(base_url=stripe_sim, headers=SECRET) as http:
        created = [
            http.post(
                "/v1/charges",
                data={
                    "amount": "5000",
                    "currency": "usd",
                    "source": "tok_visa",
                    "metadata[order_id]": f"o{i}",
                },
            ).json()["id"]
            for i in range(260)
        ]
        newest_first = created[::-1]
        pages, cursor, has_more = [], None, True
        while has_more:
            params = {"limit": "100", **({"starting_after": cursor} if cursor else {})}
            page = http.get("/v1/charges", params=params).json()
            assert page["object"] == "list" and page["url"] == "/v1/charges"
            pages.append([charge["id"] for charge in page["data"]])
            has_more, cursor = page["has_more"], page["data"][-1]["id"]
        assert [len(page) for page in pages] == [100, 100, 60]
        assert sum(pages, []) == newest_first
        before = http.get("/v1/charges", params={"limit": "3", "ending_before": created[10]}).json()
        assert [c["id"] for c in before["data"]] == [created[13], created[12], created[11]]
        assert before["has_more"] is True
        assert http.get("/v1/charges").json()["data"][0]["id"] == created[-1]  # default limit 10
    walked = [
        c.id
        for c in client_for(stripe_sim).v1.charges.list(params={"limit": 100}).auto_paging_iter()
    ]
    assert walked == newest_first


# --- limits, latency and faults -----------------------------------------------------------------


def test_test_mode_rate_limit_answers_429_with_stripes_headers(
    sim_factory: Callable[..., str],
) -> None:
    url = sim_factory("--rate-limit", "test")
    with httpx.Client(base_url=url, headers=SECRET) as http:
        answers = [
            http.post(
                "/v1/charges", data={"amount": "4999", "currency": "usd", "source": "tok_visa"}
            )
            for _ in range(80)
        ]
    limited = [r for r in answers if r.status_code == 429]
    ok = [r for r in answers if r.status_code == 200]
    assert len(ok) + len(limited) == 80
    assert 20 <= len(ok) <= 60 and limited  # a 25/s bucket, generous for a busy machine
    error = limited[0].json()["error"]
    assert error["code"] == "rate_limit" and error["type"] == "invalid_request_error"
    assert limited[0].headers["Stripe-Rate-Limited-Reason"] == "global-rate"
    assert limited[0].headers["Request-Id"].startswith("req_")
    with pytest.raises(stripe.RateLimitError):
        for _ in range(40):
            client_for(url).v1.charges.create(params=charge_params("tok_visa"))
    counted = stats(url)
    assert counted["rate_limited"]["global-rate"] == counted["requests"]["POST /v1/charges"]["429"]
    assert counted["ledger"]["charges"] == counted["requests"]["POST /v1/charges"]["200"]


def test_rate_limit_spares_customers_tokenizing_with_the_publishable_key(
    sim_factory: Callable[..., str],
) -> None:
    url = sim_factory("--rate-limit", "5", "--error-rate", "1")
    browser = {"Authorization": f"Bearer {SIM_PUBLISHABLE_KEY}"}
    with httpx.Client(base_url=url) as http:
        tokens = [
            http.post("/v1/tokens", data=form_card("4242424242424242"), headers=browser)
            for _ in range(20)
        ]
        charges = [http.get("/v1/charges", headers=SECRET) for _ in range(20)]
    assert [r.status_code for r in tokens] == [200] * 20
    assert {r.status_code for r in charges} == {429, 500}


def test_concurrency_limit_answers_429_when_too_many_are_in_flight(
    sim_factory: Callable[..., str],
) -> None:
    url = sim_factory("--concurrency-limit", "2", "--latency", "400ms")
    answers: list[httpx.Response] = []
    threads = [
        threading.Thread(target=lambda: answers.append(raw_charge(url, "tok_visa")))
        for _ in range(6)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    limited = [r for r in answers if r.status_code == 429]
    assert len(limited) >= 1 and any(r.status_code == 200 for r in answers)
    assert limited[0].headers["Stripe-Rate-Limited-Reason"] == "global-concurrency"


def test_rate_limit_live_and_a_number_are_accepted(sim_factory: Callable[..., str]) -> None:
    url = sim_factory("--rate-limit", "live")
    assert httpx.get(f"{url}/_sim/config").json()["rate_limit"] == "live"
    changed = httpx.post(f"{url}/_sim/config", json={"rate_limit": 7})
    assert changed.status_code == 200 and changed.json()["rate_limit"] == "7"


def test_fixed_latency_delays_each_request(sim_factory: Callable[..., str]) -> None:
    url = sim_factory("--latency", "200ms")
    with httpx.Client(base_url=url, headers=SECRET) as http:
        for _ in range(3):
            assert http.get("/v1/charges").status_code == 200
        # Each of the three was held 200 ms (by the simulator's clock); rehearsal controls
        # never wait, so the stats calls themselves added nothing.
        held = http.get("/_sim/stats").json()["latency_added_ms"]
        assert held["requests"] == 3 and held["min"] >= 200
        assert http.get("/_sim/stats").json()["latency_added_ms"]["requests"] == 3


def test_lognormal_latency_is_sampled_per_request(sim_factory: Callable[..., str]) -> None:
    url = sim_factory("--latency", "lognormal:p50=40ms,p99=300ms")
    with httpx.Client(base_url=url, headers=SECRET) as http:
        for _ in range(30):
            http.get("/v1/charges")
        held = http.get("/_sim/stats").json()["latency_added_ms"]
    assert held["requests"] == 30
    assert 15 <= held["median"] <= 150  # p50 40ms, generous either way
    assert held["max"] - held["min"] > 10  # it varies: sampled, not fixed


def test_error_injection_answers_500_api_error_that_stripe_retries(
    sim_factory: Callable[..., str],
) -> None:
    url = sim_factory("--error-rate", "1")
    response = raw_charge(url, "tok_visa")
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "api_error"
    assert response.headers["Stripe-Should-Retry"] == "true"
    with pytest.raises(stripe.APIError):
        client_for(url, retries=2).v1.charges.create(params=charge_params("tok_visa"))
    counted = stats(url)
    assert counted["injected_errors"] == 4  # 1 raw + 1 try and 2 retries by the library
    assert counted["ledger"]["charges"] == 0  # an injected 500 happens before any work
    httpx.post(f"{url}/_sim/config", json={"error_rate": 0})
    assert raw_charge(url, "tok_visa").status_code == 200


def test_dropped_connection_still_commits_and_an_idempotent_retry_returns_it(
    sim_factory: Callable[..., str],
) -> None:
    url = sim_factory("--drop-rate", "1")
    headers = {"Idempotency-Key": "order-dropped"}
    with pytest.raises(httpx.RemoteProtocolError):
        raw_charge(url, "tok_visa", headers)
    counted = stats(url)
    assert counted["ledger"]["charges"] == 1 and counted["dropped_connections"] == 1
    with pytest.raises(stripe.APIConnectionError):
        client_for(url).v1.charges.create(params=charge_params("tok_visa"))
    httpx.post(f"{url}/_sim/config", json={"drop_rate": 0})
    retry = raw_charge(url, "tok_visa", headers)
    assert retry.status_code == 200 and retry.headers["Idempotent-Replayed"] == "true"
    listed = httpx.get(f"{url}/v1/charges", headers=SECRET).json()["data"]
    assert retry.json()["id"] in [charge["id"] for charge in listed]
    assert stats(url)["ledger"]["charges"] == 2  # the replay charged nothing new


# --- bad requests ----------------------------------------------------------------------------


BAD_REQUESTS = [
    # (method, path, form body or raw bytes, status, param)
    ("POST", "/v1/charges", {"currency": "usd", "source": "tok_visa"}, 400, "amount"),
    ("POST", "/v1/charges", {"amount": "4999", "source": "tok_visa"}, 400, "currency"),
    ("POST", "/v1/charges", {"amount": "4999", "currency": "usd"}, 400, None),
    (
        "POST",
        "/v1/charges",
        {"amount": "12.5", "currency": "usd", "source": "tok_visa"},
        400,
        "amount",
    ),
    (
        "POST",
        "/v1/charges",
        {"amount[x]": "1", "currency": "usd", "source": "tok_visa"},
        400,
        "amount",
    ),
    (
        "POST",
        "/v1/charges",
        {"amount": "4999", "currency": "usd", "source": "tok_visa", "colour": "red"},
        400,
        "colour",
    ),
    (
        "POST",
        "/v1/charges",
        {"amount": "4999", "currency": "usd", "source": "tok_visa", "metadata": "x"},
        400,
        "metadata",
    ),
    (
        "POST",
        "/v1/charges",
        {"amount": "4999", "currency": "xyz", "source": "tok_visa"},
        400,
        "currency",
    ),
    (
        "POST",
        "/v1/charges",
        {"amount": "10", "currency": "usd", "source": "tok_visa"},
        400,
        "amount",
    ),
    (
        "POST",
        "/v1/charges",
        {"amount": "4999", "currency": "usd", "source": "tok_visa", "capture": "maybe"},
        400,
        "capture",
    ),
    (
        "POST",
        "/v1/charges",
        {"amount": "4999", "currency": "usd", "source[number]": "4242424242424242"},
        400,
        None,  # raw card numbers from a secret key: refused before they are read
    ),
    ("POST", "/v1/charges", b"\xff\xfe\x00", 400, None),
    ("POST", "/v1/charges", b"amount&&currency", 400, None),
    ("POST", "/v1/charges", b'{"amount": 4999}', 400, None),
    # The publishable key sends card numbers (as Stripe.js does) from here on: see key_for.
    ("POST", "/v1/tokens", {}, 400, "card"),
    ("POST", "/v1/tokens", {"card": "4242"}, 400, "card"),
    (
        "POST",
        "/v1/tokens",
        {"card[exp_month]": "12", "card[exp_year]": NEXT_YEAR},
        400,
        "card[number]",
    ),
    (
        "POST",
        "/v1/tokens",
        {"card[number]": "4242424242424242", "card[pin]": "1"},
        400,
        "card[pin]",
    ),
    ("GET", "/v1/charges?limit=1000", None, 400, "limit"),
    ("GET", "/v1/charges?limit=ten", None, 400, "limit"),
    ("GET", "/v1/charges?starting_after=ch_missing", None, 400, "starting_after"),
    ("GET", "/v1/charges?sort=asc", None, 400, "sort"),
    ("GET", "/v1/tokens/tok_missing", None, 404, "token"),
    ("POST", "/v1/refunds", {}, 400, None),
    ("POST", "/v1/refunds", {"charge": "ch_missing"}, 400, "charge"),
    ("GET", "/v1/widgets", None, 404, None),
    ("DELETE", "/v1/charges", None, 404, None),
    ("GET", "/v1/charges/a/b", None, 404, None),
    ("GET", "/nope", None, 404, None),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "param"), BAD_REQUESTS)
def test_bad_requests_get_stripe_shaped_4xx_never_500(
    sim: str, method: str, path: str, body: object, status: int, param: str | None
) -> None:
    kwargs = {"content": body} if isinstance(body, bytes) else {"data": body}
    # Card details come from the browser's publishable key, as Stripe.js sends them.
    key = {"Authorization": f"Bearer {SIM_PUBLISHABLE_KEY}"} if path == "/v1/tokens" else SECRET
    if isinstance(body, bytes):
        kwargs["headers"] = {**key, "Content-Type": "application/x-www-form-urlencoded"}
    else:
        kwargs["headers"] = key
    response = httpx.request(method, f"{sim}{path}", **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    if param is not None:
        assert error["param"] == param
    assert response.headers["Request-Id"].startswith("req_")


def test_no_request_so_far_got_a_500(sim: str) -> None:
    counted = stats(sim)["requests"]
    assert counted, "the shared simulator saw no requests"
    statuses = {status for by_status in counted.values() for status in by_status}
    assert not {status for status in statuses if status.startswith("5")}


def test_every_response_carries_a_unique_request_id(sim: str) -> None:
    responses = [
        httpx.get(f"{sim}/v1/charges", headers=SECRET),
        httpx.get(f"{sim}/v1/charges"),
        raw_charge(sim, "tok_chargeDeclined"),
        httpx.get(f"{sim}/nowhere"),
        httpx.get(f"{sim}/_sim/stats"),
        httpx.options(f"{sim}/v1/tokens"),
    ]
    ids = [r.headers["Request-Id"] for r in responses]
    assert all(rid.startswith("req_") for rid in ids) and len(set(ids)) == len(ids)


# --- refunds ----------------------------------------------------------------------------------


def test_refunds_full_partial_and_refused(client: stripe.StripeClient) -> None:
    charge = client.v1.charges.create(params=charge_params("tok_visa", "refund", 5000))
    partial = client.v1.refunds.create(params={"charge": charge.id, "amount": 2000})
    assert (partial.object, partial.amount, partial.status) == ("refund", 2000, "succeeded")
    assert partial.charge == charge.id and partial.id.startswith("re_")
    after = client.v1.charges.retrieve(charge.id)
    assert after.amount_refunded == 2000 and after.refunded is False
    with pytest.raises(stripe.InvalidRequestError) as too_much:
        client.v1.refunds.create(params={"charge": charge.id, "amount": 4000})
    assert too_much.value.param == "amount"
    rest = client.v1.refunds.create(params={"charge": charge.id, "reason": "requested_by_customer"})
    assert rest.amount == 3000
    done = client.v1.charges.retrieve(charge.id, params={"expand": ["refunds"]})
    assert done.refunded is True and done.amount_refunded == 5000
    assert [r.id for r in done.refunds.data] == [partial.id, rest.id]
    with pytest.raises(stripe.InvalidRequestError) as again:
        client.v1.refunds.create(params={"charge": charge.id})
    assert again.value.code == "charge_already_refunded"
    with pytest.raises(stripe.CardError) as declined:
        client.v1.charges.create(params=charge_params("tok_chargeDeclined"))
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.refunds.create(params={"charge": declined.value.error.charge})


# --- rehearsal controls --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"latency": "banana"},
        {"rate_limit": "fast"},
        {"error_rate": 2},
        {"error_rate": "half"},
        {"drop_rate": -0.1},
        {"concurrency_limit": -1},
        {"concurrency_limit": 1.5},
        {"idempotency_ttl_s": 0},
        {"flux_capacitor": True},
    ],
)
def test_sim_config_refuses_bad_values_with_400(sim: str, change: dict) -> None:
    before = httpx.get(f"{sim}/_sim/config").json()
    response = httpx.post(f"{sim}/_sim/config", json=change)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert httpx.get(f"{sim}/_sim/config").json() == before


def test_sim_config_refuses_a_body_that_is_not_a_json_object(sim: str) -> None:
    for body in (b"not json", b"[1, 2]"):
        response = httpx.post(f"{sim}/_sim/config", content=body)
        assert response.status_code == 400 and "JSON object" in response.json()["error"]["message"]


def test_sim_config_changes_controls_at_runtime(sim_factory: Callable[..., str]) -> None:
    url = sim_factory()
    changed = httpx.post(
        f"{url}/_sim/config", json={"latency": "lognormal:p50=10ms,p99=50ms", "error_rate": 0.5}
    ).json()
    assert changed["latency"] == "lognormal:p50=10ms,p99=50ms" and changed["error_rate"] == 0.5
    statuses = {raw_charge(url, "tok_visa").status_code for _ in range(40)}
    assert statuses == {200, 500}
    httpx.post(f"{url}/_sim/config", json={"error_rate": 0, "rate_limit": "test"})
    assert httpx.get(f"{url}/_sim/config").json()["rate_limit"] == "test"


def test_sim_stats_count_by_endpoint_status_and_outcome(stripe_sim: str) -> None:
    client = client_for(stripe_sim)
    client.v1.charges.create(params=charge_params("tok_visa"))
    client.v1.charges.create(params=charge_params("tok_amex"))
    for alias in ("tok_chargeDeclinedInsufficientFunds", "tok_chargeDeclinedStolenCard"):
        with pytest.raises(stripe.CardError):
            client.v1.charges.create(params=charge_params(alias))
    client_for(stripe_sim, SIM_PUBLISHABLE_KEY).v1.tokens.create(
        params={"card": card("4242424242424242")}
    )
    httpx.get(f"{stripe_sim}/v1/charges/ch_missing", headers=SECRET)
    counted = stats(stripe_sim)
    assert counted["requests"]["POST /v1/charges"] == {"200": 2, "402": 2}
    assert counted["requests"]["POST /v1/tokens"] == {"200": 1}
    assert counted["requests"]["GET /v1/charges/:id"] == {"404": 1}
    assert counted["charges"]["by_outcome"] == {
        "succeeded": 2,
        "insufficient_funds": 1,
        "stolen_card": 1,
    }
    assert counted["ledger"] == {
        "charges": 4,
        "tokens": 1,
        "refunds": 0,
        "payment_methods": 0,
        "payment_intents": 0,
        "idempotency_keys": 5,
    }
    assert counted["rate_limited"]["total"] == 0


# --- Stripe.js for the checkout page -----------------------------------------------------------


def test_stripe_js_is_served_and_tokens_answer_cors_preflights(sim: str) -> None:
    script = httpx.get(f"{sim}/v3/stripe.js")
    assert script.status_code == 200 and "javascript" in script.headers["Content-Type"]
    assert "createToken" in script.text and "/v1/tokens" in script.text
    preflight = httpx.options(
        f"{sim}/v1/tokens",
        headers={
            "Origin": "http://127.0.0.1:5000",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    token = httpx.post(
        f"{sim}/v1/tokens",
        data={**form_card("4242424242424242"), "key": SIM_PUBLISHABLE_KEY},
        headers={"Origin": "http://127.0.0.1:5000"},
    )
    assert token.headers["Access-Control-Allow-Origin"] == "*"

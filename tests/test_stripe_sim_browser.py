"""The simulator's Stripe.js look-alike in a real headless Chromium, called from another origin."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from chromium import chromium
from conftest import start_sim

from flashsale.settings import SIM_PUBLISHABLE_KEY, SIM_SECRET_KEY

pytestmark = pytest.mark.browser
SCREENSHOTS = Path(__file__).resolve().parent.parent / "artifacts" / "screenshots"

PAGE = """<!doctype html><html><body>
<form id="pay"><div id="card"></div></form>
<script src="{sim}/v3/stripe.js"></script>
<script>
  const stripe = Stripe("{key}");
  const card = stripe.elements().create("card");
  card.mount("#card");
  window.changes = [];
  card.on("change", (event) => window.changes.push(event.complete));
</script>
</body></html>"""


@pytest.fixture(scope="module")
def checkout_page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """The simulator plus a checkout page on another loopback port: a cross-origin page, as the
    real one served by `flashsale serve` is (Chrome refuses loopback calls from public pages)."""
    child, sim = start_sim(tmp_path_factory.mktemp("browser-sim"))
    html = PAGE.format(sim=sim, key=SIM_PUBLISHABLE_KEY).encode()

    class Checkout(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(html)))
            self.end_headers()
            self.wfile.write(html)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Checkout)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", sim
    finally:
        server.shutdown()
        child.stop()


@pytest.fixture(scope="module")
def browser_page(checkout_page: tuple[str, str]) -> Iterator[tuple[object, str]]:
    checkout, sim = checkout_page
    with chromium() as browser:
        page = browser.new_page()
        page.goto(checkout)
        yield page, sim


def fill(page: object, number: str, expiry: str, cvc: str) -> None:
    page.fill("input[name=cardnumber]", number)  # type: ignore[attr-defined]
    page.fill("input[name=exp-date]", expiry)  # type: ignore[attr-defined]
    page.fill("input[name=cvc]", cvc)  # type: ignore[attr-defined]


def test_create_token_from_the_card_element_and_charge_it(browser_page: tuple) -> None:
    page, sim = browser_page
    year = str(time.gmtime().tm_year + 2)[2:]
    fill(page, "4242 4242 4242 4242", f"12 / {year}", "123")
    assert page.evaluate("window.changes[window.changes.length - 1]") is True
    result = page.evaluate("stripe.createToken(card)")
    token = result["token"]
    assert token["id"].startswith("tok_") and token["card"]["last4"] == "4242"
    assert token["card"]["exp_year"] == 2000 + int(year)
    charge = httpx.post(
        f"{sim}/v1/charges",
        data={"amount": "4999", "currency": "usd", "source": token["id"]},
        auth=(SIM_SECRET_KEY, ""),
    )
    assert charge.status_code == 200 and charge.json()["status"] == "succeeded"


def test_create_token_resolves_to_stripes_error_for_a_bad_number(browser_page: tuple) -> None:
    page, _ = browser_page
    fill(page, "4242 4242 4242 4241", "12 / 40", "123")
    result = page.evaluate("stripe.createToken(card)")
    assert "token" not in result
    assert result["error"]["type"] == "card_error"
    assert result["error"]["code"] == "incorrect_number"
    assert result["error"]["message"] == "Your card number is incorrect."


def new_intent(sim: str) -> dict:
    created = httpx.post(
        f"{sim}/v1/payment_intents",
        data={"amount": "4999", "currency": "usd"},
        auth=(SIM_SECRET_KEY, ""),
    )
    assert created.status_code == 200
    return created.json()


def start_confirming(page: object, secret: str) -> None:
    """Run confirmCardPayment with the card element; its result lands in window.result."""
    page.evaluate(  # type: ignore[attr-defined]
        """(secret) => {
          window.result = null;
          stripe.confirmCardPayment(secret, {payment_method: {card: card}})
            .then((r) => { window.result = r; });
        }""",
        secret,
    )


def settled(page: object) -> dict:
    page.wait_for_function("window.result !== null", timeout=15_000)  # type: ignore[attr-defined]
    return page.evaluate("window.result")  # type: ignore[attr-defined]


def test_confirm_card_payment_pays_a_plain_card(browser_page: tuple) -> None:
    page, sim = browser_page
    intent = new_intent(sim)
    fill(page, "4242 4242 4242 4242", "12 / 40", "123")
    start_confirming(page, intent["client_secret"])
    result = settled(page)
    assert "paymentIntent" in result, result
    assert result["paymentIntent"]["id"] == intent["id"]
    assert result["paymentIntent"]["status"] == "succeeded"
    assert page.locator("#stripe-sim-3ds").count() == 0  # no challenge for this card


@pytest.mark.parametrize(
    ("number", "button", "expected"),
    [
        ("4000 0027 6000 3184", "#complete", "succeeded"),
        ("4000 0027 6000 3184", "#fail", "payment_intent_authentication_failure"),
        ("4000 0082 6000 3178", "#complete", "insufficient_funds"),
    ],
)
def test_a_3ds_card_opens_the_challenge_and_settles_on_the_answer(
    browser_page: tuple, number: str, button: str, expected: str
) -> None:
    page, sim = browser_page
    intent = new_intent(sim)
    fill(page, number, "12 / 40", "123")
    start_confirming(page, intent["client_secret"])
    frame = page.frame_locator("#stripe-sim-3ds-frame")
    frame.locator(button).wait_for()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "stripe-sim-3ds-challenge.png"))
    frame.locator(button).click()
    result = settled(page)
    assert page.locator("#stripe-sim-3ds").count() == 0  # the modal is gone
    if expected == "succeeded":
        assert result["paymentIntent"]["status"] == "succeeded"
        return
    error = result["error"]
    assert expected in (error.get("code"), error.get("decline_code"))
    assert error["payment_intent"]["id"] == intent["id"]
    assert error["payment_intent"]["status"] == "requires_payment_method"

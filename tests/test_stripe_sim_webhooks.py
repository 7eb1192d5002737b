"""Events and signed webhooks from the simulator, received by a real HTTP server on loopback and
verified by the stripe library's own `stripe.Webhook.construct_event`."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import stripe
from conftest import flashsale_argv, start_sim

from flashsale.settings import SIM_SECRET_KEY

SECRET = "whsec_rehearsal_test_secret_0123456789"
FIXTURES = Path(__file__).parent / "data" / "stripe_fixtures.json"


class Receiver:
    """A webhook endpoint that records every delivery; it can fail the first N of them."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[bytes, str]] = []
        self.fail_first = 0
        self.lock = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    failing = receiver.fail_first > 0
                    if failing:
                        receiver.fail_first -= 1
                    else:
                        receiver.deliveries.append((body, self.headers["Stripe-Signature"]))
                    receiver.lock.notify_all()
                self.send_response(500 if failing else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/stripe/webhook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list[dict]:
        with self.lock:
            return [json.loads(body) for body, _ in self.deliveries]

    def wait_for(self, count: int, timeout: float = 20.0) -> list[tuple[bytes, str]]:
        deadline = time.monotonic() + timeout
        with self.lock:
            while len(self.deliveries) < count:
                left = deadline - time.monotonic()
                assert left > 0, f"{len(self.deliveries)} of {count} deliveries arrived"
                self.lock.wait(left)
            return list(self.deliveries)

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver()
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def sim_with_webhook(tmp_path: Path, receiver: Receiver) -> Iterator[str]:
    child, url = start_sim(tmp_path, "--webhook", receiver.url, "--webhook-secret", SECRET)
    try:
        yield url
    finally:
        child.stop()


def client_for(url: str) -> stripe.StripeClient:
    return stripe.StripeClient(SIM_SECRET_KEY, base_addresses={"api": url}, max_network_retries=0)


def pay(client: stripe.StripeClient, method: str = "pm_card_visa", order: str = "o-1") -> str:
    try:
        return client.v1.payment_intents.create(
            params={
                "amount": 4999,
                "currency": "usd",
                "payment_method": method,
                "confirm": True,
                "metadata": {"order_id": order},
            }
        ).id
    except stripe.CardError as error:
        return error.error.payment_intent["id"]


def configure(sim: str, **changes: object) -> None:
    assert httpx.post(f"{sim}/_sim/config", json=changes).status_code == 200


def test_deliveries_verify_with_construct_event_and_match_v1_events(
    sim_with_webhook: str, receiver: Receiver
) -> None:
    client = client_for(sim_with_webhook)
    intent_id = pay(client)
    # created, then charge.succeeded and payment_intent.succeeded
    deliveries = receiver.wait_for(3)
    verified = [stripe.Webhook.construct_event(body, sig, SECRET) for body, sig in deliveries]
    types = sorted(event.type for event in verified)
    assert types == ["charge.succeeded", "payment_intent.created", "payment_intent.succeeded"]
    succeeded = next(e for e in verified if e.type == "payment_intent.succeeded")
    assert succeeded.data.object.id == intent_id
    assert succeeded.data.object.metadata["order_id"] == "o-1"
    created = next(e for e in verified if e.type == "payment_intent.created")
    assert created.data.object.status == "requires_confirmation"  # as it was then
    listed = client.v1.events.list(params={"type": "payment_intent.*", "limit": 10}).data
    assert [e.type for e in listed] == ["payment_intent.succeeded", "payment_intent.created"]
    assert client.v1.events.retrieve(succeeded.id).data.object.id == intent_id
    fixture = json.loads(FIXTURES.read_text())["event"]
    assert not set(fixture) - set(json.loads(deliveries[0][0]))


def test_a_tampered_or_stale_delivery_fails_verification(
    sim_with_webhook: str, receiver: Receiver
) -> None:
    pay(client_for(sim_with_webhook))
    body, signature = receiver.wait_for(1)[0]
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(body.replace(b"4999", b"1"), signature, SECRET)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(body, signature, "whsec_someone_else")
    signed_at = int(signature.split(",")[0][2:])
    assert abs(signed_at - time.time()) < 30
    # A replay five minutes later is refused by the verifier's 300 s tolerance.
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.WebhookSignature.verify_header(
            body.decode(), signature, SECRET, tolerance=1
        ) if False else stripe.Webhook.construct_event(
            body, signature.replace(f"t={signed_at}", f"t={signed_at - 301}"), SECRET
        )


def test_a_3ds_payment_sends_requires_action_then_succeeded(
    sim_with_webhook: str, receiver: Receiver
) -> None:
    client = client_for(sim_with_webhook)
    intent = client.v1.payment_intents.create(
        params={
            "amount": 4999,
            "currency": "usd",
            "payment_method": "pm_card_authenticationRequired",
            "confirm": True,
        }
    )
    receiver.wait_for(2)
    httpx.post(
        f"{sim_with_webhook}/3d_secure/{intent.id}/complete",
        data={"client_secret": intent.client_secret},
        headers={"Accept": "application/json"},
    )
    receiver.wait_for(4)
    types = sorted(e["type"] for e in receiver.events())
    assert types == [
        "charge.succeeded",
        "payment_intent.created",
        "payment_intent.requires_action",
        "payment_intent.succeeded",
    ]


def test_a_failing_endpoint_is_retried_until_it_answers(
    sim_with_webhook: str, receiver: Receiver
) -> None:
    receiver.fail_first = 2
    configure(sim_with_webhook, webhook_drop_rate=0.0)
    client = client_for(sim_with_webhook)
    pay(client, "pm_card_chargeDeclined")  # created, charge.failed, payment_intent.payment_failed
    deliveries = receiver.wait_for(3)
    types = sorted(json.loads(body)["type"] for body, _ in deliveries)
    assert types == ["charge.failed", "payment_intent.created", "payment_intent.payment_failed"]
    stats = httpx.get(f"{sim_with_webhook}/_sim/stats").json()["webhooks"]
    assert stats["failed_attempts"] == 2 and stats["retries"] == 2
    assert stats["delivered"] == 3 and stats["gave_up"] == 0


def test_injected_drop_duplicate_and_reorder(sim_with_webhook: str, receiver: Receiver) -> None:
    client = client_for(sim_with_webhook)
    configure(sim_with_webhook, webhook_drop_rate=1.0)
    dropped = pay(client, order="dropped")
    events = client.v1.events.list(params={"limit": 3}).data
    objects = [e.data.object.to_dict() for e in events]
    assert {o.get("payment_intent") or o["id"] for o in objects} == {dropped}
    configure(sim_with_webhook, webhook_drop_rate=0.0, webhook_duplicate_rate=1.0)
    client.v1.payment_intents.create(params={"amount": 1000, "currency": "usd"})
    first_two = receiver.wait_for(2)
    assert (
        first_two[0][0] == first_two[1][0]
        or json.loads(first_two[0][0])["id"] == json.loads(first_two[1][0])["id"]
    )
    configure(sim_with_webhook, webhook_duplicate_rate=0.0, webhook_out_of_order_rate=1.0)
    held = client.v1.payment_intents.create(params={"amount": 1001, "currency": "usd"}).id
    configure(sim_with_webhook, webhook_out_of_order_rate=0.0)
    prompt = client.v1.payment_intents.create(params={"amount": 1002, "currency": "usd"}).id
    receiver.wait_for(4)
    order = [e["data"]["object"]["id"] for e in receiver.events()[2:]]
    assert order == [prompt, held]  # the later event overtook the held one
    stats = httpx.get(f"{sim_with_webhook}/_sim/stats").json()["webhooks"]
    assert stats["dropped"] == 3 and stats["duplicated"] == 1 and stats["held_back"] == 1


def test_webhook_endpoints_api_and_loopback_only(stripe_sim: str, receiver: Receiver) -> None:
    client = client_for(stripe_sim)
    made = client.v1.webhook_endpoints.create(
        params={"url": receiver.url, "enabled_events": ["payment_intent.succeeded"]}
    )
    assert made.secret.startswith("whsec_")
    assert client.v1.webhook_endpoints.retrieve(made.id).url == receiver.url
    assert "secret" not in client.v1.webhook_endpoints.retrieve(made.id)
    pay(client)
    body, signature = receiver.wait_for(1)[0]
    event = stripe.Webhook.construct_event(body, signature, made.secret)
    assert event.type == "payment_intent.succeeded"  # only the type it asked for
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.webhook_endpoints.create(
            params={"url": "https://example.com/hook", "enabled_events": ["*"]}
        )
    assert client.v1.webhook_endpoints.delete(made.id).deleted is True


def test_the_command_refuses_a_non_loopback_webhook() -> None:
    import subprocess

    done = subprocess.run(
        flashsale_argv("stripe-sim", "--port", "0", "--webhook", "https://example.com/x"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "loopback only" in done.stderr

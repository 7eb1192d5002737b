"""The checkout page in Debian's headless Chromium (Playwright) on the real sim, server, worker."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from chromium import chromium
from pipeline_fixtures import Pipeline, fresh_database

from flashsale.core import keys
from flashsale.ops.processes import Child, flashsale_argv

pytestmark = pytest.mark.browser

SCREENSHOTS = Path(__file__).resolve().parent.parent / "artifacts" / "screenshots"
STOCK = 50
SOCKET_IO = re.compile(r"/socket\.io/")
RESULT_TIMEOUT_MS = 20_000
SUCCESS_CARD = "4242424242424242"
INSUFFICIENT_FUNDS_CARD = "4000000000009995"
THREE_D_SECURE_CARD = "4000000000003220"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


@pytest.fixture(scope="module")
def pipeline(browser: Any, pipeline_factory: Any) -> Pipeline:
    return pipeline_factory(server_flags=("--stock", str(STOCK), "--sku", "BROWSER-1"))


class PageProblems:
    """Console errors and uncaught exceptions of the pages a test opened (CSP refusals included)."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def watch(self, page: Any, tolerate: str | None = None) -> Any:
        def console(message: Any) -> None:
            if message.type == "error" and not (tolerate and re.search(tolerate, message.text)):
                self.errors.append(message.text)

        page.on("console", console)
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
        return page


@pytest.fixture
def open_page(browser: Any) -> Iterator[Any]:
    """open_page(url) -> a new tab (own context and sessionStorage); asserts a clean console."""
    contexts: list[Any] = []
    problems = PageProblems()

    def open_(
        url: str,
        viewport: dict[str, int] | None = None,
        sockets: Callable[[Any], None] | None = None,
        tolerate: str | None = None,
    ) -> Any:
        """sockets, when given, handles the page's Socket.IO websockets (Playwright route);
        tolerate is a regex of console errors the test expects."""
        context = browser.new_context(viewport=viewport or {"width": 1100, "height": 760})
        contexts.append(context)
        page = problems.watch(context.new_page(), tolerate)
        if sockets is not None:
            page.route_web_socket(SOCKET_IO, sockets)
        page.goto(url)
        return page

    yield open_
    for context in contexts:
        context.close()
    assert problems.errors == []


def shot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def fill_card(page: Any, number: str) -> None:
    # By accessible name: the inputs must be labelled for this to find them.
    page.get_by_label("Card number").fill(number)
    page.get_by_label("Expiration date (MM / YY)").fill("12 / 34")
    page.get_by_label("Security code (CVC)").fill("123")


def wait_state(page: Any, state: str, timeout_ms: int = RESULT_TIMEOUT_MS) -> None:
    from playwright.sync_api import expect

    expect(page.locator("#status")).to_have_attribute("data-state", state, timeout=timeout_ms)


def stored(page: Any) -> dict[str, Any]:
    """The tab's sessionStorage record: customer id, room token, order in progress."""
    return dict(page.evaluate("JSON.parse(sessionStorage.getItem('flashsale.checkout.v1'))"))


def wait_stored_order(page: Any) -> dict[str, Any]:
    """The tab's record once /charges has answered with an order id."""
    # The page's CSP forbids eval, so wait_for_function cannot run: poll from here instead.
    deadline = time.monotonic() + RESULT_TIMEOUT_MS / 1000
    while (record := stored(page))["order_id"] is None:
        assert time.monotonic() < deadline, "no order id stored"
        page.wait_for_timeout(50)
    return record


def orders_of(pipeline: Pipeline, customer_id: str) -> list[str]:
    client = pipeline.redis()
    try:
        return list(client.lrange(f"flashsale:customer:{customer_id}:orders", 0, -1))
    finally:
        client.close()


def test_pay_with_a_success_card_shows_paid_with_the_charge_id(
    pipeline: Pipeline, open_page: Any
) -> None:
    page = open_page(pipeline.server_url + "/")
    assert page.locator("#stock-count").inner_text().isdigit()
    assert page.get_by_role("button", name="Pay $49.99").is_enabled()
    page.get_by_label("Quantity").select_option("2")
    assert page.get_by_role("button").inner_text().strip() == "Pay $99.98"
    fill_card(page, SUCCESS_CARD)
    page.get_by_role("button", name="Pay $99.98").click()
    wait_state(page, "paid")
    charge_id = page.locator("#charge-id").inner_text()
    assert charge_id.startswith("ch_") and "Paid" in page.locator("#status").inner_text()
    assert page.locator("#pay").is_disabled()
    shot(page, "paid")
    (order_id,) = orders_of(pipeline, stored(page)["customer_id"])
    (charge,) = pipeline.sim_charges(order_id)
    assert (charge["id"], charge["amount"]) == (charge_id, 2 * 4999)


def test_keyboard_only_decline_shows_stripes_message_and_allows_another_card(
    pipeline: Pipeline, open_page: Any
) -> None:
    page = open_page(pipeline.server_url + "/")
    page.get_by_label("Quantity").focus()
    page.keyboard.press("Tab")
    page.keyboard.type(INSUFFICIENT_FUNDS_CARD)
    page.keyboard.press("Tab")
    page.keyboard.type("12 / 34")
    page.keyboard.press("Tab")
    page.keyboard.type("123")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "pay"
    page.keyboard.press("Enter")
    wait_state(page, "declined")
    status = page.locator("#status").inner_text()
    assert "Card declined" in status and "Your card has insufficient funds." in status
    # Focus moved to the message; the form is usable again for another card.
    assert page.evaluate("document.activeElement.id") == "status"
    assert page.locator("#pay").is_enabled()
    shot(page, "declined")
    page.get_by_label("Card number").fill(SUCCESS_CARD)
    page.locator("#pay").click()
    wait_state(page, "paid")
    assert len(orders_of(pipeline, stored(page)["customer_id"])) == 2


@pytest.fixture(scope="module")
def intents_pipeline(browser: Any, pipeline_factory: Any, redis_server: str) -> Pipeline:
    """A server telling the page to make PaymentMethods (serve --payments intents), on a
    database of its own (the module pipeline's worker must not take its orders)."""
    return pipeline_factory(
        server_flags=("--stock", str(STOCK), "--sku", "BROWSER-PI", "--payments", "intents"),
        redis_url=fresh_database(redis_server),
        webhook=True,  # after 3D Secure, Stripe's event finishes the order
    )


def test_on_payment_intents_the_page_pays_and_shows_a_decline(
    intents_pipeline: Pipeline, open_page: Any
) -> None:
    page = open_page(intents_pipeline.server_url + "/")
    fill_card(page, INSUFFICIENT_FUNDS_CARD)
    page.locator("#pay").click()
    wait_state(page, "declined")
    assert "Your card has insufficient funds." in page.locator("#status").inner_text()
    page.get_by_label("Card number").fill(SUCCESS_CARD)
    page.locator("#pay").click()
    wait_state(page, "paid")
    shot(page, "paid-payment-intent")
    declined, paid = orders_of(intents_pipeline, stored(page)["customer_id"])
    (charge,) = intents_pipeline.sim_charges(paid)
    assert charge["id"] == page.locator("#charge-id").inner_text()
    # Paid through a PaymentIntent, from a PaymentMethod the page made with Stripe.js.
    assert charge["payment_intent"].startswith("pi_") and charge["payment_method"].startswith("pm_")
    (failed,) = intents_pipeline.sim_charges(declined)
    assert failed["payment_intent"].startswith("pi_") and failed["status"] == "failed"


@pytest.mark.parametrize(
    ("button", "state", "shown"),
    [
        ("#complete", "paid", "Paid"),
        ("#fail", "declined", "Your bank could not confirm this payment."),
    ],
)
def test_a_3ds_card_goes_through_the_challenge_on_payment_intents(
    intents_pipeline: Pipeline, open_page: Any, button: str, state: str, shown: str
) -> None:
    page = open_page(intents_pipeline.server_url + "/")
    fill_card(page, THREE_D_SECURE_CARD)
    page.locator("#pay").click()
    frame = page.frame_locator("#stripe-sim-3ds-frame")
    frame.locator(button).wait_for(timeout=RESULT_TIMEOUT_MS)
    shot(page, "3ds-challenge-on-checkout")
    frame.locator(button).click()
    wait_state(page, state)
    assert shown in page.locator("#status").inner_text()
    shot(page, f"3ds-{state}")


def test_reload_while_pending_rejoins_and_shows_the_result_charging_once(
    pipeline: Pipeline, open_page: Any
) -> None:
    page = open_page(pipeline.server_url + "/")
    fill_card(page, SUCCESS_CARD)
    pipeline.sim_config(latency="2s")  # slow Stripe: tokenizing and charging take 2 s each
    try:
        page.locator("#pay").click()
        wait_state(page, "pending")
        assert page.locator("#pay").is_disabled()
        assert page.locator("#pay").get_attribute("aria-busy") == "true"
        wait_stored_order(page)
        shot(page, "pending")
        before = stored(page)
        page.reload()
        # Same tab, same customer and room; the order is still pending at Stripe.
        assert stored(page)["customer_id"] == before["customer_id"]
        wait_state(page, "pending", timeout_ms=2000)
        wait_state(page, "paid")
    finally:
        pipeline.sim_config(latency="0")
    order_ids = orders_of(pipeline, before["customer_id"])
    assert order_ids == [before["order_id"]]
    assert len(pipeline.sim_charges(before["order_id"])) == 1
    # Another reload shows the stored result straight away, and the replay agrees.
    page.reload()
    wait_state(page, "paid", timeout_ms=5000)
    assert page.locator("#charge-id").inner_text().startswith("ch_")
    assert orders_of(pipeline, before["customer_id"]) == order_ids


def test_double_click_and_double_submit_pay_once(pipeline: Pipeline, open_page: Any) -> None:
    page = open_page(pipeline.server_url + "/")
    fill_card(page, SUCCESS_CARD)
    page.locator("#pay").dblclick()
    wait_state(page, "paid")
    (order_id,) = orders_of(pipeline, stored(page)["customer_id"])
    assert len(pipeline.sim_charges(order_id)) == 1

    # Bypassing the disabled button: two submits in one tick; the in-flight guard stops the second.
    other = open_page(pipeline.server_url + "/")
    fill_card(other, SUCCESS_CARD)
    other.evaluate(
        "() => { const f = document.getElementById('checkout-form');"
        " f.requestSubmit(); f.requestSubmit(); f.requestSubmit(); }"
    )
    wait_state(other, "paid")
    (other_order,) = orders_of(pipeline, stored(other)["customer_id"])
    assert len(pipeline.sim_charges(other_order)) == 1


def test_sold_out_live_in_an_open_page_and_on_a_fresh_one(
    pipeline: Pipeline, open_page: Any
) -> None:
    # A second sale of one unit on the same Redis and worker.
    server = pipeline.add_server("--stock", "1", "--sku", "BROWSER-LAST-ONE")
    watcher = open_page(server + "/")
    buyer = open_page(server + "/")
    assert watcher.locator("#stock-count").inner_text() == "1"
    fill_card(buyer, SUCCESS_CARD)
    buyer.locator("#pay").click()
    wait_state(buyer, "paid")
    # The page that only watched sees the stock run out, live, and cannot pay any more.
    wait_state(watcher, "sold-out", timeout_ms=5000)
    assert watcher.locator("#stock").inner_text().strip() == "Sold out"
    assert watcher.locator("#pay").is_disabled()
    assert watcher.locator("#pay").inner_text().strip() == "Sold out"
    shot(watcher, "sold-out-live")
    fresh = open_page(server + "/", viewport={"width": 390, "height": 760})
    wait_state(fresh, "sold-out", timeout_ms=2000)
    assert fresh.locator("#pay").is_disabled()
    shot(fresh, "sold-out-mobile")


def test_stock_count_updates_live_in_a_second_page(pipeline: Pipeline, open_page: Any) -> None:
    from playwright.sync_api import expect

    watcher = open_page(pipeline.server_url + "/")
    buyer = open_page(pipeline.server_url + "/")
    before = int(watcher.locator("#stock-count").inner_text())
    fill_card(buyer, SUCCESS_CARD)
    buyer.get_by_label("Quantity").select_option("3")
    buyer.locator("#pay").click()
    wait_state(buyer, "paid")
    expect(watcher.locator("#stock-count")).to_have_text(str(before - 3), timeout=5000)


def test_a_cross_origin_post_is_refused(pipeline: Pipeline, browser: Any) -> None:
    """Another site (here: the simulator's origin) cannot spend a customer's session."""
    session = pipeline.session()
    token = pipeline.tokenize()
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(pipeline.sim_url + "/v3/stripe.js")
        # A form-encoded POST is a "simple" request: the browser sends it without a preflight.
        page.evaluate(
            """([url, body]) => fetch(url, {method: 'POST', mode: 'no-cors',
                 body: new URLSearchParams(body)})""",
            [
                pipeline.server_url + "/charges",
                {
                    "customer_id": session["customer_id"],
                    "room_token": session["room_token"],
                    "token": token,
                },
            ],
        )
    finally:
        context.close()
    assert orders_of(pipeline, session["customer_id"]) == []
    metrics = pipeline.http.get(pipeline.server_url + "/metrics").text
    assert 'route="/charges",status="403"} 1.0' in metrics
    # The same body without a browser's Origin (loadgen, curl) is accepted.
    accepted = pipeline.charge(session, token)
    assert accepted.status_code == 202


def test_server_crash_while_pending_rejoins_and_shows_the_result(
    pipeline: Pipeline, open_page: Any
) -> None:
    """The socket drops and the result is emitted while no server listens (so it is lost); the
    page reconnects to the restarted server and the replay on join shows it."""
    from playwright.sync_api import expect

    def serve(port: int) -> tuple[Child, str]:
        child = Child(
            f"server-{port}",
            flashsale_argv("serve", "--port", str(port), "--sku", "BROWSER-CRASH"),
            pipeline.log_dir / f"server-crash-{port or 'first'}.log",
            env=pipeline.env,
        ).start()
        pipeline.children.append(child)
        return child, child.wait_listening(timeout_s=30)

    server, url = serve(0)
    # Reconnect attempts while the server is down fail loudly in the console, as they should.
    page = open_page(url + "/", tolerate=r"WebSocket connection to .* failed")
    fill_card(page, SUCCESS_CARD)
    pipeline.sim_config(latency="2s")
    try:
        page.locator("#pay").click()
        wait_state(page, "pending")
        record = wait_stored_order(page)
        server.signal(signal.SIGKILL)
        server.stop()
        expect(page.locator("#connection")).to_be_visible(timeout=5000)
        # Another server on the same Redis answers for the order meanwhile.
        final = pipeline.wait_final(record, record["order_id"])
        assert final["status"] == "succeeded"
        assert page.locator("#status").get_attribute("data-state") == "pending"
    finally:
        pipeline.sim_config(latency="0")
    serve(int(url.rsplit(":", 1)[1]))
    wait_state(page, "paid")
    assert page.locator("#charge-id").inner_text() == final["charge_id"]
    expect(page.locator("#connection")).to_be_hidden()
    assert len(pipeline.sim_charges(record["order_id"])) == 1


def test_paying_after_the_last_unit_went_shows_sold_out(pipeline: Pipeline, open_page: Any) -> None:
    server = pipeline.add_server("--stock", "1", "--sku", "BROWSER-RACE")
    # No live updates reach this page (its websocket is answered by nobody), so it still offers
    # the unit that another customer buys meanwhile: the server's 409 must be shown.
    page = open_page(
        server + "/", sockets=lambda page_side: None, tolerate=r"status of 409 \(CONFLICT\)"
    )
    assert page.locator("#stock-count").inner_text() == "1"
    other = pipeline.session(server)
    assert pipeline.charge(other, pipeline.tokenize(), server_url=server).status_code == 202
    fill_card(page, SUCCESS_CARD)
    page.locator("#pay").click()
    wait_state(page, "sold-out")
    assert "You were not charged" in page.locator("#status").inner_text()
    assert page.locator("#pay").inner_text().strip() == "Sold out"
    assert orders_of(pipeline, stored(page)["customer_id"]) == []


def test_a_result_emit_lost_by_the_servers_listener_is_fetched_and_shown(
    pipeline: Pipeline, open_page: Any
) -> None:
    """The page's socket stays up but the server's Redis pub/sub listener is cut (again and
    again) while the charge is in flight, so the result's emit is lost: the page must ask
    GET /orders/<id> after 5 s without a result and show it."""
    page = open_page(pipeline.server_url + "/")
    fill_card(page, SUCCESS_CARD)
    metrics_before = orders_lookups(pipeline)
    admin = pipeline.redis()
    pipeline.sim_config(latency="2s")  # tokenizing and charging take 2 s each
    try:
        page.locator("#pay").click()
        record = wait_stored_order(page)
        # Cut the listener until the result is stored and emitted, then a little longer. After
        # each cut python-socketio waits 1 s before it subscribes again; cut every 2 ms, the
        # emit finds it listening with odds of well under 1%.
        cuts = 0
        deadline = time.monotonic() + 15
        stored_at: float | None = None
        while time.monotonic() < deadline:
            cuts += cut_server_listeners(admin)
            if stored_at is None and order_status(admin, record["order_id"]) != "pending":
                stored_at = time.monotonic()
            if stored_at is not None and time.monotonic() - stored_at > 0.5:
                break
            time.sleep(0.002)
        assert stored_at is not None, "the order never became final"
        assert cuts >= 1
        # Nothing was pushed: the page is still waiting (its socket never dropped).
        assert page.locator("#status").get_attribute("data-state") == "pending"
        assert page.locator("#connection").is_hidden()
    finally:
        pipeline.sim_config(latency="0")
        admin.close()
    wait_state(page, "paid", timeout_ms=10_000)
    final = pipeline.wait_final(record, record["order_id"])
    assert page.locator("#charge-id").inner_text() == final["charge_id"]
    assert orders_lookups(pipeline) >= metrics_before + 1  # the page asked GET /orders/<id>
    assert len(pipeline.sim_charges(record["order_id"])) == 1


def cut_server_listeners(admin: Any) -> int:
    """CLIENT KILL the servers' pub/sub listeners (SUBSCRIBE, no patterns): the Celery
    worker's own pub/sub connection (PSUBSCRIBE, remote control) is left alone."""
    cut = 0
    for client in admin.client_list(_type="pubsub"):
        if int(client.get("sub", 0)) >= 1 and int(client.get("psub", 0)) == 0:
            cut += int(admin.client_kill_filter(_id=client["id"]))
    return cut


def order_status(admin: Any, order_id: str) -> str | None:
    return admin.hget(f"flashsale:order:{order_id}", "status")  # type: ignore[no-any-return]


def orders_lookups(pipeline: Pipeline) -> float:
    """GET /orders/<id> answered 200 by the server, from its Prometheus metrics."""
    metrics = pipeline.http.get(pipeline.server_url + "/metrics").text
    found = re.search(
        r'flashsale_http_requests_total\{method="GET",route="/orders/<order_id>",status="200"\} '
        r"([0-9.]+)",
        metrics,
    )
    return float(found.group(1)) if found else 0.0


REPORT_SCENARIO = """
name = "report"
[sale]
stock = 30
[pipeline]
workers = 1
worker_concurrency = 8
[stripe_sim]
rate_limit = "off"
latency = "20ms"
[loadgen]
customers = 60
rate = "20/s"
cards = "visa=80,insufficient_funds=20"
timeout = "30s"
max_lag = "2s"
max_cpu = 100
"""


def test_the_rehearsal_report_opens_offline_with_verdict_reconciliation_and_charts(
    browser: Any, open_page: Any, tmp_path: Path
) -> None:
    """report.html is the whole rehearsal's: the verdict first, the reconciliation, the fault
    drawn on the charts, every chart rendered by the vendored uPlot, no console error."""
    scenario = tmp_path / "report.toml"
    scenario.write_text(REPORT_SCENARIO)
    run_dir = tmp_path / "run"
    done = subprocess.run(
        flashsale_argv(
            "rehearse", "--scenario", str(scenario), "--run-dir", str(run_dir), "--no-dashboard"
        )
        + ["--chaos", "sim-latency@1s:1s"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode in (0, 1), done.stdout[-2000:] + done.stderr[-2000:]
    saved = json.loads((run_dir / "report.json").read_text())
    report = run_dir / "report.html"
    page = open_page(report.as_uri(), viewport={"width": 1200, "height": 900})
    verdict = page.locator("#verdict").inner_text()
    assert verdict == saved["verdict"] and verdict.startswith(("PASSED", "FAILED"))
    text = page.locator("body").inner_text()
    for heading in ("Checks", "Reconciliation", "Faults", "Requests per endpoint", "Charts"):
        assert heading in text
    assert "sim-latency@1s:1s" in text
    page.wait_for_function("window.flashsaleCharts && window.flashsaleCharts.length === 6")
    drawn = page.evaluate(
        """() => window.flashsaleCharts.map(c => ({
            id: c.id, series: c.series, points: c.points,
            width: c.plot.root.querySelector('canvas').width,
        }))"""
    )
    assert {chart["id"] for chart in drawn} == {
        f"chart-{name}"
        for name in ("throughput", "active", "latency", "outcomes", "errors", "percentiles")
    }
    assert all(chart["points"] > 1 and chart["width"] > 300 for chart in drawn), drawn
    page.check("#latency-log")  # the log scale redraws the latency chart
    page.wait_for_function(
        "window.flashsaleCharts.some(c => c.id === 'chart-latency' && c.plot.scales.y.distr === 3)"
    )
    shot(page, "rehearsal-report")
    assert report.stat().st_size < 400_000  # uPlot inline: ~51 KB of the page


# --- the waiting room (serve --waiting-room on) -----------------------------------------------


def room_sale(pipeline: Pipeline, *flags: str) -> tuple[str, str]:
    """A one-unit sale whose room admits one customer at a time; returns its URL and SKU."""
    sku = f"ROOM-PAGE-{time.monotonic_ns()}"
    url = pipeline.add_server(
        *("--sku", sku, "--stock", "1", "--ignore-ledger", "--waiting-room", "on"),
        *("--admit-rate", "0", "--admit-cap", "1", *flags),
    )
    return url, sku


def test_queued_then_admitted_then_paid(pipeline: Pipeline, open_page: Any) -> None:
    url, _ = room_sale(pipeline)
    first = open_page(url + "/")
    wait_state(first, "admitted")
    assert "It is your turn" in first.locator("#status").inner_text()
    second = open_page(url + "/")
    wait_state(second, "queued")
    assert "You are in line: number 1" in second.locator("#status").inner_text()
    assert second.locator("#pay").is_disabled()
    assert second.locator("#pay-label").inner_text() == "Waiting in line…"
    shot(second, "room-queued")
    assert first.get_by_label("Quantity").is_disabled()  # one unit per admitted customer
    fill_card(first, SUCCESS_CARD)
    first.locator("#pay").click()
    wait_state(first, "paid")
    shot(first, "room-paid")
    # The only unit is sold: the customer still in line is told at once.
    wait_state(second, "sold-out")
    assert "Sold out" in second.locator("#status").inner_text()
    assert second.locator("#pay").is_disabled()
    shot(second, "room-sold-out")


def test_a_reload_keeps_the_place_in_line(pipeline: Pipeline, open_page: Any) -> None:
    url, sku = room_sale(pipeline)
    holder = open_page(url + "/")
    wait_state(holder, "admitted")
    waiting = open_page(url + "/")
    wait_state(waiting, "queued")
    customer = stored(waiting)["customer_id"]
    waiting.reload()
    wait_state(waiting, "queued")
    assert stored(waiting)["customer_id"] == customer
    # The reloaded page was rendered with a new identity and its ticket: the page hands that
    # spare back, so the line is the one customer again, and nobody counted abandoned (which
    # a ticket dropped at the end of the grace would be).
    client = redis.Redis.from_url(pipeline.redis_url, decode_responses=True)
    deadline = time.monotonic() + 20
    while client.zrange(keys.room_queue(sku), 0, -1) != [customer]:
        assert time.monotonic() < deadline, client.zrange(keys.room_queue(sku), 0, -1)
        time.sleep(0.05)
    assert int(client.hget(keys.room_state(sku), "abandoned_queued") or 0) == 0
    # Told where it stands as soon as its socket rejoins (not at the next 4 s update).
    assert waiting.locator("#status").get_attribute("data-position") == "1"
    # The customer holding the unit leaves it unpaid: the one who reloaded is next.
    holder.close()
    wait_state(waiting, "admitted", timeout_ms=30_000)


def test_a_forged_admission_is_refused_and_the_place_in_line_kept(
    pipeline: Pipeline, open_page: Any
) -> None:
    url, sku = room_sale(pipeline)
    holder = open_page(url + "/")
    wait_state(holder, "admitted")
    queued = open_page(url + "/", tolerate=r"status of 403")  # the refusal, in the console
    wait_state(queued, "queued")
    # The customer writes an admission of their own into the tab and reloads: the page takes
    # it and shows the card form, the server does not.
    record = {**stored(queued), "admission": "forged.admission.token"}
    queued.evaluate(
        "record => sessionStorage.setItem('flashsale.checkout.v1', JSON.stringify(record))",
        record,
    )
    queued.reload()
    fill_card(queued, SUCCESS_CARD)
    queued.locator("#pay").click()
    wait_state(queued, "queued")
    assert "Your turn has not come yet" in queued.locator("#status").inner_text()
    assert stored(queued)["admission"] is None
    client = redis.Redis.from_url(pipeline.redis_url, decode_responses=True)
    assert int(client.hget(keys.sku_state_counts(sku), "pending") or 0) == 0  # no order
    assert client.zrange(keys.room_queue(sku), 0, -1) == [stored(queued)["customer_id"]]
    shot(queued, "room-forged-admission")
    # Its place was kept: the holder leaves unpaid, and the customer is admitted for real.
    holder.close()
    wait_state(queued, "admitted", timeout_ms=30_000)


def test_after_the_turn_passed_a_reload_queues_again(pipeline: Pipeline, open_page: Any) -> None:
    url, _ = room_sale(pipeline, "--hold", "5s")
    page = open_page(url + "/")
    wait_state(page, "admitted")
    lapsed = stored(page)["customer_id"]
    wait_state(page, "failed", timeout_ms=30_000)  # the customer did not pay within the hold
    assert "Your turn has passed" in page.locator("#status").inner_text()
    page.reload()
    # A new place in line (the unit came back, so at once a new turn), not the lapsed customer.
    wait_state(page, "admitted")
    assert stored(page)["customer_id"] != lapsed

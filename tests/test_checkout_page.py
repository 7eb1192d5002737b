"""The checkout page as served (no browser): headers, scripts per Stripe mode, static files."""

from __future__ import annotations

import re
from typing import Any

import pytest
from flask.testing import FlaskClient

from flashsale.server import create_app
from flashsale.settings import Settings


def client_for(redis_url: str, **changes: Any) -> FlaskClient:
    settings = Settings(
        redis_url=redis_url,
        sale_sku="PAGE-1",
        secret="page-test-secret-1234",
        stock_from_ledger=False,  # no Stripe here: these tests are about the page
    )
    settings = settings.replace(**changes)
    return create_app(settings, async_mode="threading").test_client()


@pytest.fixture
def sim_mode(redis_url: str) -> FlaskClient:
    return client_for(redis_url, stripe_api_base="http://127.0.0.1:12111")


def test_page_is_never_cached_and_allows_scripts_only_from_us_and_stripe(
    sim_mode: FlaskClient,
) -> None:
    response = sim_mode.get("/", headers={"Host": "shop.test:5000"})
    assert response.status_code == 200
    # It embeds a fresh room token: a shared cache must not hand it to the next customer.
    assert response.headers["Cache-Control"] == "no-store"
    csp = dict(
        part.strip().split(" ", 1)
        for part in response.headers["Content-Security-Policy"].split(";")
    )
    assert csp["script-src"].split()[:2] == ["'self'", "http://127.0.0.1:12111"]
    assert "'unsafe-inline'" not in csp["script-src"] and "'unsafe-eval'" not in csp["script-src"]
    assert "ws://shop.test:5000" in csp["connect-src"].split()
    assert csp["frame-ancestors"] == "'none'"
    page = response.get_data(as_text=True)
    # No inline code (the CSP would refuse it): every script has a src, or is JSON data.
    for tag in re.findall(r"<script\b[^>]*>", page):
        assert "src=" in tag or 'type="application/json"' in tag, tag
    assert '<script src="http://127.0.0.1:12111/v3/stripe.js">' in page
    assert '<script src="/static/socket.io.min.js">' in page


def test_with_real_stripe_the_page_loads_stripe_js_v3(redis_url: str) -> None:
    client = client_for(redis_url, stripe_api_base="https://api.stripe.com")
    response = client.get("/")
    assert '<script src="https://js.stripe.com/v3/">' in response.get_data(as_text=True)
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self' https://js.stripe.com" in csp
    assert "https://api.stripe.com" in csp and "https://hooks.stripe.com" in csp


def test_page_scripts_and_the_vendored_socket_io_client_are_served(
    sim_mode: FlaskClient,
) -> None:
    vendored = sim_mode.get("/static/socket.io.min.js")
    assert vendored.status_code == 200 and "javascript" in vendored.content_type
    assert vendored.get_data(as_text=True).startswith("/*!\n * Socket.IO v4.")
    assert "MIT License" in sim_mode.get("/static/socket.io.LICENSE").get_data(as_text=True)
    page_js = sim_mode.get("/static/checkout.js").get_data(as_text=True)
    assert 'transports: ["websocket"]' in page_js and "sessionStorage" in page_js
    assert sim_mode.get("/static/checkout.css").status_code == 200


def test_sold_out_sale_renders_a_disabled_button(redis_url: str) -> None:
    client = client_for(redis_url, sale_stock=0)
    page = client.get("/").get_data(as_text=True)
    assert re.search(r'<button id="pay"[^>]*\bdisabled\b', page)
    assert 'data-state="sold-out"' in page

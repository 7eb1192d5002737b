"""Bad input to every endpoint of `flashsale serve`: a 4xx JSON error with a code, never a 500.

The HTTP checks drive the app through Flask's test client (no process to start); the socket
checks need the real server, and talk to it over Socket.IO.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
import socketio
from flask.testing import FlaskClient
from pipeline_fixtures import TEST_SECRET, Pipeline
from werkzeug.test import TestResponse

from flashsale.core import signing
from flashsale.ops.processes import Child, free_port, redis_server_argv, wait_for_redis
from flashsale.server import create_app
from flashsale.settings import Settings


@pytest.fixture(scope="module")
def http(module_redis_url: str) -> FlaskClient:
    """The app on this module's Redis database; accepted orders simply stay pending."""
    settings = Settings(
        redis_url=module_redis_url,
        secret=TEST_SECRET,
        sale_stock=50,
        max_quantity=3,
        stock_from_ledger=False,  # no Stripe here: these tests are about HTTP
    )
    return create_app(settings, async_mode="threading").test_client()


@pytest.fixture
def session(http: FlaskClient) -> dict[str, Any]:
    return new_session(http)


def new_session(http: FlaskClient) -> dict[str, Any]:
    response = http.get("/session")
    assert response.status_code == 200
    return dict(response.get_json())


def assert_error(response: TestResponse, status: int, code: str | None = None) -> None:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.headers["content-type"].startswith("application/json")
    error = response.get_json()["error"]
    assert error["message"]
    if code is not None:
        assert error["code"] == code


def valid_body(session: dict[str, Any], **changes: Any) -> dict[str, Any]:
    body = {
        "customer_id": session["customer_id"],
        "room_token": session["room_token"],
        "token": "tok_" + uuid.uuid4().hex,
    }
    body.update(changes)
    return {name: value for name, value in body.items() if value is not ...}


def charge(http: FlaskClient, session: dict[str, Any]) -> str:
    response = http.post("/charges", json=valid_body(session))
    assert response.status_code == 202
    return str(response.get_json()["order_id"])


def test_checkout_page_embeds_customer_and_room_token(http: FlaskClient) -> None:
    response = http.get("/")
    assert response.status_code == 200 and "text/html" in response.headers["content-type"]
    page = response.get_data(as_text=True)
    start = page.index('id="flashsale-session" type="application/json">') + 47
    embedded = json.loads(page[start : page.index("</script>", start)])
    assert (
        signing.verify_room_token(TEST_SECRET, embedded["room_token"], 60)
        == (embedded["customer_id"])
    )
    assert embedded["customer_id"] in page and embedded["stripe_js_url"] in page


def test_session_has_the_agreed_shape(http: FlaskClient, session: dict[str, Any]) -> None:
    assert set(session) >= {
        "customer_id",
        "room_token",
        "publishable_key",
        "stripe_api_base",
        "stripe_js_url",
        "sale",
    }
    assert set(session["sale"]) >= {"sku", "name", "amount", "currency", "stock_left"}
    assert uuid.UUID(session["customer_id"])
    assert new_session(http)["customer_id"] != session["customer_id"]


def test_a_valid_form_post_is_accepted_like_the_original_page(
    http: FlaskClient, session: dict[str, Any]
) -> None:
    response = http.post("/charges", data={**valid_body(session), "quantity": "2"})
    assert response.status_code == 202 and response.get_json()["status"] == "pending"


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"customer_id": ...}, "missing_field"),
        ({"room_token": ...}, "missing_field"),
        ({"token": ...}, "missing_field"),
        ({"amount": 1}, "unknown_field"),
        ({"price": 0}, "unknown_field"),
        ({"customer_id": 12345}, "invalid_field"),
        ({"customer_id": "not-a-uuid"}, "invalid_field"),
        ({"customer_id": "{12345678-1234-5678-1234-567812345678}"}, "invalid_field"),
        ({"token": 42}, "invalid_field"),
        ({"token": ["tok_a"]}, "invalid_field"),
        ({"token": "tok_" + "a" * 300}, "invalid_field"),
        ({"token": "tok_a'; DROP TABLE"}, "invalid_field"),
        ({"room_token": None}, "invalid_field"),
        ({"quantity": "two"}, "invalid_field"),
        ({"quantity": True}, "invalid_field"),
        ({"quantity": 1.5}, "invalid_field"),
        ({"quantity": 0}, "invalid_field"),
        ({"quantity": -1}, "invalid_field"),
        ({"quantity": 4}, "invalid_field"),
        ({"quantity": 10**30}, "invalid_field"),
    ],
)
def test_charges_rejects_bad_fields(
    http: FlaskClient, session: dict[str, Any], changes: dict[str, Any], code: str
) -> None:
    response = http.post("/charges", json=valid_body(session, **changes))
    assert_error(response, 400, code)


@pytest.mark.parametrize("body", [b"[]", b'"text"', b"null", b"{not json", b"\xff\xfe"])
def test_charges_rejects_bodies_that_are_not_json_objects(http: FlaskClient, body: bytes) -> None:
    response = http.post("/charges", data=body, headers={"Content-Type": "application/json"})
    assert_error(response, 400, "invalid_json")


def test_charges_rejects_other_media_types_and_huge_bodies(
    http: FlaskClient, session: dict[str, Any]
) -> None:
    url = "/charges"
    text = http.post(url, data=b"hello", headers={"Content-Type": "text/plain"})
    assert_error(text, 415, "unsupported_media_type")
    huge = valid_body(session, token="tok_" + "a" * 20_000)
    assert_error(http.post(url, json=huge), 413, "payload_too_large")
    form = http.post(
        url,
        data=b"x=" + b"a" * 40_000,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert_error(form, 413, "payload_too_large")


def test_charges_rejects_repeated_form_fields(http: FlaskClient, session: dict[str, Any]) -> None:
    body = valid_body(session)
    response = http.post(
        "/charges",
        data=(
            f"customer_id={body['customer_id']}&room_token={body['room_token']}"
            "&token=tok_a&token=tok_b"
        ).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert_error(response, 400, "invalid_field")


def test_charges_rejects_forged_and_foreign_room_tokens(
    http: FlaskClient, session: dict[str, Any]
) -> None:
    url = "/charges"
    forged = signing.issue_room_token("not-the-secret", session["customer_id"])
    assert_error(http.post(url, json=valid_body(session, room_token=forged)), 403)
    tampered = session["room_token"][:-3] + "abc"
    assert_error(http.post(url, json=valid_body(session, room_token=tampered)), 403)
    someone_else = new_session(http)
    foreign = valid_body(session, room_token=someone_else["room_token"])
    assert_error(http.post(url, json=foreign), 403, "forbidden")


def test_charges_refuses_a_cross_origin_browser_post(
    http: FlaskClient, session: dict[str, Any]
) -> None:
    url = "/charges"
    evil = http.post(url, json=valid_body(session), headers={"Origin": "https://evil.test"})
    assert_error(evil, 403, "cross_origin")
    same = http.post(url, json=valid_body(session), headers={"Origin": "http://localhost"})
    assert same.status_code == 202


def test_get_order_needs_the_owners_room_token(http: FlaskClient, session: dict[str, Any]) -> None:
    order_id = charge(http, session)
    url = f"/orders/{order_id}"
    mine = http.get(url, headers={"X-Room-Token": session["room_token"]})
    assert mine.status_code == 200 and mine.get_json()["status"] == "pending"
    assert_error(http.get(url), 401, "missing_room_token")
    forged = signing.issue_room_token("not-the-secret", session["customer_id"])
    assert_error(http.get(url, query_string={"room_token": forged}), 403, "invalid_room_token")
    other = new_session(http)["room_token"]
    assert_error(http.get(url, query_string={"room_token": other}), 404, "not_found")
    assert_error(
        http.get(url, query_string={"room_token": session["room_token"], "debug": "1"}),
        400,
        "unknown_field",
    )
    unknown = f"/orders/{uuid.uuid4()}"
    assert_error(http.get(unknown, query_string={"room_token": session["room_token"]}), 404)


@pytest.mark.parametrize("bad_id", ["abc", "1", "00000000-0000-0000-0000-00000000000Z", "a" * 36])
def test_get_order_rejects_bad_uuids(
    http: FlaskClient, session: dict[str, Any], bad_id: str
) -> None:
    response = http.get(f"/orders/{bad_id}", query_string={"room_token": session["room_token"]})
    assert_error(response, 400, "invalid_order_id")


def test_notify_refuses_unsigned_and_badly_signed_requests(
    http: FlaskClient, session: dict[str, Any]
) -> None:
    url = "/notify"
    order_id = charge(http, session)
    body = json.dumps({"order_id": order_id}).encode()
    headers = {"Content-Type": "application/json"}
    assert_error(http.post(url, data=body, headers=headers), 403, "bad_signature")
    wrong = {**headers, signing.SIGNATURE_HEADER: signing.sign_body("not-the-secret", body)}
    assert_error(http.post(url, data=body, headers=wrong), 403, "bad_signature")
    other_body = {**headers, signing.SIGNATURE_HEADER: signing.sign_body(TEST_SECRET, b"{}")}
    assert_error(http.post(url, data=body, headers=other_body), 403)

    def signed(payload: bytes) -> TestResponse:
        sign = {**headers, signing.SIGNATURE_HEADER: signing.sign_body(TEST_SECRET, payload)}
        return http.post(url, data=payload, headers=sign)

    assert_error(signed(body), 409, "not_final")  # genuine, but nothing to deliver yet
    assert_error(signed(b"[1]"), 400, "invalid_json")
    assert_error(signed(b'{"order_id": "nope"}'), 400, "invalid_order_id")
    assert_error(signed(b'{"order_id": "%s", "status": "x"}' % order_id.encode()), 400)
    assert_error(signed(json.dumps({"order_id": str(uuid.uuid4())}).encode()), 404)
    assert_error(signed(b"{" + b" " * 20_000 + b"}"), 413)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", "/", 405),
        ("POST", "/session", 405),
        ("GET", "/charges", 405),
        ("DELETE", "/orders/" + "0" * 8, 405),
        ("GET", "/notify", 405),
        ("POST", "/healthz", 405),
        ("PUT", "/metrics", 405),
        ("GET", "/admin", 404),
        ("GET", "/session?x=1", 400),
    ],
)
def test_wrong_methods_and_paths_get_json(
    http: FlaskClient, method: str, path: str, status: int
) -> None:
    assert_error(http.open(path, method=method), status)


@pytest.fixture(scope="module")
def pipeline(pipeline_factory: Any) -> Pipeline:
    # No worker: these tests only join rooms.
    return pipeline_factory(server_flags=("--stock", "50"), with_worker=False)


@pytest.mark.parametrize(
    "auth",
    [None, {}, {"room_token": ""}, {"room_token": 7}, {"room_token": "forged.token.here"}],
)
def test_sockets_refuse_missing_or_forged_room_tokens(
    pipeline: Pipeline, auth: dict[str, Any] | None
) -> None:
    client = socketio.SimpleClient()
    with pytest.raises(socketio.exceptions.ConnectionError):
        client.connect(pipeline.server_url, auth=auth, transports=["websocket"], wait_timeout=5)
    client.disconnect()


def test_sockets_refuse_a_token_signed_with_another_secret(pipeline: Pipeline) -> None:
    session = pipeline.session()
    forged = signing.issue_room_token("not-the-secret", session["customer_id"])
    client = socketio.SimpleClient()
    with pytest.raises(socketio.exceptions.ConnectionError):
        client.connect(
            pipeline.server_url,
            auth={"room_token": forged},
            transports=["websocket"],
            wait_timeout=5,
        )
    client.disconnect()
    pipeline.connect(session).disconnect()  # the genuine token still works


def test_a_redis_failure_is_a_503_whose_log_line_names_route_and_customer(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis goes away under a running app: each request gets a JSON 503, the log line says
    which route and whose order, and /metrics counts it by route and kind."""
    port = free_port()
    redis_child = Child("redis", redis_server_argv(port, tmp_path), tmp_path / "redis.log").start()
    url = f"redis://127.0.0.1:{port}/0"
    try:
        wait_for_redis(url, redis_child)
        settings = Settings(redis_url=url, secret=TEST_SECRET, stock_from_ledger=False)
        client = create_app(settings, async_mode="threading").test_client()
        session = new_session(client)
    finally:
        redis_child.stop()
    with caplog.at_level("ERROR", logger="flashsale.server"):
        answer = client.post("/charges", json=valid_body(session))
    assert_error(answer, 503, "service_unavailable")
    line = next(r.getMessage() for r in caplog.records if "Redis error" in r.getMessage())
    assert f"Redis error on POST /charges (customer {session['customer_id']})" in line
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'flashsale_redis_errors_total{kind="ConnectionError",route="/charges"} 1.0' in metrics


@pytest.mark.parametrize("field", ["token", "customer_id", "room_token"])
def test_a_trailing_newline_is_not_the_same_value(
    http: FlaskClient, session: dict[str, Any], field: str
) -> None:
    """`$` matched before a final newline, so "tok_x\\n" passed as a token of its own."""
    body = valid_body(session)
    body[field] = body[field] + "\n"
    assert_error(http.post("/charges", json=body), 403 if field == "room_token" else 400)


@pytest.mark.parametrize("path", ["/charges", "/notify"])
def test_deeply_nested_json_is_a_400_not_a_500(http: FlaskClient, path: str) -> None:
    """1,000 levels fit in the 16 KiB limit; the parser's RecursionError used to escape."""
    body = b"[" * 1000 + b"]" * 1000
    headers = {"Content-Type": "application/json"}
    if path == "/notify":
        headers[signing.SIGNATURE_HEADER] = signing.sign_body(TEST_SECRET, body)
    assert_error(http.post(path, data=body, headers=headers), 400, "invalid_json")


def test_session_is_never_cached(http: FlaskClient) -> None:
    assert http.get("/session").headers["Cache-Control"] == "no-store"


def test_the_origin_check_takes_the_scheme_too(
    http: FlaskClient, session: dict[str, Any], module_redis_url: str
) -> None:
    """https://localhost is not http://localhost; behind a TLS proxy the public origin is
    named (FLASHSALE_ALLOWED_ORIGINS), and then Host is not trusted at all."""
    other_scheme = http.post(
        "/charges", json=valid_body(session), headers={"Origin": "https://localhost"}
    )
    assert_error(other_scheme, 403, "cross_origin")
    settings = Settings(
        redis_url=module_redis_url,
        secret=TEST_SECRET,
        allowed_origins=("https://shop.example",),
        stock_from_ledger=False,
    )
    proxied = create_app(settings, async_mode="threading").test_client()
    mine = new_session(proxied)
    public = proxied.post(
        "/charges", json=valid_body(mine), headers={"Origin": "https://shop.example"}
    )
    assert public.status_code == 202
    own_host = proxied.post(
        "/charges", json=valid_body(mine), headers={"Origin": "http://localhost"}
    )
    assert_error(own_host, 403, "cross_origin")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_the_access_log_never_holds_a_room_token(pipeline: Pipeline, workers: str) -> None:
    url = pipeline.add_server("--access-log", "--workers", workers)
    session = pipeline.session(url)
    token = session["room_token"]
    missing = f"{url}/orders/{uuid.uuid4()}"
    assert pipeline.http.get(missing, params={"room_token": token}).status_code == 404
    server = pipeline.children[-1]
    deadline = time.monotonic() + 10
    while "room_token=[redacted]" not in server.log_text():
        assert time.monotonic() < deadline, server.log_text()[-2000:]
        time.sleep(0.05)
    assert token not in server.log_text()


def test_a_signed_notify_is_good_once_and_only_while_fresh(
    http: FlaskClient, session: dict[str, Any]
) -> None:
    """A captured /notify call can be neither replayed nor sent again later."""
    order_id = charge(http, session)
    body = json.dumps({"order_id": order_id}).encode()
    signature = signing.sign_body(TEST_SECRET, body)
    headers = {"Content-Type": "application/json", signing.SIGNATURE_HEADER: signature}
    assert_error(http.post("/notify", data=body, headers=headers), 409, "not_final")
    assert_error(http.post("/notify", data=body, headers=headers), 403, "replayed_signature")
    stale = signing.sign_body(TEST_SECRET, body, now=time.time() - signing.NOTIFY_MAX_AGE_S - 5)
    headers[signing.SIGNATURE_HEADER] = stale
    assert_error(http.post("/notify", data=body, headers=headers), 403, "bad_signature")
    ahead = signing.sign_body(TEST_SECRET, body, now=time.time() + 10)  # within clock leeway
    headers[signing.SIGNATURE_HEADER] = ahead
    assert_error(http.post("/notify", data=body, headers=headers), 409, "not_final")

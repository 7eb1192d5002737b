"""Bad input to every endpoint of `flashsale serve`: a 4xx JSON error with a code, never a 500."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest
import socketio
from pipeline_fixtures import TEST_SECRET, Pipeline

from flashsale.core import signing


@pytest.fixture(scope="module")
def pipeline(pipeline_factory: Any) -> Pipeline:
    # No worker: these tests only talk to the server; accepted orders simply stay pending.
    return pipeline_factory(
        server_flags=("--stock", "50", "--max-quantity", "3"), with_worker=False
    )


@pytest.fixture
def session(pipeline: Pipeline) -> dict[str, Any]:
    return pipeline.session()


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
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


def test_checkout_page_embeds_customer_and_room_token(pipeline: Pipeline) -> None:
    response = pipeline.http.get(pipeline.server_url + "/")
    assert response.status_code == 200 and "text/html" in response.headers["content-type"]
    page = response.text
    start = page.index('id="flashsale-session" type="application/json">') + 47
    embedded = json.loads(page[start : page.index("</script>", start)])
    assert (
        signing.verify_room_token(TEST_SECRET, embedded["room_token"], 60)
        == (embedded["customer_id"])
    )
    assert embedded["customer_id"] in page and embedded["stripe_js_url"] in page


def test_session_has_the_agreed_shape(pipeline: Pipeline, session: dict[str, Any]) -> None:
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
    assert pipeline.session()["customer_id"] != session["customer_id"]


def test_a_valid_form_post_is_accepted_like_the_original_page(
    pipeline: Pipeline, session: dict[str, Any]
) -> None:
    response = pipeline.http.post(
        pipeline.server_url + "/charges", data={**valid_body(session), "quantity": "2"}
    )
    assert response.status_code == 202 and response.json()["status"] == "pending"


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
    pipeline: Pipeline, session: dict[str, Any], changes: dict[str, Any], code: str
) -> None:
    response = pipeline.http.post(
        pipeline.server_url + "/charges", json=valid_body(session, **changes)
    )
    assert_error(response, 400, code)


@pytest.mark.parametrize("body", [b"[]", b'"text"', b"null", b"{not json", b"\xff\xfe"])
def test_charges_rejects_bodies_that_are_not_json_objects(pipeline: Pipeline, body: bytes) -> None:
    response = pipeline.http.post(
        pipeline.server_url + "/charges",
        content=body,
        headers={"Content-Type": "application/json"},
    )
    assert_error(response, 400, "invalid_json")


def test_charges_rejects_other_media_types_and_huge_bodies(
    pipeline: Pipeline, session: dict[str, Any]
) -> None:
    url = pipeline.server_url + "/charges"
    text = pipeline.http.post(url, content=b"hello", headers={"Content-Type": "text/plain"})
    assert_error(text, 415, "unsupported_media_type")
    huge = valid_body(session, token="tok_" + "a" * 20_000)
    assert_error(pipeline.http.post(url, json=huge), 413, "payload_too_large")
    form = pipeline.http.post(
        url,
        content=b"x=" + b"a" * 40_000,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert_error(form, 413, "payload_too_large")


def test_charges_rejects_repeated_form_fields(pipeline: Pipeline, session: dict[str, Any]) -> None:
    body = valid_body(session)
    response = pipeline.http.post(
        pipeline.server_url + "/charges",
        content=(
            f"customer_id={body['customer_id']}&room_token={body['room_token']}"
            "&token=tok_a&token=tok_b"
        ).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert_error(response, 400, "invalid_field")


def test_charges_rejects_forged_and_foreign_room_tokens(
    pipeline: Pipeline, session: dict[str, Any]
) -> None:
    url = pipeline.server_url + "/charges"
    forged = signing.issue_room_token("not-the-secret", session["customer_id"])
    assert_error(pipeline.http.post(url, json=valid_body(session, room_token=forged)), 403)
    tampered = session["room_token"][:-3] + "abc"
    assert_error(pipeline.http.post(url, json=valid_body(session, room_token=tampered)), 403)
    someone_else = pipeline.session()
    foreign = valid_body(session, room_token=someone_else["room_token"])
    assert_error(pipeline.http.post(url, json=foreign), 403, "forbidden")


def test_charges_refuses_a_cross_origin_browser_post(
    pipeline: Pipeline, session: dict[str, Any]
) -> None:
    url = pipeline.server_url + "/charges"
    evil = pipeline.http.post(
        url, json=valid_body(session), headers={"Origin": "https://evil.test"}
    )
    assert_error(evil, 403, "cross_origin")
    same = pipeline.http.post(
        url, json=valid_body(session), headers={"Origin": pipeline.server_url}
    )
    assert same.status_code == 202


def test_get_order_needs_the_owners_room_token(pipeline: Pipeline, session: dict[str, Any]) -> None:
    order_id = pipeline.charge(session, "tok_" + uuid.uuid4().hex).json()["order_id"]
    url = f"{pipeline.server_url}/orders/{order_id}"
    mine = pipeline.http.get(url, headers={"X-Room-Token": session["room_token"]})
    assert mine.status_code == 200 and mine.json()["status"] == "pending"
    assert_error(pipeline.http.get(url), 401, "missing_room_token")
    forged = signing.issue_room_token("not-the-secret", session["customer_id"])
    assert_error(pipeline.http.get(url, params={"room_token": forged}), 403, "invalid_room_token")
    other = pipeline.session()["room_token"]
    assert_error(pipeline.http.get(url, params={"room_token": other}), 404, "not_found")
    assert_error(
        pipeline.http.get(url, params={"room_token": session["room_token"], "debug": "1"}),
        400,
        "unknown_field",
    )
    unknown = f"{pipeline.server_url}/orders/{uuid.uuid4()}"
    assert_error(pipeline.http.get(unknown, params={"room_token": session["room_token"]}), 404)


@pytest.mark.parametrize("bad_id", ["abc", "1", "00000000-0000-0000-0000-00000000000Z", "a" * 36])
def test_get_order_rejects_bad_uuids(
    pipeline: Pipeline, session: dict[str, Any], bad_id: str
) -> None:
    response = pipeline.http.get(
        f"{pipeline.server_url}/orders/{bad_id}", params={"room_token": session["room_token"]}
    )
    assert_error(response, 400, "invalid_order_id")


def test_notify_refuses_unsigned_and_badly_signed_requests(
    pipeline: Pipeline, session: dict[str, Any]
) -> None:
    url = pipeline.server_url + "/notify"
    order_id = pipeline.charge(session, "tok_" + uuid.uuid4().hex).json()["order_id"]
    body = json.dumps({"order_id": order_id}).encode()
    headers = {"Content-Type": "application/json"}
    assert_error(pipeline.http.post(url, content=body, headers=headers), 403, "bad_signature")
    wrong = {**headers, signing.SIGNATURE_HEADER: signing.sign_body("not-the-secret", body)}
    assert_error(pipeline.http.post(url, content=body, headers=wrong), 403, "bad_signature")
    other_body = {**headers, signing.SIGNATURE_HEADER: signing.sign_body(TEST_SECRET, b"{}")}
    assert_error(pipeline.http.post(url, content=body, headers=other_body), 403)

    def signed(payload: bytes) -> httpx.Response:
        sign = {**headers, signing.SIGNATURE_HEADER: signing.sign_body(TEST_SECRET, payload)}
        return pipeline.http.post(url, content=payload, headers=sign)

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
    pipeline: Pipeline, method: str, path: str, status: int
) -> None:
    assert_error(pipeline.http.request(method, pipeline.server_url + path), status)


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


def test_sockets_refuse_a_token_signed_with_another_secret(
    pipeline: Pipeline, session: dict[str, Any]
) -> None:
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

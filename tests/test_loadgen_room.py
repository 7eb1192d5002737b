"""The generator's lean Socket.IO client against the real server: join, events, refusal, drops."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from pipeline_fixtures import Pipeline

from flashsale.core import events
from flashsale.loadgen.client.socketio import RoomSocket, SocketError, SocketRefused
from flashsale.ops.processes import free_port

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def pipeline(pipeline_factory: Callable[..., Pipeline]) -> Pipeline:
    return pipeline_factory(server_flags=("--stock", "1000"))


class Heard:
    """What a RoomSocket reported: its events in order, and its drop reason if any."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.drops: list[str] = []
        self.news = asyncio.Event()

    def on_event(self, name: str, data: Any) -> None:
        self.events.append((name, data))
        self.news.set()

    def on_drop(self, reason: str) -> None:
        self.drops.append(reason)
        self.news.set()

    async def until(self, check: Callable[[], bool], timeout_s: float = 15) -> None:
        async with asyncio.timeout(timeout_s):
            while not check():
                self.news.clear()
                await self.news.wait()


async def open_room(url: str, room_token: str) -> tuple[RoomSocket, Heard]:
    heard = Heard()
    socket = RoomSocket(heard.on_event, heard.on_drop)
    await socket.connect(url, {"room_token": room_token}, timeout_s=10)
    return socket, heard


def test_joins_the_room_hears_its_result_and_hangs_up_without_a_drop(pipeline: Pipeline) -> None:
    session = pipeline.session()
    token = pipeline.tokenize()

    async def journey() -> tuple[Heard, bool]:
        socket, heard = await open_room(pipeline.server_url, session["room_token"])
        await heard.until(lambda: any(name == events.JOINED for name, _ in heard.events))
        answer = await asyncio.to_thread(pipeline.charge, session, token)
        assert answer.status_code == 202, answer.text
        order_id = answer.json()["order_id"]
        await heard.until(
            lambda: any(
                name == events.CHARGE_RESULT and data.get("order_id") == order_id
                for name, data in heard.events
            )
        )
        was_connected = socket.connected
        await socket.close()
        return heard, was_connected and not socket.connected

    heard, closed = asyncio.run(journey())
    assert heard.events[0] == (events.JOINED, {"customer_id": session["customer_id"]})
    results = [data for name, data in heard.events if name == events.CHARGE_RESULT]
    assert results[-1]["status"] == "succeeded"
    assert closed
    assert heard.drops == []  # our own hang-up is not a drop


def test_a_rejoin_is_sent_the_stored_result(pipeline: Pipeline) -> None:
    session = pipeline.session()
    answer = pipeline.charge(session, pipeline.tokenize())
    order_id = answer.json()["order_id"]
    pipeline.wait_final(session, order_id)

    async def rejoin() -> Heard:
        socket, heard = await open_room(pipeline.server_url, session["room_token"])
        await heard.until(lambda: any(name == events.CHARGE_RESULT for name, _ in heard.events))
        await socket.close()
        return heard

    heard = asyncio.run(rejoin())
    assert (events.CHARGE_RESULT, order_id) in [
        (name, data.get("order_id")) for name, data in heard.events if isinstance(data, dict)
    ]


def test_a_forged_room_token_is_refused_not_retried(pipeline: Pipeline) -> None:
    async def forged() -> None:
        await open_room(pipeline.server_url, "forged.token")

    with pytest.raises(SocketRefused):
        asyncio.run(forged())


def test_nothing_listening_is_a_socket_error() -> None:
    async def nobody() -> None:
        await open_room(f"http://127.0.0.1:{free_port()}", "any")

    with pytest.raises(SocketError) as raised:
        asyncio.run(nobody())
    assert not isinstance(raised.value, SocketRefused)


def test_a_server_that_goes_away_is_reported_as_a_drop(pipeline: Pipeline) -> None:
    url = pipeline.add_server()
    server = pipeline.children[-1]
    session = pipeline.session(url)

    async def dropped() -> Heard:
        socket, heard = await open_room(url, session["room_token"])
        await heard.until(lambda: bool(heard.events))
        await asyncio.to_thread(server.stop)
        await heard.until(lambda: bool(heard.drops))
        assert not socket.connected
        await socket.close()
        return heard

    heard = asyncio.run(dropped())
    assert heard.drops == ["transport close"]

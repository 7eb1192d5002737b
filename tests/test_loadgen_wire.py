"""The generator's HTTP/1.1 and websocket client (loadgen/client/).

Against the real simulator for ordinary exchanges, and against small raw-socket peers written
here for what a well-behaved server does not do on demand: chunked bodies, a keep-alive
connection closed under a request, no answer at all, pings, fragments, bad handshakes.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import Awaitable, Callable

import pytest

from flashsale.loadgen.client import connection, http, websocket
from flashsale.ops.processes import free_port

pytestmark = pytest.mark.timeout(60)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def serve(handler: Handler) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request's head (and its Content-Length body), or b'' at EOF."""
    head = await reader.readuntil(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            await reader.readexactly(int(line.split(b":")[1]))
    return head


def ok(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body


def fetch_in_turn(handler: Handler, paths: list[str], pause_s: float = 0.0) -> list[http.Response]:
    """GET each path from a peer, one after another on one client, pausing between them."""

    async def fetch() -> list[http.Response]:
        server, url = await serve(handler)
        answers = []
        async with server, http.HttpClient() as client, asyncio.timeout(10):
            for path in paths:
                if answers:
                    await asyncio.sleep(pause_s)
                answers.append(await client.request("GET", url + path))
        return answers

    return asyncio.run(fetch())


# -- HTTP ------------------------------------------------------------------------------------


def test_requests_to_the_simulator_share_one_keep_alive_connection(stripe_sim: str) -> None:
    async def two_requests() -> tuple[http.Response, http.Response, bool]:
        async with http.HttpClient() as client:
            first = await client.request("GET", f"{stripe_sim}/_sim/config")
            (origin,) = client.idle
            (connection,) = client.idle[origin]
            second = await client.request(
                "POST",
                f"{stripe_sim}/v1/tokens",
                b"card[number]=4242424242424242&card[exp_month]=12&card[exp_year]=2034"
                b"&card[cvc]=123",
                (
                    ("Authorization", "Bearer pk_test_flashsale_simulator"),
                    ("Content-Type", "application/x-www-form-urlencoded"),
                ),
            )
            return first, second, client.idle[origin] == [connection]

    first, second, reused = asyncio.run(two_requests())
    assert first.status == 200 and "rate_limit" in json.loads(first.body)
    assert second.status == 200, second.body
    assert json.loads(second.body)["id"].startswith("tok_")
    assert reused


def test_a_chunked_body_is_read_whole() -> None:
    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )
        await writer.drain()
        await reader.read()  # until the client hangs up

    assert fetch_in_turn(chunked, ["/x"]) == [http.Response(200, b"hello world")]


def test_a_keep_alive_connection_closed_under_a_request_is_replaced() -> None:
    connections = 0

    async def closes_after_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        if connections == 1:
            await read_request(reader)
            writer.write(ok(b"first"))
            await writer.drain()
            await read_request(reader)  # the next request on it gets no answer, just a close
            writer.close()
            return
        while await read_request(reader):
            writer.write(ok(b"again"))
            await writer.drain()

    first, second = fetch_in_turn(closes_after_one, ["/a", "/b"])
    assert (first.body, second.body) == (b"first", b"again")
    assert connections == 2


@pytest.mark.parametrize("pause", [True, False], ids=["while-idle", "same-read"])
def test_bytes_after_the_answer_retire_the_connection(pause: bool) -> None:
    connections = 0

    async def chatty(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await read_request(reader)
        stray = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale"
        if connections > 1:
            writer.write(ok(b"one"))
        elif pause:
            writer.write(ok(b"one"))
            await writer.drain()
            await asyncio.sleep(0.05)  # the stray answer arrives while the connection idles
            writer.write(stray)
        else:
            writer.write(ok(b"one") + stray)  # in the same read as the answer
        await writer.drain()
        await reader.read()

    first, second = fetch_in_turn(chatty, ["/a", "/b"], pause_s=0.1)
    assert (first.body, second.body) == (b"one", b"one")
    assert connections == 2


def test_no_answer_times_out_and_the_connection_is_not_reused() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    async def wait() -> int:
        server, url = await serve(silent)
        async with server, http.HttpClient() as client:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.3):
                    await client.request("GET", f"{url}/slow")
            return sum(len(pool) for pool in client.idle.values()) + len(client.busy)

    assert asyncio.run(wait()) == 0


def test_nothing_listening_is_said_in_a_few_words() -> None:
    async def refused() -> None:
        async with http.HttpClient() as client:
            await client.request("GET", f"http://127.0.0.1:{free_port()}/")

    with pytest.raises(connection.WireError) as raised:
        asyncio.run(refused())
    assert str(raised.value) == "ConnectionRefusedError: Connection refused"


@pytest.mark.parametrize(
    ("url", "headers"),
    [
        ("http://127.0.0.1:9/x\r\nX-Evil: 1", ()),
        ("http://127.0.0.1:9/x", (("Authorization", "Bearer k\r\nX-Evil: 1"),)),
        ("http://127.0.0.1:9/x", (("Authorization", "Bearer k\nX-Evil: 1"),)),
    ],
)
def test_a_line_break_in_a_target_or_header_is_refused(
    url: str, headers: tuple[tuple[str, str], ...]
) -> None:
    async def send() -> None:
        async with http.HttpClient() as client:
            await client.request("GET", url, headers=headers)

    with pytest.raises(connection.WireError, match="line break"):
        asyncio.run(send())


@pytest.mark.parametrize(
    "url",
    [
        "ftp://127.0.0.1/x",
        "127.0.0.1:5000/x",
        "http://host:port/",
        "http://[::1:5000/",
        "http://[::1]x/",
    ],
)
def test_urls_it_cannot_speak_to_are_refused_clearly(url: str) -> None:
    with pytest.raises(connection.WireError):
        connection.split_url(url)


# -- websocket -------------------------------------------------------------------------------


def accept_of(head: bytes) -> bytes:
    key = next(
        line.split(b":", 1)[1].strip()
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"sec-websocket-key:")
    )
    return base64.b64encode(hashlib.sha1(key + websocket.WEBSOCKET_GUID).digest())


def server_frame(opcode: int, payload: bytes, final: bool = True, masked: bool = False) -> bytes:
    first = (0x80 if final else 0) | opcode
    size = len(payload)
    mask_bit = 0x80 if masked else 0
    if size < 126:
        head = bytes((first, mask_bit | size))
    else:
        head = bytes((first, mask_bit | 126)) + size.to_bytes(2, "big")
    return head + (b"\0\0\0\0" if masked else b"") + payload


async def read_client_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One frame from the client, unmasked: (opcode, payload). Clients must mask."""
    first, second = await reader.readexactly(2)
    assert second & 0x80, "a client frame must be masked"
    size = second & 0x7F
    if size == 126:
        size = int.from_bytes(await reader.readexactly(2), "big")
    mask = await reader.readexactly(4)
    payload = bytes(b ^ mask[i % 4] for i, b in enumerate(await reader.readexactly(size)))
    return first & 0x0F, payload


def test_websocket_pings_fragments_long_messages_and_the_close_handshake() -> None:
    from_client: list[tuple[int, bytes]] = []
    long_text = "x" * 300

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: "
            + accept_of(head)
            + b"\r\n\r\n"
            # In the same write as the handshake: the client must not lose it.
            + server_frame(websocket.OP_TEXT, b"hello")
        )
        writer.write(server_frame(websocket.OP_PING, b"are you there"))
        writer.write(server_frame(websocket.OP_TEXT, b"frag", final=False))
        writer.write(server_frame(websocket.OP_CONTINUATION, b"mented"))
        writer.write(server_frame(websocket.OP_TEXT, long_text.encode()))
        await writer.drain()
        from_client.append(await read_client_frame(reader))  # the pong
        from_client.append(await read_client_frame(reader))  # a text the client sends
        writer.write(server_frame(websocket.OP_CLOSE, (1001).to_bytes(2, "big")))
        await writer.drain()
        from_client.append(await read_client_frame(reader))  # the close answered
        writer.close()

    async def talk() -> tuple[list[str], list[str]]:
        server, url = await serve(peer)
        texts: list[str] = []
        closes: list[str] = []
        async with server:
            socket = await websocket.open_websocket(url + "/ws", texts.append, closes.append)
            async with asyncio.timeout(10):
                while len(texts) < 3:
                    await asyncio.sleep(0.01)
                socket.send_text("héllo back")
                while not closes:
                    await asyncio.sleep(0.01)
            assert not socket.connected
        return texts, closes

    texts, closes = asyncio.run(talk())
    assert texts == ["hello", "fragmented", long_text]
    assert closes == ["transport close"]
    assert from_client == [
        (websocket.OP_PONG, b"are you there"),
        (websocket.OP_TEXT, "héllo back".encode()),
        (websocket.OP_CLOSE, (1001).to_bytes(2, "big")),
    ]


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", "handshake refused: http 404"),
        (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: bm90IHRoZSByaWdodCBrZXk=\r\n\r\n",
            "handshake refused: no valid Sec-WebSocket-Accept",
        ),
    ],
)
def test_a_refused_websocket_handshake_says_why(answer: bytes, reason: str) -> None:
    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        await reader.read()

    async def connect() -> None:
        server, url = await serve(refuse)
        async with server:
            await websocket.open_websocket(url + "/ws", print, print)

    with pytest.raises(connection.WireError) as raised:
        asyncio.run(connect())
    assert str(raised.value) == reason


def test_a_masked_frame_from_the_server_ends_the_connection() -> None:
    async def masks(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept_of(head) + b"\r\n\r\n"
        )
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(server_frame(websocket.OP_TEXT, b"nope", masked=True))
        await writer.drain()
        await reader.read()

    async def talk() -> tuple[list[str], list[str]]:
        server, url = await serve(masks)
        texts: list[str] = []
        closes: list[str] = []
        async with server:
            await websocket.open_websocket(url + "/ws", texts.append, closes.append)
            async with asyncio.timeout(10):
                while not closes:
                    await asyncio.sleep(0.01)
        return texts, closes

    assert asyncio.run(talk()) == ([], ["masked frame from the server"])

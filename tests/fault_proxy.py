"""A reverse proxy in front of a real server that answers 503 for chosen requests, like a load
balancer shedding load: a real fault on the wire, counted exactly by the proxy itself.

HTTP requests are forwarded (keep-alive on both sides) and websocket upgrades are pumped both
ways, so customers play their whole journey through it.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Callable

import aiohttp
from aiohttp import web

from flashsale.ops.processes import free_port

Rule = Callable[[str, str, int], bool]  # (method, path, how many such requests so far) -> shed?


class FaultProxy:
    """`with FaultProxy(backend, rule) as proxy:` serves on proxy.url; proxy.shed counts the
    errors (503 unless `status` says otherwise, with `headers`) it answered by "METHOD path"."""

    def __init__(
        self, backend: str, rule: Rule, *, status: int = 503, headers: dict[str, str] | None = None
    ) -> None:
        self.backend = backend.rstrip("/")
        self.rule = rule
        self.status = status
        self.headers = headers or {}
        self.seen: Counter[str] = Counter()
        self.shed: Counter[str] = Counter()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.runner: web.AppRunner | None = None
        self.session: aiohttp.ClientSession | None = None

    def __enter__(self) -> FaultProxy:
        self.thread.start()
        assert self.ready.wait(10), "the fault proxy did not start"
        return self

    def __exit__(self, *_: object) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._start())
        self.ready.set()
        self.loop.run_forever()

    async def _start(self) -> None:
        self.session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def _close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        if self.session is not None:
            await self.session.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        assert self.session is not None
        name = f"{request.method} {request.path}"
        self.seen[name] += 1
        if self.rule(request.method, request.path, self.seen[name]):
            self.shed[name] += 1
            return web.json_response(
                {"error": {"code": "service_unavailable", "message": "shed by the proxy"}},
                status=self.status,
                headers=self.headers,
            )
        target = self.backend + str(request.rel_url)
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._pump_websocket(request, target)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host",)}
        async with self.session.request(
            request.method, target, headers=headers, data=await request.read()
        ) as answer:
            body = await answer.read()
            kept = {
                k: v
                for k, v in answer.headers.items()
                if k.lower() not in ("content-length", "transfer-encoding", "connection")
            }
            return web.Response(status=answer.status, body=body, headers=kept)

    async def _pump_websocket(self, request: web.Request, target: str) -> web.StreamResponse:
        assert self.session is not None
        client = web.WebSocketResponse()
        await client.prepare(request)
        async with self.session.ws_connect(target.replace("http://", "ws://", 1)) as upstream:

            async def down() -> None:
                async for message in upstream:
                    if message.type == aiohttp.WSMsgType.TEXT:
                        await client.send_str(message.data)
                    elif message.type == aiohttp.WSMsgType.BINARY:
                        await client.send_bytes(message.data)
                await client.close()

            pumping = asyncio.ensure_future(down())
            async for message in client:
                if message.type == aiohttp.WSMsgType.TEXT:
                    await upstream.send_str(message.data)
                elif message.type == aiohttp.WSMsgType.BINARY:
                    await upstream.send_bytes(message.data)
            pumping.cancel()
        return client

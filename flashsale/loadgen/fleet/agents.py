"""The agents fleet: shards played by `flashsale loadgen-agent` workers on other machines.

Both ends are here: the coordinator's (CeleryAgents: shards go out as Celery tasks, messages
come back through a Redis list) and the agent's (its Celery app, the shard task, RedisLink).
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from typing import Any

import redis.asyncio as aioredis
from celery import Celery

from flashsale.loadgen.client import loop
from flashsale.loadgen.fleet.protocol import Command, Message, decode, encode, run_shard
from flashsale.loadgen.stats import RunStats

QUEUE = "loadgen"
SHARD_TASK = "flashsale.loadgen.shard"
KEY_TTL_S = 3600  # a run's Redis lists outlive it by an hour at most, whatever happens
POP_TIMEOUT_S = 0.2
TICK_S = 0.5


def up_key(run_id: str) -> str:
    return f"flashsale:loadgen:{run_id}:up"


def down_key(run_id: str, shard: int) -> str:
    return f"flashsale:loadgen:{run_id}:down:{shard}"


def create_agent_app(redis_url: str) -> Celery:
    """One shard at a time per agent: a solo pool, no prefetch, acked when taken.

    Acked on receipt on purpose: a shard whose agent dies must not be redelivered to another
    agent minutes later, into a run that has already counted it as lost.
    """
    app = Celery("flashsale-loadgen", broker=redis_url, set_as_current=False)
    app.conf.update(
        task_default_queue=QUEUE,
        task_ignore_result=True,
        task_acks_late=False,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
    )

    @app.task(name=SHARD_TASK)
    def shard(spec: dict[str, Any], index: int, count: int, run_id: str) -> None:
        loop.run(play_shard(redis_url, spec, index, count, run_id))

    return app


async def play_shard(
    redis_url: str, spec: dict[str, Any], index: int, count: int, run_id: str
) -> None:
    link = RedisLink(redis_url, run_id, index)
    try:
        await run_shard(spec, index, count, link, tick_s=TICK_S)
    finally:
        await link.client.aclose()


def run_agent(redis_url: str, loglevel: str = "INFO", name: str | None = None) -> None:
    """`flashsale loadgen-agent`: a Celery worker on the loadgen queue, one shard at a time."""
    app = create_agent_app(redis_url)
    node = name or f"loadgen-{socket.gethostname()}-{os.getpid()}"
    app.worker_main(
        [
            "worker",
            "--queues",
            QUEUE,
            "--pool",
            "solo",
            "--concurrency",
            "1",
            "--hostname",
            f"{node}@%h",
            "--loglevel",
            loglevel,
            "--without-gossip",
            "--without-mingle",
        ]
    )


class RedisLink:
    """A shard's line through Redis lists (not pub/sub: nothing is lost while nobody listens)."""

    def __init__(self, redis_url: str, run_id: str, shard: int) -> None:
        self.client = aioredis.Redis.from_url(redis_url)
        self.up = up_key(run_id)
        self.down = down_key(run_id, shard)

    async def send(self, message: Message) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.rpush(self.up, json.dumps(encode(message)))
            pipe.expire(self.up, KEY_TTL_S)
            await pipe.execute()

    async def receive(self) -> Command:
        while True:
            found = await self.client.blpop([self.down], timeout=1)
            if found is not None:
                return decode(json.loads(found[1]))  # type: ignore[return-value]


class CeleryAgents:
    """The coordinator's view of N agents: shards go out as tasks, stats come back in a list."""

    kind = "agent"
    start_lead_s = 1.0  # other machines: room for one Redis round trip and clock skew

    def __init__(self, count: int, redis_url: str, accept_timeout_s: float) -> None:
        self.count = count
        self.redis_url = redis_url
        self.accept_timeout_s = accept_timeout_s
        self.run_id = uuid.uuid4().hex[:12]
        self.app = create_agent_app(redis_url)
        self.client = aioredis.Redis.from_url(redis_url)

    async def start(self, spec: dict[str, Any], stats: RunStats) -> None:
        for index in range(self.count):
            # Not taken before the accept timeout: the task expires instead of starting late.
            self.app.send_task(
                SHARD_TASK,
                args=[spec, index, self.count, self.run_id],
                queue=QUEUE,
                expires=self.accept_timeout_s,
            )

    async def messages(self) -> list[Message]:
        found = await self.client.blpop([up_key(self.run_id)], timeout=POP_TIMEOUT_S)
        if found is None:
            return []
        raw = [found[1]]
        rest: Any = await self.client.lpop(up_key(self.run_id), 500)
        raw += rest or []
        return [decode(json.loads(item)) for item in raw]  # type: ignore[misc]

    async def command(self, shard: int, command: Command) -> None:
        key = down_key(self.run_id, shard)
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.rpush(key, json.dumps(encode(command)))
            pipe.expire(key, KEY_TTL_S)
            await pipe.execute()

    def gone(self, shard: int) -> str | None:
        return None  # another machine: only silence tells

    async def close(self) -> None:
        keys = [up_key(self.run_id), *(down_key(self.run_id, i) for i in range(self.count))]
        await self.client.delete(*keys)
        await self.client.aclose()

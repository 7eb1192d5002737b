"""A local Redis Sentinel topology for rehearsals: its configuration and what it says.

A primary, a replica and three sentinels (quorum 2), all on loopback, as production runs the
order store. Replication is asynchronous: what the primary acknowledged but had not yet sent
to the replica when it died is lost in a failover (replication_lag measures it at the kill).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import redis

from flashsale.core.store import SentinelAddress
from flashsale.errors import ComponentFailed
from flashsale.ops.processes import redis_server_binary

SERVICE = "flashsale"
SENTINELS = 3
QUORUM = 2
# A primary silent this long is down for a sentinel; with QUORUM agreeing, one fails it over.
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 10_000
POLL_S = 0.05


def sentinel_argv(port: int, primary_port: int, directory: Path) -> list[str]:
    """Write a sentinel's configuration (it rewrites the file as it learns) and its argv."""
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / f"sentinel-{port}.conf"
    config.write_text(
        "\n".join(
            [
                "bind 127.0.0.1",
                "protected-mode no",  # bound to loopback only
                f"port {port}",
                f"dir {directory}",
                f"sentinel monitor {SERVICE} 127.0.0.1 {primary_port} {QUORUM}",
                f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}",
                f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}",
                f"sentinel parallel-syncs {SERVICE} 1",
                "",
            ]
        )
    )
    binary = shutil.which("redis-sentinel")
    return [binary, str(config)] if binary else [redis_server_binary(), str(config), "--sentinel"]


def _node(port: int) -> redis.Redis:
    return redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1, decode_responses=True)


def wait_for_quorum(address: SentinelAddress, replicas: int, timeout_s: float) -> None:
    """Until every sentinel sees the primary, its replicas and all the other sentinels, so a
    failover can happen from the first second of the sale."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            views: list[dict[str, Any]] = [
                _node(port).sentinel_master(SERVICE)  # type: ignore[misc]
                for _, port in address.sentinels
            ]
            if all(
                view["num-slaves"] >= replicas
                and view["num-other-sentinels"] >= len(address.sentinels) - 1
                and view["is_master"]
                and not view["is_sdown"]
                for view in views
            ):
                return
            last = "; ".join(
                f"{view['num-slaves']} replicas, {view['num-other-sentinels']} other sentinels"
                for view in views
            )
        except redis.RedisError as error:
            last = str(error)
        time.sleep(POLL_S)
    raise ComponentFailed(f"the sentinels did not agree on the primary in {timeout_s:.0f}s: {last}")


def wait_for_replica(port: int, timeout_s: float) -> None:
    """Until the replica on port has finished its first sync: the sentinels count a replica
    from its first handshake, seconds before it holds any data."""
    deadline = time.monotonic() + timeout_s
    info: dict[str, object] = {}
    while time.monotonic() < deadline:
        try:
            info = _node(port).info("replication")
            if info.get("master_link_status") == "up" and not info.get("master_sync_in_progress"):
                return
        except redis.RedisError:
            pass
        time.sleep(POLL_S)
    raise ComponentFailed(f"the replica on :{port} did not sync in {timeout_s:.0f}s: {info}")


def primary_port(address: SentinelAddress) -> int:
    """The port of the primary the sentinels name now."""
    for _, port in address.sentinels:
        try:
            found: Any = _node(port).sentinel_get_master_addr_by_name(SERVICE)
        except redis.RedisError:
            continue
        if found:
            return int(found[1])
    raise ComponentFailed("no sentinel names a primary")


def replication_lag(primary: int, replicas: list[int]) -> int:
    """Bytes the primary has acknowledged that its furthest-behind replica has not processed.

    Each replica's own offset, read after the primary's (so an upper bound): the offsets the
    primary lists for its replicas come from their once-a-second acknowledgements, stale."""
    acknowledged = int(_node(primary).info("replication")["master_repl_offset"])
    processed = [int(_node(port).info("replication")["slave_repl_offset"]) for port in replicas]
    return max(0, acknowledged - min(processed, default=0))


def wait_for_new_primary(address: SentinelAddress, old_port: int, timeout_s: float) -> int:
    """Until the sentinels name another primary and it answers as one; its port."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            port = primary_port(address)
            if port != old_port and _node(port).role()[0] == "master":
                return port
        except (redis.RedisError, ComponentFailed):
            pass
        time.sleep(POLL_S)
    raise ComponentFailed(f"no new primary {timeout_s:.0f}s after the primary on :{old_port} died")

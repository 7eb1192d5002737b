"""What the generator's HTTP and websocket clients share: URLs as origins, connecting, errors."""

from __future__ import annotations

import asyncio
import functools
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}


class WireError(Exception):
    """A failed exchange, in a few words alike for alike failures: they become report rows."""


def describe(error: BaseException) -> str:
    """An OS or TLS error by class and reason, without the address (one row per kind)."""
    if isinstance(error, WireError):
        return str(error)
    if isinstance(error, TimeoutError):
        return "timeout"
    if isinstance(error, OSError) and error.errno:
        # os.strerror, not the message: asyncio's names the address ("Connect call failed").
        return f"{type(error).__name__}: {os.strerror(error.errno)}"[:120]
    return type(error).__name__


@dataclass(frozen=True)
class Origin:
    """Where a URL's connection goes: host, port, TLS or not, and its Host header."""

    host: str
    port: int
    tls: bool
    host_header: str


@functools.lru_cache(maxsize=64)
def parse_origin(base: str) -> Origin:
    """`scheme://host[:port]` as an Origin (cached: a run has a handful of origins)."""
    scheme, sep, netloc = base.partition("://")
    if not sep or scheme.lower() not in DEFAULT_PORTS or not netloc:
        raise WireError(f"not an http(s) or ws(s) URL: {base[:80]}")
    scheme = scheme.lower()
    host, port = netloc, DEFAULT_PORTS[scheme]
    if netloc.startswith("["):  # an IPv6 literal: [::1]:5000
        end = netloc.find("]")
        host, rest = netloc[1:end], netloc[end + 1 :]
        if end < 0 or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            raise WireError(f"bad address in URL: {base[:80]}")
        if rest:
            port = int(rest[1:])
    elif ":" in netloc:
        host, _, number = netloc.rpartition(":")
        if not number.isdigit():
            raise WireError(f"bad port in URL: {base[:80]}")
        port = int(number)
    return Origin(host, port, scheme in ("https", "wss"), netloc)


def split_url(url: str) -> tuple[Origin, str]:
    """A URL as its origin and its request target (path and query)."""
    slash = url.find("/", url.find("//") + 2)
    base, target = (url, "/") if slash < 0 else (url[:slash], url[slash:])
    return parse_origin(base), target.partition("#")[0] or "/"


@functools.cache
def default_tls() -> ssl.SSLContext:
    """The system's trust store, loaded once (loading it takes ~20 ms): for https and wss."""
    return ssl.create_default_context()


async def open_connection(
    loop: asyncio.AbstractEventLoop,
    factory: Callable[[], asyncio.Protocol],
    origin: Origin,
    tls: ssl.SSLContext | None,
) -> asyncio.BaseTransport:
    try:
        transport, _ = await loop.create_connection(
            factory,
            origin.host,
            origin.port,
            ssl=(tls or default_tls()) if origin.tls else None,
        )
    except OSError as error:
        raise WireError(describe(error)) from None
    return transport

"""The event loop every generator process runs on: uvloop where it is installed.

uvloop's loop and TCP transports are written in C. Once the generator had its own lean client
(wire.py), the loop's own machinery was the largest cost left per customer: steady-state CPU
2.45 -> 1.98 ms (benchmarks/RESULTS.md section 3). Plain asyncio where uvloop is missing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run(main), on uvloop when it can be imported."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)

"""What each open connection costs a server process, kept small: the waiting room holds tens of
thousands of websockets per process (benchmarks/waiting_room.py measures the RSS per socket).

- pywsgi reads every connection through an io.BufferedReader of io.DEFAULT_BUFFER_SIZE (8 KiB),
  kept for the connection's life; a websocket's frames and the requests here are small.
- gevent records, for every greenlet it spawns, the greenlet that spawned it and a copy of the
  spawning stack (`track_greenlet_tree`), for debugging; each held socket keeps its reader
  greenlet, and every write to it starts a short one (server/websocket_writes.py).
"""

from __future__ import annotations

import os
from typing import Any

# Bytes a connection reads ahead. Longer header lines and bodies are still read whole: the
# reader asks the socket again (BufferedReader reads past its buffer for large reads).
READ_BUFFER_BYTES = 1024
TRACK_TREE_VARIABLE = "GEVENT_TRACK_GREENLET_TREE"


class SmallReadBuffer:
    """A mixin for gevent pywsgi's WSGIHandler (list it before the handler): reads the
    connection through a READ_BUFFER_BYTES buffer instead of pywsgi's 8 KiB one."""

    def __init__(self, sock: Any, address: Any, server: Any, rfile: Any = None) -> None:
        if rfile is None:
            rfile = sock.makefile("rb", READ_BUFFER_BYTES)
        super().__init__(sock, address, server, rfile)  # type: ignore[call-arg]


def untrack_greenlet_tree() -> None:
    """gevent's documented switch (faster spawns, less memory), unless the environment sets it:
    GEVENT_TRACK_GREENLET_TREE=1 brings the spawn tree back for debugging."""
    if TRACK_TREE_VARIABLE in os.environ:
        return
    import gevent

    gevent.config.track_greenlet_tree = False

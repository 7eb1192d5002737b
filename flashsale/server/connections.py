"""What each open connection costs a server process, kept small: the waiting room holds tens of
thousands of websockets per process (benchmarks/waiting_room.py measures the RSS per socket).

- pywsgi reads every connection through an io.BufferedReader of io.DEFAULT_BUFFER_SIZE (8 KiB),
  kept for the connection's life; the requests here are small.
- pywsgi's handler keeps its greenlet, request and buffer for as long as the app runs: for a
  websocket, its whole life. The handler hands a websocket's connection over instead
  (server/held_websockets.py holds it without a greenlet) and its request ends.
- gevent records, for every greenlet it spawns, the greenlet that spawned it and a copy of the
  spawning stack (`track_greenlet_tree`), for debugging; every read and write of a held
  websocket starts a short greenlet (server/websocket_transport.py).
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


class ReleasesWebsockets:
    """A mixin for gevent-websocket's handler: after the handshake, release_websocket() hands the
    connection to whoever holds the websocket from now on, and this request ends as soon as the
    app returns, its greenlet, headers and buffer with it."""

    # Attributes gevent-websocket's handler provides.
    socket: Any
    rfile: Any
    websocket: Any

    def release_websocket(self) -> tuple[Any, bytes]:
        """A descriptor of the connection's own (a dup: the server closes this one when the
        request ends, as always) and the bytes the buffer had read past the handshake."""
        sock = self.socket
        timeout = sock.gettimeout()
        sock.settimeout(0)
        try:
            pending = bytes(self.rfile.peek())  # what is buffered; b"" rather than wait
        finally:
            sock.settimeout(timeout)
        own = sock.dup()
        # Nothing more of the connection from this handler: gevent-websocket would send a close
        # frame on the way out, pywsgi would read out and close the descriptor itself.
        self.websocket.closed = True
        self.rfile.close()
        self.socket = None
        return own, pending


def untrack_greenlet_tree() -> None:
    """gevent's documented switch (faster spawns, less memory), unless the environment sets it:
    GEVENT_TRACK_GREENLET_TREE=1 brings the spawn tree back for debugging."""
    if TRACK_TREE_VARIABLE in os.environ:
        return
    import gevent

    gevent.config.track_greenlet_tree = False

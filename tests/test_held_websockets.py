"""A held websocket keeps no greenlet (server/held_websockets.py): counted in a gevent process of
its own, with engine.io, flashsale's transport and gunicorn's handler class, real websockets."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

SOCKETS = 50

PROBE = textwrap.dedent(
    """
    from gevent import monkey

    monkey.patch_all()

    import gc
    import json
    import sys

    import engineio
    import greenlet
    import websocket
    from gevent import pywsgi

    from flashsale.server import websocket_transport
    from flashsale.server.gunicorn_conf import Handler
    from flashsale.server.pings import SharedPings

    def greenlets():
        gc.collect()
        return sum(isinstance(o, greenlet.greenlet) and not o.dead for o in gc.get_objects())

    eio = engineio.Server(async_mode="gevent", transports=["websocket"])
    SharedPings(eio).install()
    websocket_transport.install(eio)
    server = pywsgi.WSGIServer(
        ("127.0.0.1", 0), engineio.WSGIApp(eio), handler_class=Handler, log=None
    )
    server.start()
    url = f"ws://127.0.0.1:{server.server_port}/engine.io/?EIO=4&transport=websocket"
    first = websocket.create_connection(url, timeout=10)
    assert first.recv().startswith("0")
    before = greenlets()
    sockets = [websocket.create_connection(url, timeout=10) for _ in range(int(sys.argv[1]))]
    opened = [ws.recv() for ws in sockets]
    assert all(frame.startswith("0") for frame in opened), opened
    held = greenlets()
    print(json.dumps({"before": before, "held": held, "sockets": len(eio.sockets)}))
    """
)


def test_held_websockets_keep_no_greenlet() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(SOCKETS)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    counts = json.loads(done.stdout.strip().splitlines()[-1])
    assert counts["sockets"] == SOCKETS + 1
    # engine.io's own transport keeps two per socket (its reader and its writer task).
    assert counts["held"] - counts["before"] < 5, counts

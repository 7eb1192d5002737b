"""Slow and idle clients must not hold a server's connections: read timeouts for pywsgi.

One mixin (BoundedReads) for the gevent handler of `flashsale serve` and the gunicorn worker's
(gunicorn_conf.Handler), and the timeouts it applies (ReadTimeouts, from flags or environment).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flashsale.units import format_duration, parse_duration


@dataclass(frozen=True)
class ReadTimeouts:
    """How long a server process waits on a client that is slow to send; 0 is no limit.

    header_s bounds a request's line and headers, counted from the accept on a new connection
    and from the request's first byte on a kept-alive one; body_s its body, from the end of its
    headers; keepalive_s the wait for the first byte of the next request on a kept-alive
    connection. None applies once the app has the request: a websocket lives on its pings.
    """

    header_s: float = 10.0
    body_s: float = 10.0
    keepalive_s: float = 5.0

    # field -> (flag of `flashsale serve`, environment variable); the flag wins.
    SOURCES = {
        "header_s": ("--header-timeout", "FLASHSALE_HEADER_TIMEOUT"),
        "body_s": ("--body-timeout", "FLASHSALE_BODY_TIMEOUT"),
        "keepalive_s": ("--keepalive-timeout", "FLASHSALE_KEEPALIVE_TIMEOUT"),
    }

    @classmethod
    def from_options(
        cls, environ: Mapping[str, str] | None = None, **flags: str | None
    ) -> ReadTimeouts:
        """Durations ('10s', '500ms', '0') from flags (header_s=...), else the environment."""
        environ = os.environ if environ is None else environ
        found: dict[str, float] = {}
        for field, (flag, variable) in cls.SOURCES.items():
            if flags.get(field) is not None:
                found[field] = parse_duration(flags[field], flag)
            elif environ.get(variable):
                found[field] = parse_duration(environ[variable], variable)
        return cls(**found)

    @classmethod
    def default_of(cls, field: str) -> str:
        """A field's default as a flag takes it ('10s'), for help texts."""
        return format_duration(getattr(cls(), field))


_TIMEOUT_BODY = (
    b'{"error": {"code": "request_timeout", "message": "the request was not sent in time"}}'
)
# Sent on the socket by the handler itself: the app never saw the request.
REQUEST_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(_TIMEOUT_BODY), _TIMEOUT_BODY)
)

log = logging.getLogger(__name__)


class BoundedReads:
    """A mixin for gevent pywsgi's WSGIHandler (list it first): a client slow to send a request
    cannot keep its connection, nor the greenlet and file descriptor behind it.

    gevent's pywsgi has no read timeout of its own, and with a pywsgi worker gunicorn's
    `keepalive` and `timeout` bound nothing a client sends. So each wait for a client runs
    under a gevent.Timeout, through pywsgi's documented handler methods: the request's first
    byte (read_requestline; header_s on a new connection, keepalive_s on a kept-alive one), the
    rest of its line and headers (header_s), its body (body_s, read whole in
    handle_one_response before the app runs, so no view ever waits on a client). A connection
    that times out before sending a byte is closed; one that stopped mid-request gets a 408 and
    is closed. gevent.Timeout is a BaseException: it passes pywsgi's `except Exception` around
    header parsing and lands in handle_one_request here.
    """

    read_timeouts = ReadTimeouts()
    _requests_seen = 0
    _timer: Any = None  # the gevent.Timeout armed last
    _waiting_for = ""  # what it bounds: "request" (its first byte), "headers" or "body"
    _body_left = False  # the app got the request without all of its body (too large)

    # Attributes pywsgi's handler provides.
    rfile: Any
    socket: Any
    environ: dict[str, Any]
    close_connection: bool
    client_address: Any

    def _arm(self, seconds: float, waiting_for: str, exception: Any = None) -> None:
        import gevent

        self._disarm()
        self._waiting_for = waiting_for
        self._timer = gevent.Timeout(seconds or None, exception)
        self._timer.start()

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def handle_one_request(self) -> Any:
        import gevent

        first = self._requests_seen == 0
        self._requests_seen += 1
        timeouts = self.read_timeouts
        self._arm(timeouts.header_s if first else timeouts.keepalive_s, "request")
        try:
            return super().handle_one_request()  # type: ignore[misc]
        except gevent.Timeout as expired:
            if expired is not self._timer:
                raise
            return self._timed_out()
        finally:
            self._disarm()

    def read_requestline(self) -> Any:
        self.rfile.peek(1)  # the first byte; at EOF the read below returns nothing
        if self._requests_seen > 1:
            self._arm(self.read_timeouts.header_s, "headers")
        else:
            self._waiting_for = "headers"  # still the timer armed at the accept
        return super().read_requestline()  # type: ignore[misc]

    def get_environ(self) -> Any:
        self._disarm()  # the headers are in
        return super().get_environ()  # type: ignore[misc]

    def handle_one_response(self) -> Any:
        from flashsale.server.app import MAX_BODY_BYTES

        environ = self.environ
        self._body_left = False
        length = int(environ.get("CONTENT_LENGTH") or 0)
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        # wsgi.input_terminated: pywsgi reads this body (not a websocket upgrade's socket).
        if environ.get("wsgi.input_terminated") and (length or chunked):
            if length > MAX_BODY_BYTES:
                self._body_left = True  # the app refuses it (413) on its length alone
            else:
                self._arm(self.read_timeouts.body_s, "body")
                try:
                    body = environ["wsgi.input"].read(MAX_BODY_BYTES + 1 if chunked else None)
                except OSError:  # the client went away mid-body, or sent broken chunks
                    self.close_connection = True
                    return None
                finally:
                    self._disarm()
                # More than the app takes: it reads past its limit and refuses it (413).
                self._body_left = len(body) > MAX_BODY_BYTES
                environ["wsgi.input"] = io.BytesIO(body)
        return super().handle_one_response()  # type: ignore[misc]

    def start_response(self, status: str, headers: Any, exc_info: Any = None) -> Any:
        if self._body_left:
            # The connection closes after this answer (run_application below): say so, or a
            # keep-alive client sends its next request into a closed socket and gets no answer.
            # pywsgi honours the header and closes.
            headers = [*headers, ("Connection", "close")]
        return super().start_response(status, headers, exc_info)  # type: ignore[misc]

    def run_application(self) -> Any:
        try:
            return super().run_application()  # type: ignore[misc]
        finally:
            if self._body_left:
                # pywsgi reads out the rest of the body next: within body_s (a TimeoutError,
                # a socket.error, ends that reading quietly), then the connection closes.
                self.close_connection = True
                self._arm(self.read_timeouts.body_s, "body", TimeoutError("body not sent"))

    def _timed_out(self) -> None:
        self.close_connection = True
        waiting_for = self._waiting_for
        log.debug("closing %s: no %s in time", self.client_address, waiting_for)
        if waiting_for != "request":  # it began a request: say why it ends
            with contextlib.suppress(OSError):
                self.socket.sendall(REQUEST_TIMEOUT_RESPONSE)
        return None

"""Request headers for gevent's pywsgi: the usual well-formed block read without the email parser.

gevent reads every request's headers with http.client.parse_headers, which runs them through
the email package's feed parser: ~90 us per request, three requests per customer. A block of
plain "Name: value" lines is read here into the same message the parser would build; any
other block (folded lines, a bare CR, an empty name, no blank line, ...) still goes to it.
"""

from __future__ import annotations

import email.parser
import re
from http import client
from typing import IO, Any

from gevent.pywsgi import OldMessage
from geventwebsocket.handler import WebSocketHandler

# http.client's limits, which parse_headers applies.
MAX_LINE = 65536
MAX_HEADERS = 100
# One header line as the email parser reads it: a name of the characters it accepts, a value
# without CR or LF (the parser splits lines at a bare CR too), CRLF or LF at the end.
PLAIN_LINE = re.compile(rb"[!-9;-~]+:[^\r\n]*\r?\n")


def parse_headers(fp: IO[bytes]) -> OldMessage:
    """What gevent's headers_factory returns for the header block at fp, read the same way."""
    lines: list[bytes] = []
    while True:
        line = fp.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            too_long = OldMessage()
            too_long.status = "Line too long"
            return too_long
        lines.append(line)
        if len(lines) > MAX_HEADERS:
            raise client.HTTPException(f"got more than {MAX_HEADERS} headers")
        if line in (b"\r\n", b"\n", b""):
            break
    if lines[-1] and all(PLAIN_LINE.fullmatch(header) for header in lines[:-1]):
        message = OldMessage()
        for header in lines[:-1]:
            # As the email parser stores a single-line header (policy compat32).
            name, value = header.decode("iso-8859-1").split(":", 1)
            message.set_raw(name, value.lstrip(" \t").rstrip("\r\n"))
        return message
    parsed: OldMessage = email.parser.Parser(_class=OldMessage).parsestr(
        b"".join(lines).decode("iso-8859-1")
    )
    return parsed


class Handler(WebSocketHandler):  # type: ignore[misc]
    """geventwebsocket's handler (what Flask-SocketIO runs on) with the header reader above."""

    def MessageClass(self, fp: IO[bytes], *args: Any) -> OldMessage:  # noqa: N802 (gevent's name)
        return parse_headers(fp)

"""The server's header reader gives gevent exactly what gevent's own (email parser) reader gives."""

from __future__ import annotations

import io
from typing import Any

import pytest
from gevent.pywsgi import headers_factory
from hypothesis import given, settings
from hypothesis import strategies as st

from flashsale.server.headers import parse_headers

TRICKY = [
    b"Host: a\r\nUser-Agent: x\r\nContent-Length: 3\r\n\r\nabc",
    b"Host: a\r\nX-Folded: one\r\n two\r\n\tthree\r\n\r\n",
    b"Host: a\r\nX: a\rB: c\r\n\r\n",  # a bare CR splits a line for the email parser
    b": empty name\r\nHost: a\r\n\r\n",
    b"Host: a\r\nno colon here\r\nX: y\r\n\r\n",
    b"Host: a\r\nX:   spaced\t \r\n\r\n",
    b"Host: a\nX: lf only\n\n",
    b"Host: a\r\n",  # the connection ends before the blank line
    b"",
    b"From nobody\r\nHost: a\r\n\r\n",
    b"Host: a\r\nX: caf\xe9\r\n\r\n",
    b"Host: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
    b"Bad Name: v\r\n\r\n",
    b"Host: a\r\nX:\r\n\r\n",
    b"Host: a\r\n\x00X: y\r\n\r\n",
    b"X: " + b"a" * 70_000 + b"\r\n\r\n",  # longer than http.client's line limit
    b"".join(b"H%d: v\r\n" % i for i in range(101)) + b"\r\n",  # more headers than its limit
]


def read_with(reader: Any, raw: bytes) -> tuple[object, ...]:
    """Everything gevent uses from the message, and what is left on the stream after it."""
    fp = io.BufferedReader(io.BytesIO(raw))
    try:
        message = reader(fp)
    except Exception as error:  # both readers must fail alike
        return ("raised", type(error), str(error), fp.read())
    return (
        message.status,
        message.items(),
        list(message.headers),
        message.get("content-length"),
        message.typeheader,
        [type(defect) for defect in message.defects],
        fp.read(),
    )


@pytest.mark.parametrize("raw", TRICKY)
def test_the_same_message_as_gevents_reader(raw: bytes) -> None:
    assert read_with(parse_headers, raw) == read_with(headers_factory, raw)


LINE_PARTS = st.sampled_from(
    [b"Host", b"X-A", b"Content-Length", b":", b": ", b" ", b"\t", b"\r", b"\n", b"\r\n"]
    + [b"v", b"1", b"\x00", b"\xe9", b"From ", b"a b", b"_"]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(LINE_PARTS, max_size=6).map(b"".join), max_size=8))
def test_random_blocks_read_the_same(lines: list[bytes]) -> None:
    raw = b"".join(lines) + b"\r\n\r\nbody"
    assert read_with(parse_headers, raw) == read_with(headers_factory, raw)

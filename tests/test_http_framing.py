"""How the exporter's HTTP server frames requests: every head that a proxy in front could read
differently (a request smuggled in a body) is refused before any worker sees it. Raw bytes
over a real socket to a real exporter: no client library would send most of these."""

from __future__ import annotations

import socket

import pytest
from inproc import Running

HEADS = {
    # (request head and body, the status expected)
    "plain": (b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 200),
    "content-length-not-last": (b"GET /metrics HTTP/1.1\r\nContent-Length: 0\r\nHost: x\r\n\r\n",
                                200),
    "a-body-counted-by-content-length": (
        b"GET /metrics HTTP/1.1\r\nContent-Length: 2\r\nHost: x\r\n\r\n{}", 200),
    "bare-cr-in-a-header": (
        b"GET /metrics HTTP/1.1\r\nContent-Length: 5\rX: y\r\nHost: x\r\n\r\nhello", 400),
    "cr-cr-lf": (b"GET /metrics HTTP/1.1\r\nContent-Length: 5\r\r\nHost: x\r\n\r\nhello", 400),
    "obs-fold": (b"GET /metrics HTTP/1.1\r\nContent-Length: 5\r\n 6\r\nHost: x\r\n\r\nhello",
                 400),
    "two-lengths": (b"GET /metrics HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n"
                    b"Host: x\r\n\r\nab", 400),
    "obs-fold-of-an-ordinary-header": (b"GET /metrics HTTP/1.1\r\nX-A: a\r\n b\r\nHost: x\r\n\r\n",
                                       400),
    # Where Go's net/http is stricter than the old server was (issue 20): match it.
    "nul-in-a-header-value": (b"GET /metrics HTTP/1.1\r\nX-A: a\x00b\r\nHost: x\r\n\r\n", 400),
    "no-host-on-http-1.1": (b"GET /metrics HTTP/1.1\r\nX-A: a\r\n\r\n", 400),
    "tab-in-the-request-line": (b"GET\t/metrics HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "transfer-encoding-other-than-chunked": (
        b"GET /metrics HTTP/1.1\r\nTransfer-Encoding: gzip\r\nHost: x\r\n\r\n", 501),
    "space-before-the-colon": (b"GET /metrics HTTP/1.1\r\nContent-Length : 5\r\nHost: x\r\n\r\n"
                               b"hello", 400),
    "chunked": (b"GET /metrics HTTP/1.1\r\nTransfer-Encoding: chunked\r\nHost: x\r\n\r\n0\r\n\r\n",
                411),
    "a-length-beyond-the-body-limit": (
        b"GET /metrics HTTP/1.1\r\nContent-Length: 999999999\r\nHost: x\r\n\r\n", 413),
}


def status_of(exp: Running, request: bytes) -> int:
    host, port = exp.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        first = sock.recv(64)
    return int(first.split(b" ", 2)[1])


@pytest.mark.parametrize(("request_bytes", "status"), HEADS.values(), ids=HEADS.keys())
def test_a_request_head_is_framed_one_way_only(exp: Running, request_bytes: bytes,
                                               status: int) -> None:
    assert status_of(exp, request_bytes) == status

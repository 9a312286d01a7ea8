"""The WSGI side of the exporter's HTTP server: a request h11 parsed becomes an environ, and what
the app answers becomes (status, headers, body) for the server to frame. No sockets here."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable
from io import BytesIO
from typing import Any
from urllib.parse import unquote

import h11

log = logging.getLogger("polarity_exporter.httpserver")

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
Answer = tuple[int, list[tuple[str, str]], list[bytes]]  # status, headers, body
# The environ key holding when a request was complete (monotonic): time it spent queued for a
# worker counts against its scrape's deadline.
RECEIVED = "polarity_exporter.received"
_FAILED = b"request failed\n"


def environ_for(request: h11.Request, address: str, port: int, tls: bool) -> dict[str, Any]:
    """The WSGI environ of a request; repeated headers are joined with commas (RFC 9110)."""
    path, _, query = request.target.decode("latin-1").partition("?")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": request.method.decode("ascii"),
        "PATH_INFO": unquote(path, "latin-1"), "QUERY_STRING": query,
        "SERVER_PROTOCOL": f"HTTP/{request.http_version.decode('ascii')}", "SCRIPT_NAME": "",
        "REMOTE_ADDR": address, "SERVER_NAME": "polarity-exporter", "SERVER_PORT": str(port),
        "CONTENT_LENGTH": "0", "CONTENT_TYPE": "", "wsgi.version": (1, 0),
        "wsgi.url_scheme": "https" if tls else "http", "wsgi.input": BytesIO(),
        "wsgi.errors": sys.stderr, "wsgi.multithread": True, "wsgi.multiprocess": False,
        "wsgi.run_once": False, RECEIVED: time.monotonic(),
    }
    for name, value in request.headers:  # h11 gives names lowercased
        key = "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
        text = value.decode("latin-1")
        if key in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"):
            environ[key[5:]] = text
        else:
            environ[key] = f"{environ[key]},{text}" if key in environ else text
    return environ


def run_app(app: WSGIApp, environ: dict[str, Any]) -> Answer:
    """Call the app and collect its whole answer; a failing app costs this request a 500."""
    sent: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]],
                       exc_info: Any = None) -> Callable[[bytes], None]:
        sent["status"], sent["headers"] = status, headers
        return lambda _data: None  # the app returns its body; nothing writes directly

    try:
        result = app(environ, start_response)
        try:
            body = list(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        status = int(str(sent["status"]).split(" ", 1)[0])
    except Exception as exc:  # the app guards itself; this is the last line of defence
        log.error("request failed", extra={"err": one_line_error(exc)},
                  exc_info=exc)
        return 500, [("Content-Type", "text/plain"),
                     ("Content-Length", str(len(_FAILED)))], [_FAILED]
    log.debug("http request", extra={"client": environ["REMOTE_ADDR"],
                                     "request": f"{environ['REQUEST_METHOD']} "
                                                f"{environ['PATH_INFO'][:200]}",
                                     "status": str(status)})
    return status, sent["headers"], body


def one_line_error(exc: BaseException | None) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:300] if exc else ""

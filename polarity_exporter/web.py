"""The exporter's HTTP endpoint: routes, content negotiation, and a threaded server.

Routes: the telemetry path (default /metrics), / (landing page), /-/healthy, /-/ready; anything
else is 404. Only /metrics calls Polarity, so probes never load the Polarity server.

With `--web.config.file` the server speaks TLS and/or asks for basic auth (see webconfig.py).
The probes /-/healthy and /-/ready stay open without credentials: kubelet probes cannot send
basic auth without writing the password into the pod spec, and they reveal nothing.
"""

from __future__ import annotations

import gzip
import html
import logging
import math
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from polarity_exporter.exposition import choose
from polarity_exporter.httpserver import BoundedServer, listen
from polarity_exporter.wsgi import RECEIVED, one_line_error

if TYPE_CHECKING:  # webconfig needs bcrypt and PyYAML, loaded only with --web.config.file
    from polarity_exporter.servers import Fleet, Reloader
    from polarity_exporter.webconfig import BasicAuth, WebSecurity

log = logging.getLogger(__name__)

Scrape = Callable[[float], Iterable[Any]]  # timeout in seconds -> metric families
StartResponse = Callable[[str, list[tuple[str, str]]], Any]
TIMEOUT_HEADER = "HTTP_X_PROMETHEUS_SCRAPE_TIMEOUT_SECONDS"
# The floor of a scrape's deadline, whatever a client announces: each scrape waits only for its
# own deadline (scrapecache.py), so a tiny one cannot hurt other scrapes, but a fetch it starts
# still needs time to connect.
MIN_TIMEOUT = 0.5
PROBES = frozenset({"/-/healthy", "/-/ready"})  # Kubernetes' probes: answered inline
PROBE = "/probe"  # a --config.file target's metrics
RELOAD = "/-/reload"
# How long POST /-/reload waits for its reload (which runs on its own thread) before it
# answers 503: a config file on a hung mount must not hold an HTTP worker forever.
RELOAD_WAIT = 30.0
MAX_RELOAD_WAITERS = 4
# Longest query string /probe reads; a longer one is refused, never cut (a cut could turn
# ?target=prodlab into ?target=prod).
MAX_QUERY = 4096
# Free memory is handed back to the system only after answers this large: a small scrape
# leaves little to hand back, and trimming the heap costs CPU every time.
TRIM_AFTER_BYTES = 1024 * 1024
# A failing request is logged at most once per this many seconds: a client can cause one at
# will, and must not be able to flood the log.
ERROR_LOG_INTERVAL = 10.0


@dataclass(frozen=True)
class Landing:
    name: str
    version: str
    polarity_url: str


class _Sent(list[bytes]):
    """A response body that runs a callback once the server has sent it (WSGI calls close())."""

    def __init__(self, body: list[bytes], on_close: Callable[[], None]) -> None:
        super().__init__(body)
        self._on_close = on_close

    def close(self) -> None:
        self.clear()  # drop the body before the callback, so that its memory counts as free
        self._on_close()


class ExporterApp:
    """A WSGI application; it does not know how it is served."""

    def __init__(self, scrape: Scrape, *, telemetry_path: str, default_timeout: float,
                 timeout_offset: float, landing: Landing,
                 security: WebSecurity | None = None,
                 after_scrape: Callable[[], None] | None = None,
                 encoded: Callable[[float], None] | None = None,
                 fleet: Fleet | None = None, reloader: Reloader | None = None) -> None:
        self._scrape = scrape
        self._fleet = fleet  # --config.file: /probe
        self._reloader = reloader  # and /-/reload
        # Each POST /-/reload holds a worker while it waits: a few may, the rest answer 503.
        self._reload_waiters = threading.BoundedSemaphore(MAX_RELOAD_WAITERS)
        self._encoded = encoded  # told how long each answer took to encode
        self._after_scrape = after_scrape
        self._security = security
        # Built here, not in the configuration: it keeps a lock and a cache of checked
        # credentials, state that belongs to the running endpoint.
        self._basic_auth: BasicAuth | None = None
        if security is not None and security.basic_auth_users:
            from polarity_exporter.webconfig import BasicAuth  # needs bcrypt: only when asked

            self._basic_auth = BasicAuth(security.basic_auth_users)
        self._path = telemetry_path
        self._default_timeout = default_timeout
        self._offset = timeout_offset
        self._landing = landing
        self.ready = threading.Event()
        self._log_lock = threading.Lock()
        self._next_error_log = 0.0
        self._suppressed = 0

    @property
    def timeout_offset(self) -> float:
        return self._offset

    def scrape_timeout(self, environ: dict[str, Any], ceiling: float | None = None) -> float:
        """Prometheus' scrape timeout less the offset, within [MIN_TIMEOUT, the server's
        --polarity.timeout]; --polarity.timeout without the header. Any header value gives a
        usable deadline. The time the request waited for a worker is taken off: the deadline
        started when the request arrived (down to MIN_TIMEOUT still)."""
        ceiling = self._default_timeout if ceiling is None else ceiling
        header = environ.get(TIMEOUT_HEADER)
        value = ceiling
        if header:
            try:
                announced = float(header[:64]) - self._offset
            except ValueError:
                announced = math.nan
            if math.isnan(announced):
                log.debug("ignoring bad scrape timeout header", extra={"value": header[:32]})
            else:
                value = min(ceiling, max(MIN_TIMEOUT, announced))
        queued = time.monotonic() - environ.get(RECEIVED, math.inf)
        return max(MIN_TIMEOUT, value - queued) if queued > 0 else value

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        try:
            return self._handle(environ, start_response)
        except Exception as exc:  # a bug must cost one request, not the exporter
            self._log_failure(exc)  # with its traceback at debug level
            return _reply(start_response, "500 Internal Server Error", b"request failed\n")

    def _log_failure(self, exc: BaseException) -> None:
        now = time.monotonic()
        with self._log_lock:
            if now < self._next_error_log:
                self._suppressed += 1
                return
            self._next_error_log, suppressed, self._suppressed = \
                now + ERROR_LOG_INTERVAL, self._suppressed, 0
        log.error("request failed unexpectedly", exc_info=exc,
                  extra={"err": one_line_error(exc), "suppressed": suppressed})

    def _handle(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        path = environ.get("PATH_INFO") or "/"
        security = self._security
        if security is None:
            return self._route(path, environ, start_response)
        headers = list(security.headers.items())

        def respond(status: str, response_headers: list[tuple[str, str]]) -> Any:
            return start_response(status, [*response_headers, *headers])

        auth = self._basic_auth
        if auth is not None and path not in PROBES \
                and not auth.check(environ.get("HTTP_AUTHORIZATION")):
            return _reply(respond, "401 Unauthorized", b"Unauthorized\n",
                          extra=[("WWW-Authenticate", 'Basic realm="polarity-exporter"')])
        return self._route(path, environ, respond)

    def _route(self, path: str, environ: dict[str, Any],
               start_response: StartResponse) -> list[bytes]:
        if path == RELOAD and self._reloader is not None:
            return self._reload(environ, start_response)
        if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
            return _reply(start_response, "405 Method Not Allowed", b"method not allowed\n",
                          extra=[("Allow", "GET, HEAD")])
        if path == self._path:
            return self._metrics(environ, start_response)
        if path == PROBE and self._fleet is not None:
            return self._probe(self._fleet, environ, start_response)
        if path == "/":
            return _reply(start_response, "200 OK", self._landing_page(),
                          "text/html; charset=utf-8")
        if path == "/-/healthy":
            return _reply(start_response, "200 OK", b"Healthy\n")
        if path == "/-/ready":
            if self.ready.is_set():
                return _reply(start_response, "200 OK", b"Ready\n")
            return _reply(start_response, "503 Service Unavailable", b"Not ready\n")
        return _reply(start_response, "404 Not Found", b"not found\n")

    def _metrics(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        return self._answer(list(self._scrape(self.scrape_timeout(environ))), environ,
                            start_response, self._encoded)

    def _probe(self, fleet: Fleet, environ: dict[str, Any],
               start_response: StartResponse) -> list[bytes]:
        """/probe?target=NAME: a configured target's families. Anything else is a 400 before
        any connection is made: the request never chooses where the exporter connects."""
        name, problem = probe_target(environ.get("QUERY_STRING", ""))
        probed = fleet.probe(name, lambda server: self.scrape_timeout(
            environ, server.config.timeout)) if not problem else None
        if probed is None:
            problem = problem or f"unknown target {name[:64]!r}: not in --config.file"
            return _reply(start_response, "400 Bad Request", f"{problem}\n".encode())
        server, families = probed
        return self._answer(families, environ, start_response, server.shared.encoded)

    def _reload(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        assert self._reloader is not None
        if environ.get("REQUEST_METHOD") != "POST":
            return _reply(start_response, "405 Method Not Allowed", b"use POST to reload\n",
                          extra=[("Allow", "POST")])
        if not self._reload_waiters.acquire(blocking=False):
            return _reply(start_response, "503 Service Unavailable",
                          b"too many reload requests waiting; try again later\n")
        try:
            finished, problem = self._reloader.wait(self._reloader.request(), RELOAD_WAIT)
        finally:
            self._reload_waiters.release()
        if not finished:
            return _reply(start_response, "503 Service Unavailable",
                          b"reload still running; see the log and "
                          b"polarity_exporter_config_last_reload_successful\n")
        if problem is not None:
            return _reply(start_response, "500 Internal Server Error",
                          f"reload failed: {problem}\n".encode())
        return _reply(start_response, "200 OK", b"reloaded\n")

    def _answer(self, families: list[Any], environ: dict[str, Any],
                start_response: StartResponse,
                encoded: Callable[[float], None] | None) -> list[bytes]:
        encoder, content_type = choose(environ.get("HTTP_ACCEPT", ""))
        started = time.monotonic()
        body = encoder(families)
        headers = [("Content-Type", content_type)]
        if "gzip" in environ.get("HTTP_ACCEPT_ENCODING", ""):
            # Level 1, as Prometheus' Go client: most of the gain for a fraction of the CPU.
            body = gzip.compress(body, compresslevel=1)
            headers.append(("Content-Encoding", "gzip"))
        headers.append(("Vary", "Accept, Accept-Encoding"))
        if encoded is not None:
            encoded(time.monotonic() - started)
        reply = _reply(start_response, "200 OK", body, extra=headers)
        if self._after_scrape is None or len(body) < TRIM_AFTER_BYTES:
            return reply
        return _Sent(reply, self._after_scrape)

    def _landing_page(self) -> bytes:
        name = html.escape(self._landing.name)
        metrics = html.escape(self._path)
        return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{name}</title></head>
<body>
<h1>{name}</h1>
<p>Version {html.escape(self._landing.version)}</p>
<p>Polarity server: <code>{html.escape(self._landing.polarity_url)}</code></p>
<ul>
<li><a href="{metrics}">Metrics</a></li>
<li><a href="/-/healthy">Health</a></li>
<li><a href="/-/ready">Readiness</a></li>
</ul>
</body></html>
""".encode()


def probe_target(query: str) -> tuple[str, str]:
    """(the target name, "") from /probe's query string, or ("", the one-line reason it is
    refused): exactly one `target`, a name, never a URL."""
    if len(query) > MAX_QUERY:
        return "", f"query string longer than {MAX_QUERY} characters"
    try:
        params = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query),
                          max_num_fields=16)
    except ValueError:
        return "", "bad query string: want ?target=NAME"
    values = params.get("target", [])
    if len(values) != 1:
        return "", ("missing target parameter: want ?target=NAME" if not values else
                    "repeated target parameter: give exactly one")
    name = values[0]
    if "/" in name or ":" in name:
        return "", "target must name a target of --config.file, not a URL"
    if not name:
        return "", "empty target parameter: want ?target=NAME"
    return name, ""


def _reply(start_response: StartResponse, status: str, body: bytes,
           content_type: str = "text/plain; charset=utf-8",
           extra: list[tuple[str, str]] | None = None) -> list[bytes]:
    headers = extra if extra and any(k == "Content-Type" for k, _ in extra) else \
        [("Content-Type", content_type), *(extra or [])]
    headers.append(("Content-Length", str(len(body))))
    start_response(status, headers)
    return [body]


def bind(app: ExporterApp, host: str, port: int, tls: ssl.SSLContext | None = None,
         **limits: Any) -> BoundedServer:
    """Bind the listening socket; raises OSError with the system's reason."""
    return BoundedServer(app, listen(host, port), tls, inline_paths=PROBES, **limits)

"""The exporter's HTTP endpoint: routes, content negotiation, and a threaded server.

Routes: the telemetry path (default /metrics), / (landing page), /-/healthy, /-/ready; anything
else is 404. Only /metrics calls Polarity, so probes never load the Polarity server.

With `--web.config.file` the server speaks TLS and/or asks for basic auth (see webconfig.py).
The probes /-/healthy and /-/ready stay open without credentials: kubelet probes cannot send
basic auth without writing the password into the pod spec, and they reveal nothing.
"""

from __future__ import annotations

import html
import logging
import math
import re
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from polarity_exporter import gzipped, metrics
from polarity_exporter.exposition import PARTS, choose, join
from polarity_exporter.fetchlog import printable_line
from polarity_exporter.history import History
from polarity_exporter.httpserver import BoundedServer, listen
from polarity_exporter.wsgi import RECEIVED, one_line_error

if TYPE_CHECKING:  # webconfig needs bcrypt and PyYAML, loaded only with --web.config.file
    from polarity_exporter.scrapecache import Scraped
    from polarity_exporter.servers import Fleet, Reloader
    from polarity_exporter.webconfig import WebSecurity
    from polarity_exporter.weblive import LiveWebConfig

log = logging.getLogger(__name__)

Scrape = Callable[[float], "Scraped"]  # timeout in seconds -> families and the fetch's log
StartResponse = Callable[[str, list[tuple[str, str]]], Any]
TIMEOUT_HEADER = "HTTP_X_PROMETHEUS_SCRAPE_TIMEOUT_SECONDS"
# The floor of a scrape's deadline, whatever a client announces: each scrape waits only for its
# own deadline (scrapecache.py), so a tiny one cannot hurt other scrapes, but a fetch it starts
# still needs time to connect.
MIN_TIMEOUT = 0.5
PROBES = frozenset({"/-/healthy", "/-/ready"})  # Kubernetes' probes: answered inline
PROBE = "/probe"  # a --config.file target's metrics
LOGS = "/logs"  # /logs?id=N: the log of a recent scrape (the landing page links them)
RELOAD = "/-/reload"
# How long POST /-/reload waits for its reload (which runs on its own thread) before it
# answers 503: a config file on a hung mount must not hold an HTTP worker forever.
RELOAD_WAIT = 30.0
MAX_RELOAD_WAITERS = 4
# Longest query string /probe reads; a longer one is refused, never cut (a cut could turn
# ?target=prodlab into ?target=prod).
MAX_QUERY = 4096
_HISTORY_ID = re.compile(r"[0-9]{1,18}")
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
                 security: WebSecurity | LiveWebConfig | None = None,
                 after_scrape: Callable[[], None] | None = None,
                 encoded: Callable[[float], None] | None = None,
                 fleet: Fleet | None = None, reloader: Reloader | None = None,
                 history: History | None = None, history_target: str | None = None) -> None:
        self._scrape = scrape
        self._history = history if history is not None else History(0)
        # What /metrics entries are called in the history; None: /metrics asks no Polarity
        # server (only --config.file targets), and is not recorded.
        self._history_target = history_target
        self._fleet = fleet  # --config.file: /probe
        self._reloader = reloader  # and /-/reload
        # Each POST /-/reload holds a worker while it waits: a few may, the rest answer 503.
        self._reload_waiters = threading.BoundedSemaphore(MAX_RELOAD_WAITERS)
        self._encoded = encoded  # told how long each answer took to encode
        self._after_scrape = after_scrape
        # The web config in effect, read again when its file changes (weblive.py); built here,
        # not in the configuration: it keeps a cache of checked credentials and a rate
        # limiter, state that belongs to the running endpoint.
        self.web: LiveWebConfig | None = None
        if security is not None:
            from polarity_exporter.weblive import LiveWebConfig  # bcrypt, PyYAML: when asked

            self.web = security if isinstance(security, LiveWebConfig) else \
                LiveWebConfig(None, security)
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
        if self.web is None:
            return self._route(path, environ, start_response)
        state = self.web.current()
        headers = list(state.security.headers.items())

        def respond(status: str, response_headers: list[tuple[str, str]]) -> Any:
            return start_response(status, [*response_headers, *headers])

        # rate_limit, as exporter-toolkit applies it (before authentication); the probes are
        # exempt: a kubelet must never see its liveness probe refused.
        if state.limiter is not None and path not in PROBES and not state.limiter.allow():
            return _reply(respond, "429 Too Many Requests", b"Too Many Requests\n")
        auth = state.basic_auth
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
        if path == LOGS:
            return self._logs(environ, start_response)
        if path == "/-/healthy":
            return _reply(start_response, "200 OK", b"Healthy\n")
        if path == "/-/ready":
            if self.ready.is_set():
                return _reply(start_response, "200 OK", b"Ready\n")
            return _reply(start_response, "503 Service Unavailable", b"Not ready\n")
        return _reply(start_response, "404 Not Found", b"not found\n")

    def _metrics(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        debug, problem = debug_flag(environ.get("QUERY_STRING", ""))
        if problem:
            return _reply(start_response, "400 Bad Request", f"{problem}\n".encode())
        scraped = self._scrape(self.scrape_timeout(environ))
        target = self._history_target
        if target is not None:
            self._remember(target, scraped, environ)
        if debug:
            return self._debug(target or self._path, scraped, environ, start_response)
        return self._answer(scraped.families, environ, start_response, self._encoded)

    def _remember(self, target: str, scraped: Scraped, environ: dict[str, Any]) -> None:
        received = environ.get(RECEIVED)
        duration = time.monotonic() - received if received is not None else 0.0
        self._history.add(target, result_of(scraped), duration, scraped.log)

    def _debug(self, target: str, scraped: Scraped, environ: dict[str, Any],
               start_response: StartResponse) -> list[bytes]:
        """?debug=true: the fetch's log, then the metrics as the same request without it
        would have had them (blackbox_exporter's debug output)."""
        encoder, _ = choose(environ.get("HTTP_ACCEPT", ""))
        result = printable_line(result_of(scraped), 1000)  # Polarity's text: no ESC to a terminal
        head = (f"Log of the Polarity fetch behind this answer (target {target}; result: "
                f"{result}):\n\n{scraped.log.text()}\n"
                "Metrics that would have been returned:\n\n")
        return _reply(start_response, "200 OK", head.encode() + encoder(scraped.families))

    def _logs(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        query = environ.get("QUERY_STRING", "")
        try:  # as /metrics and /probe read theirs: never cut, never two answers to one name
            ids = parse_qs(query, max_num_fields=16).get("id", []) \
                if len(query) <= MAX_QUERY else []
        except ValueError:
            ids = []
        if len(ids) != 1:
            return _reply(start_response, "400 Bad Request",
                          b"give id once, in a query string of at most "
                          + str(MAX_QUERY).encode() + b" characters\n")
        ident = ids[0]
        # ASCII digits only: str.isdigit() is also true of "①", which int() refuses.
        entry = self._history.get(int(ident)) if _HISTORY_ID.fullmatch(ident) else None
        if entry is None:
            return _reply(start_response, "404 Not Found",
                          b"no such scrape in the history (it keeps --history.limit)\n")
        head = (f"Scrape {entry.id} of {entry.target} at {_iso(entry.time)}, "
                f"{entry.duration:.3f}s: {entry.result}\n\n")
        return _reply(start_response, "200 OK", (head + entry.log.text()).encode())

    def _probe(self, fleet: Fleet, environ: dict[str, Any],
               start_response: StartResponse) -> list[bytes]:
        """/probe?target=NAME: a configured target's families. Anything else is a 400 before
        any connection is made: the request never chooses where the exporter connects."""
        query = environ.get("QUERY_STRING", "")
        name, problem = probe_target(query)
        debug, debug_problem = debug_flag(query) if not problem else (False, "")
        problem = problem or debug_problem
        probed = fleet.probe(name, lambda server: self.scrape_timeout(
            environ, server.config.timeout)) if not problem else None
        if probed is None:
            problem = problem or f"unknown target {name[:64]!r}: not in --config.file"
            return _reply(start_response, "400 Bad Request", f"{problem}\n".encode())
        server, scraped = probed
        self._remember(name, scraped, environ)
        if debug:
            return self._debug(name, scraped, environ, start_response)
        return self._answer(scraped.families, environ, start_response, server.shared.encoded)

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
        parts = PARTS[encoder](families)
        headers = [("Content-Type", content_type)]
        if "gzip" in environ.get("HTTP_ACCEPT_ENCODING", ""):
            body = gzipped.compress(parts)
            headers.append(("Content-Encoding", "gzip"))
        else:
            body = join(parts)
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
<html lang="en"><head><meta charset="utf-8"><title>{name}</title>
<style>table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:2px 6px;
text-align:left;vertical-align:top}}</style></head>
<body>
<h1>{name}</h1>
<p>Version {html.escape(self._landing.version)}</p>
<p>Polarity server: <code>{html.escape(self._landing.polarity_url)}</code></p>
<ul>
<li><a href="{metrics}">Metrics</a> (<a href="{metrics}?debug=true">with the fetch's log</a>)</li>
<li><a href="/-/healthy">Health</a></li>
<li><a href="/-/ready">Readiness</a></li>
</ul>
{self._history_table()}
</body></html>
""".encode()

    def _history_table(self) -> str:
        # The page is built per request: with --history.limit 1000 and results full of "<"
        # (4 times longer escaped), at most ~1.5 MB. Each row shows the start of its result;
        # the whole is in its log.
        history = self._history
        if history.limit <= 0:
            return "<p>Recent scrapes are not kept (--history.limit 0).</p>"
        entries = history.entries()
        if not entries:
            return "<h2>Recent scrapes</h2>\n<p>No scrape yet.</p>"
        rows = "\n".join(
            f'<tr><td>{_iso(e.time)}</td><td>{html.escape(e.target)}</td>'
            f'<td class="{"up" if e.result == "up" else "down"}">'
            f'{html.escape(_shown(e.result))}</td>'
            f'<td>{e.duration:.3f}s</td><td><a href="{LOGS}?id={e.id}">log</a></td></tr>'
            for e in entries)
        return (f"<h2>Recent scrapes</h2>\n<p>The last {history.limit} scrapes and probes, "
                "newest first.</p>\n<table>\n<tr><th>Time (UTC)</th><th>Target</th>"
                f"<th>Result</th><th>Duration</th><th>Log</th></tr>\n{rows}\n</table>")


def debug_flag(query: str) -> tuple[bool, str]:
    """(whether ?debug=true was asked, "") or (False, the one-line reason it is refused)."""
    if len(query) > MAX_QUERY:
        return False, f"query string longer than {MAX_QUERY} characters"
    try:
        values = parse_qs(query, keep_blank_values=True, max_num_fields=16).get("debug", [])
    except ValueError:
        return False, "bad query string"
    if not values:
        return False, ""
    if len(values) > 1 or values[0] not in ("true", "false"):
        return False, "debug must be given once, as true or false"
    return values[0] == "true", ""


def result_of(scraped: Scraped) -> str:
    """One line for the history: "up", or why not."""
    for family in scraped.families:
        if family.name == metrics.UP.name:
            if any(sample.value == 1.0 for sample in family.samples):
                return "up"
            break
    outcome = scraped.log.outcome
    if outcome.startswith("down"):
        return outcome
    return "down: the scrape's deadline passed before the Polarity fetch finished"


# Characters of a result shown on the landing page (the log has all of it).
SHOWN_RESULT = 300


def _shown(result: str) -> str:
    return result if len(result) <= SHOWN_RESULT else result[:SHOWN_RESULT - 1] + "\u2026"


def _iso(when: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(when))


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
    """Bind the listening socket; raises OSError with the system's reason. With a web config
    that has TLS, each new connection takes the context in effect (the file may change)."""
    source: Any = tls
    if tls is None and app.web is not None and app.web.tls:
        source = app.web
    return BoundedServer(app, listen(host, port), source, inline_paths=PROBES, **limits)

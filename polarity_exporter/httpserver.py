"""A small HTTP/1.1 server for the exporter's WSGI app, bounded against careless or hostile
clients (the way Go's net/http is configured in well-run exporters).

    accept ──> reading the head (selector, no thread) ──complete──> a worker runs the app
       │            │ header deadline passed / EOF: closed, never served      │
       │            └ idle keep-alive deadline passed: closed                 │ keep-alive:
       │  at the connection cap: the longest-waiting idle connection is       │ back to reading
       └─ closed to make room (all busy: 503)                                 v

- TLS handshakes and request heads are read on one selector loop, without a thread each:
  idle, trickling or half-open connections cost a file descriptor, not a thread. A head must be
  complete within HEADER_TIMEOUT of the connection (or of the last answer, for keep-alive), as
  one deadline; a head cut off by EOF is never served.
- Complete requests run on a fixed pool of WORKERS threads. Connections are capped at
  MAX_CONNECTIONS; past it the connection that has waited longest without sending a complete
  request is closed, so idle clients cannot lock others out.
- Answers are written with a deadline (WRITE_TIMEOUT) over the whole body.
- `shutdown(grace)` stops accepting, closes every connection not running a request at once, lets
  requests in flight finish for up to `grace` seconds, then cuts what is left.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import logging
import re
import selectors
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from polarity_exporter.deadline import WATCHDOG, Deadline

log = logging.getLogger(__name__)

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

HEADER_TIMEOUT = 5.0  # seconds for a request head (and the TLS handshake before the first)
IDLE_TIMEOUT = 60.0  # seconds a kept-alive connection may wait for its next request
WRITE_TIMEOUT = 60.0  # seconds to write one answer, whole
MAX_HEAD_BYTES = 16 * 1024
MAX_BODY_BYTES = 64 * 1024  # the exporter takes no request bodies; small ones are discarded
MAX_CONNECTIONS = 128
ACCEPT_BATCH = 16  # connections accepted per turn of the loop
WORKERS = 32  # threads running requests: scrapes share one fetch, but each waits in one


class _Rejected(Exception):
    """A request head the server answers itself (status, reason) and closes."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(eq=False)
class _Connection:
    sock: socket.socket
    address: str
    deadline: float  # monotonic: when waiting for this connection's next head ends
    tls_pending: bool = False  # a TLS connection whose handshake has not completed
    buffer: bytearray = field(default_factory=bytearray)
    busy: bool = False  # a worker is running a request on it
    watched: bool = False  # registered with the selector (only these may be evicted)
    continued: bool = False  # "100 Continue" sent for the request being read
    served: int = 0  # requests answered on it


class BoundedServer:
    """Serves one WSGI app on one listening socket; `serve_forever` in a thread of its own."""

    def __init__(self, app: WSGIApp, listener: socket.socket,
                 tls: ssl.SSLContext | None = None, *, header_timeout: float = HEADER_TIMEOUT,
                 idle_timeout: float = IDLE_TIMEOUT, max_connections: int = MAX_CONNECTIONS,
                 workers: int = WORKERS, inline_paths: frozenset[str] = frozenset()) -> None:
        # Paths answered on the loop thread, never queued behind workers: the probes.
        self._inline = inline_paths
        self._app = app
        self._listener = listener
        self._listener.setblocking(False)
        self.tls = tls
        self._header_timeout = header_timeout
        self._idle_timeout = idle_timeout
        self._max_connections = max_connections
        self._workers = ThreadPoolExecutor(workers, thread_name_prefix="http-worker")
        self._selector = selectors.DefaultSelector()
        self._wake_read, self._wake_write = socket.socketpair()
        self._wake_read.setblocking(False)
        self._lock = threading.Lock()  # guards the sets below and _returned; never across I/O
        self._connections: set[_Connection] = set()
        self._returned: list[_Connection] = []  # kept-alive connections handed back by workers
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._idle_done = threading.Condition(self._lock)

    @property
    def server_address(self) -> tuple[Any, ...]:
        return tuple(self._listener.getsockname())

    @property
    def server_port(self) -> int:
        return int(self._listener.getsockname()[1])

    # --- the selector loop --------------------------------------------------------------------

    def serve_forever(self) -> None:
        self._selector.register(self._listener, selectors.EVENT_READ, "accept")
        self._selector.register(self._wake_read, selectors.EVENT_READ, "wake")
        try:
            while not self._stopping.is_set():
                try:
                    self._turn()
                except Exception as exc:
                    log.error("http server loop error", extra={"err": one_line_error(exc)})
        finally:
            self._selector.close()
            self._stopped.set()

    def _turn(self) -> None:
        for key, _ in self._selector.select(self._next_timeout()):
            if key.data == "accept":
                self._accept()
            elif key.data == "wake":
                self._drain_wake()
            else:
                self._readable(key.data)
        self._take_back()
        self._expire()

    def _next_timeout(self) -> float | None:
        with self._lock:
            waiting = [c.deadline for c in self._connections if not c.busy]
        if not waiting:
            return None  # nothing to expire: sleep until a connection or a wake-up
        return max(0.0, min(waiting) - time.monotonic())

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_write.send(b"x")

    def _drain_wake(self) -> None:
        with contextlib.suppress(OSError):
            while self._wake_read.recv(4096):
                pass

    def _accept(self) -> None:
        # A few at a time: the requests of connections already accepted are read in between,
        # so a flood of new connections cannot evict one whose request has arrived.
        for _ in range(ACCEPT_BATCH):
            try:
                sock, address = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of file descriptors, say: log, keep serving
                log.warning("cannot accept a connection", extra={"err": str(exc)})
                return
            if not self._make_room():
                _refuse(sock)
                continue
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Connection(sock, str(address[0]), time.monotonic() + self._header_timeout,
                               tls_pending=self.tls is not None)
            with self._lock:
                self._connections.add(conn)
            self._watch(conn)

    def _make_room(self) -> bool:
        """Below the cap, or made so by closing the connection that waited longest without a
        complete request; False when every connection is running a request."""
        with self._lock:
            if len(self._connections) < self._max_connections:
                return True
            idle = [c for c in self._connections if c.watched]
        if not idle:
            return False
        oldest = min(idle, key=lambda c: c.deadline)
        log.debug("connection limit reached: closing the longest-idle connection",
                  extra={"client": oldest.address})
        self._close(oldest)
        return True

    def _watch(self, conn: _Connection) -> None:
        self._selector.register(conn.sock, selectors.EVENT_READ, conn)
        conn.watched = True

    def _unwatch(self, conn: _Connection) -> None:
        if conn.watched:
            conn.watched = False
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(conn.sock)

    def _readable(self, conn: _Connection) -> None:
        try:
            if conn.tls_pending and not self._handshake(conn):
                return
            data = conn.sock.recv(65536)
        except (ssl.SSLWantReadError, BlockingIOError):
            return
        except (OSError, ValueError) as exc:
            log.debug("http connection error", extra={"client": conn.address,
                                                      "err": one_line_error(exc)})
            self._close(conn)
            return
        if not data:  # EOF: a head cut short is never served
            self._close(conn)
            return
        if not conn.buffer and conn.served:  # the next request's head begins: 5 s for it
            conn.deadline = min(conn.deadline, time.monotonic() + self._header_timeout)
        conn.buffer += data
        self._dispatch_if_complete(conn)

    def _dispatch_if_complete(self, conn: _Connection) -> None:
        """Once a whole request (head and body) has arrived: answer a probe here, hand anything
        else to a worker. Workers never wait for a client's bytes."""
        end = conn.buffer.find(b"\r\n\r\n")
        if end < 0 or end > MAX_HEAD_BYTES:
            if len(conn.buffer) > MAX_HEAD_BYTES:
                self._answer_and_close(conn, "431 Request Header Fields Too Large")
            return
        head = bytes(conn.buffer[:end])
        problem, length = _check_head(head)
        if problem:
            self._answer_and_close(conn, problem)
            return
        if len(conn.buffer) < end + 4 + length:  # the body is still on its way
            if not conn.continued and _EXPECT_CONTINUE.search(head):
                conn.continued = True
                with contextlib.suppress(OSError):
                    conn.sock.send(b"HTTP/1.1 100 Continue\r\n\r\n")
            return
        del conn.buffer[: end + 4 + length]
        conn.continued = False
        self._unwatch(conn)
        if _target(head) in self._inline:
            self._serve_inline(conn, head)
            return
        with self._lock:
            conn.busy = True
        try:
            self._workers.submit(self._serve, conn, head)
        except RuntimeError:  # shutting down
            self._close(conn)

    def _serve_inline(self, conn: _Connection, head: bytes) -> None:
        """A probe, answered on the loop thread: it must answer within a second even when every
        worker is busy. Its answer is small; a client that does not read it is closed."""
        try:
            answer, keep = self._answer(conn, head)
            sent = conn.sock.send(answer)
        except (OSError, ValueError) as exc:
            log.debug("http connection error", extra={"client": conn.address,
                                                      "err": one_line_error(exc)})
            self._close(conn)
            return
        if sent < len(answer) or not keep or self._stopping.is_set():
            self._close(conn)
            return
        conn.served += 1
        conn.deadline = time.monotonic() + self._idle_timeout
        self._watch(conn)
        if conn.buffer:
            self._dispatch_if_complete(conn)

    def _handshake(self, conn: _Connection) -> bool:
        """Advance a TLS handshake; True once the connection is ready for its request."""
        if not isinstance(conn.sock, ssl.SSLSocket):
            first = conn.sock.recv(1, socket.MSG_PEEK)
            if not first:
                raise ConnectionResetError("closed before the TLS handshake")
            if first != b"\x16":  # not a TLS handshake record: plain HTTP on the TLS port
                # Go's servers answer the same way, which tells the operator what is wrong.
                with contextlib.suppress(OSError):
                    conn.sock.send(b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\n"
                                   b"Connection: close\r\n\r\n"
                                   b"Client sent an HTTP request to an HTTPS server.\n")
                self._close(conn)
                return False
            assert self.tls is not None
            self._unwatch(conn)
            conn.sock = self.tls.wrap_socket(conn.sock, server_side=True,
                                             do_handshake_on_connect=False)
            self._watch(conn)
        conn.sock.do_handshake()  # SSLWantReadError: not yet
        conn.tls_pending = False
        return True

    def _take_back(self) -> None:
        with self._lock:
            returned, self._returned = self._returned, []
        for conn in returned:
            if self._stopping.is_set() or conn.sock.fileno() < 0:
                self._close(conn)
                continue
            self._watch(conn)
            if isinstance(conn.sock, ssl.SSLSocket) and conn.sock.pending():
                self._readable(conn)  # decrypted bytes the selector cannot see
            elif conn.buffer:  # a pipelined request arrived with the last one
                self._dispatch_if_complete(conn)

    def _expire(self) -> None:
        now = time.monotonic()
        with self._lock:
            expired = [c for c in self._connections if not c.busy and c.deadline <= now]
        for conn in expired:
            log.debug("closing a connection that sent no complete request in time",
                      extra={"client": conn.address})
            self._close(conn)

    def _close(self, conn: _Connection) -> None:
        """Close a connection the loop watches (loop thread only: selectors are not
        thread-safe)."""
        self._unwatch(conn)
        self._forget(conn)

    def _forget(self, conn: _Connection) -> None:
        """Close a connection the loop does not watch (any thread)."""
        with self._lock:
            self._connections.discard(conn)
            self._idle_done.notify_all()
        _shut(conn.sock)

    def _answer_and_close(self, conn: _Connection, status: str) -> None:
        with contextlib.suppress(OSError):
            conn.sock.send(_closing_answer(status, status.split(" ", 1)[1]))
        self._close(conn)

    # --- the workers --------------------------------------------------------------------------

    def _serve(self, conn: _Connection, head: bytes) -> None:
        keep = False
        guard = WATCHDOG.arm(Deadline(WRITE_TIMEOUT))
        guard.watch(conn.sock)
        try:
            conn.sock.setblocking(True)
            conn.sock.settimeout(self._header_timeout)
            keep = self._respond(conn, head)
        except Exception as exc:
            log.debug("http connection error", extra={"client": conn.address,
                                                      "err": one_line_error(exc)})
        finally:
            guard.disarm()
        if keep and not self._stopping.is_set() and not guard.fired:
            conn.sock.setblocking(False)
            conn.deadline = time.monotonic() + self._idle_timeout
            with self._lock:
                conn.busy = False
                conn.served += 1
                self._returned.append(conn)
            self._wake()
        else:
            with self._lock:
                conn.busy = False
            self._forget(conn)

    def _respond(self, conn: _Connection, head: bytes) -> bool:
        """Answer one request (worker thread); whether the connection may carry another."""
        answer, keep = self._answer(conn, head)
        conn.sock.sendall(answer)
        return keep

    def _answer(self, conn: _Connection, head: bytes) -> tuple[bytes, bool]:
        """The whole answer to one request, and whether the connection may carry another."""
        try:
            environ, keep = self._environ(conn, head)
        except _Rejected as rejected:
            return _closing_answer(rejected.status, str(rejected)), False
        keep = keep and not self._stopping.is_set()
        sent: dict[str, Any] = {}

        def start_response(status: str, headers: list[tuple[str, str]],
                           exc_info: Any = None) -> Callable[[bytes], None]:
            sent["status"], sent["headers"] = status, headers
            return lambda _data: None  # the app returns its body; nothing writes directly

        result = self._app(environ, start_response)
        try:
            log.debug("http request", extra={"client": conn.address,
                                             "request": f"{environ['REQUEST_METHOD']} "
                                                        f"{environ['PATH_INFO'][:200]}",
                                             "status": str(sent.get("status", ""))[:3]})
            lines = [f"HTTP/1.1 {sent['status']}"]
            lines += [f"{name}: {value}" for name, value in sent["headers"]]
            lines.append("Connection: keep-alive" if keep else "Connection: close")
            parts = [("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")]
            if environ["REQUEST_METHOD"] != "HEAD":
                parts += list(result)
            return b"".join(parts), keep
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()

    def _environ(self, conn: _Connection, head: bytes) -> tuple[dict[str, Any], bool]:
        line, _, rest = head.partition(b"\r\n")
        parts = line.decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _Rejected("400 Bad Request", "bad request line")
        method, target, version = parts
        try:
            headers = http.client.parse_headers(io.BytesIO(rest + b"\r\n\r\n"))
        except (http.client.HTTPException, ValueError) as exc:
            raise _Rejected("400 Bad Request", "bad headers") from exc
        length = headers.get("Content-Length", "0").strip() or "0"
        path, _, query = target.partition("?")
        environ: dict[str, Any] = {
            "REQUEST_METHOD": method, "PATH_INFO": unquote(path, "latin-1"),
            "QUERY_STRING": query, "SERVER_PROTOCOL": version, "SCRIPT_NAME": "",
            "REMOTE_ADDR": conn.address, "SERVER_NAME": "polarity-exporter",
            "SERVER_PORT": str(self.server_port), "CONTENT_LENGTH": length,
            "CONTENT_TYPE": headers.get("Content-Type", ""),
            "wsgi.version": (1, 0), "wsgi.url_scheme": "https" if self.tls else "http",
            "wsgi.input": io.BytesIO(), "wsgi.errors": sys.stderr, "wsgi.multithread": True,
            "wsgi.multiprocess": False, "wsgi.run_once": False,
        }
        for name, value in headers.items():
            key = "HTTP_" + name.upper().replace("-", "_")
            if key not in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"):
                environ[key] = f"{environ[key]},{value}" if key in environ else value
        connection = headers.get("Connection", "").lower()
        keep = "close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection
        return environ, keep

    # --- shutdown -----------------------------------------------------------------------------

    def shutdown(self, grace: float) -> None:
        """Stop accepting, close idle connections now, let requests in flight finish for up to
        `grace` seconds, then cut the rest. Returns when no request is running."""
        self._stopping.set()
        self._wake()
        self._stopped.wait(5)
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            idle = [c for c in self._connections if not c.busy]
        for conn in idle:  # the loop has stopped: nothing watches them any more
            self._forget(conn)
        end = time.monotonic() + grace
        with self._lock:
            while self._connections and time.monotonic() < end:
                self._idle_done.wait(end - time.monotonic())
            left = list(self._connections)
        for conn in left:
            log.warning("shutdown grace period over: closing a connection with a request "
                        "in flight", extra={"client": conn.address})
            _shut(conn.sock)
        self._workers.shutdown(wait=False, cancel_futures=True)
        for sock in (self._wake_read, self._wake_write):
            sock.close()


# Header lines end in CRLF: the value stops before the CR (with re.M alone, "$" matches only
# before the LF, and a Content-Length that is not the last line would keep its CR).
_CONTENT_LENGTH = re.compile(rb"^content-length:[ \t]*([^\r\n]*?)[ \t]*\r?$", re.I | re.M)
_BARE_CR = re.compile(rb"\r(?!\n)")
_FOLDED = re.compile(rb"(?:^|\n)[ \t]")
_EXPECT_CONTINUE = re.compile(rb"^expect:[ \t]*100-continue", re.I | re.M)
_BAD_NAME = re.compile(rb"^[^:\r\n]*[ \t][^:\r\n]*:", re.M)  # a header name with blanks


def _check_head(head: bytes) -> tuple[str, int]:
    """(the status to refuse a request head with, or "", and its body's length). Checked on the
    loop thread before a worker sees the request, so no body is ever waited for by a worker."""
    lines = head.split(b"\r\n", 1)
    fields = lines[1] if len(lines) > 1 else b""
    if _BAD_NAME.search(fields) or _BARE_CR.search(head) or _FOLDED.search(fields):
        # A bare CR, or a header continued on the next line (obs-fold): a proxy in front may
        # read the lines differently, and a body could pass for a second request.
        return "400 Bad Request", 0
    if re.search(rb"^transfer-encoding[ \t]*:", fields, re.I | re.M):
        return "411 Length Required", 0
    values = {m.group(1) for m in _CONTENT_LENGTH.finditer(fields)}
    if not values:
        return "", 0
    if len(values) > 1:
        return "400 Bad Request", 0  # conflicting lengths: a request smuggling attempt
    value = values.pop()
    if not value.isdigit() or len(value) > 9:  # bytes.isdigit is ASCII-only
        return "400 Bad Request", 0
    if int(value) > MAX_BODY_BYTES:
        return "413 Content Too Large", 0
    return "", int(value)


def _target(head: bytes) -> str:
    """The path of a request's target, for routing probes (no query)."""
    parts = head.split(b"\r\n", 1)[0].split(b" ")
    if len(parts) != 3 or parts[0] not in (b"GET", b"HEAD"):
        return ""
    return parts[1].split(b"?", 1)[0].decode("latin-1")


def listen(host: str, port: int) -> socket.socket:
    """The listening socket: `host` "" means every address, IPv6 and IPv4 where the system
    allows one socket for both (like Go's ":port"). Raises OSError with the system's reason."""
    # A backlog of 128: twenty clients arriving at once must not wait for a TCP retransmit.
    if host == "" and socket.has_ipv6:
        with contextlib.suppress(OSError):
            return socket.create_server(("::", port), family=socket.AF_INET6, backlog=128,
                                        dualstack_ipv6=socket.has_dualstack_ipv6())
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host or "0.0.0.0", port), family=family, backlog=128)


def _closing_answer(status: str, text: str) -> bytes:
    """A plain-text answer after which the server closes the connection."""
    body = f"{text}\n".encode()
    return (f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}"
            "\r\nConnection: close\r\n\r\n").encode() + body


def _refuse(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setblocking(False)
        sock.send(_closing_answer("503 Service Unavailable", "too many connections"))
    _shut(sock)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


def one_line_error(exc: BaseException | None) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:300] if exc else ""

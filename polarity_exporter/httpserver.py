"""A small HTTP/1.1 server for the exporter's WSGI app, bounded against careless or hostile
clients. Framing (request heads, `Host`, bodies, pipelining, response heads) is h11's; this module
owns only the sockets, the deadlines and the threads.

One selector loop does all socket I/O, without a thread per connection; a fixed pool of WORKERS
threads runs the app. A connection is always in exactly one state:

    accept ─> READING ──request complete──> probe? answered on the loop ──> WRITING
                 │  head deadline /              else: BUSY (a worker runs the app) ─┘
                 │  idle deadline: closed                                            │
                 └<──── answer written, keep-alive (pipelined requests first) ───────┘

- READING: a head must be complete within HEADER_TIMEOUT of its first byte (or of the
  connection, or of the last answer when pipelined bytes already wait); bytes that waited while
  the loop ran late are read first (not a TLS handshake's: it needs more than one read). A
  kept-alive connection waits IDLE_TIMEOUT for its next request. A head cut off by EOF is never
  served.
- BUSY: the app runs on a worker; the loop does not watch the socket. Workers never touch a
  socket: they hand the answer back to the loop.
- WRITING: the answer is written without blocking, within WRITE_TIMEOUT of when writing starts
  (not of when the request arrived: the scrape's own time is the scrape's). A client that
  pipelines without reading is not read from until it reads.
- At MAX_CONNECTIONS, a new connection closes the one that has waited longest for a request
  (then the longest writer); when every connection is BUSY it is answered 503.
- `shutdown(grace)` stops accepting, closes connections waiting for a request at once, lets
  requests in flight be answered for up to `grace` seconds, then cuts what is left.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import h11

from polarity_exporter.connection import (
    BUSY,
    MAX_BODY_BYTES,
    MAX_HEAD_BYTES,
    READING,
    WRITING,
    Connection,
    Timeouts,
    refuse_over_cap,
    shut,
)
from polarity_exporter.wsgi import Answer, WSGIApp, environ_for, one_line_error, run_app

log = logging.getLogger(__name__)

HEADER_TIMEOUT = 5.0  # seconds for a request head (and the TLS handshake before the first)
IDLE_TIMEOUT = 60.0  # seconds a kept-alive connection may wait for its next request
WRITE_TIMEOUT = 60.0  # seconds to write one answer, whole, from its first byte
MAX_CONNECTIONS = 512
ACCEPT_BATCH = 16  # connections accepted per turn of the loop
WORKERS = 24  # threads running requests: scrapes share one fetch, but each waits in one
# Pipelined requests answered on the loop for one connection before the others get a turn (a
# client that does not read its answers is not read from until it does).
PIPELINE_BATCH = 64


class TLSSource(Protocol):
    """Where a new connection's TLS context comes from (weblive.LiveWebConfig)."""

    def context(self) -> ssl.SSLContext: ...

    def allows_peer(self, peer: dict[str, Any] | None) -> bool: ...


class _Fixed:
    """One context for the server's life."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self._context = context

    def context(self) -> ssl.SSLContext:
        return self._context

    def allows_peer(self, peer: dict[str, Any] | None) -> bool:
        return True


class BoundedServer:
    """Serves one WSGI app on one listening socket; `serve_forever` in a thread of its own."""

    def __init__(self, app: WSGIApp, listener: socket.socket,
                 tls: TLSSource | ssl.SSLContext | None = None, *,
                 header_timeout: float = HEADER_TIMEOUT,
                 idle_timeout: float = IDLE_TIMEOUT, write_timeout: float | None = None,
                 max_connections: int = MAX_CONNECTIONS, workers: int = WORKERS,
                 inline_paths: frozenset[str] = frozenset()) -> None:
        self._inline = inline_paths  # paths answered on the loop, never queued: the probes
        self._app = app
        self._listener = listener
        self._listener.setblocking(False)
        # Asked for the context of each new connection: the web config may have changed.
        self.tls: TLSSource | None = _Fixed(tls) if isinstance(tls, ssl.SSLContext) else tls
        self._timeouts = Timeouts(header_timeout, idle_timeout,
                                  WRITE_TIMEOUT if write_timeout is None else write_timeout)
        self._max_connections = max_connections
        self._workers = ThreadPoolExecutor(workers, thread_name_prefix="http-worker")
        self._selector = selectors.DefaultSelector()
        self._wake_read, self._wake_write = socket.socketpair()
        self._wake_read.setblocking(False)
        self._lock = threading.Lock()  # guards _answered only; never held across I/O
        self._answered: list[tuple[Connection, Answer]] = []  # from workers, for the loop
        self._connections: set[Connection] = set()  # the loop's own: no lock
        self._again: dict[Connection, None] = {}  # pipelined requests left for the next turn
        self._stopping = threading.Event()
        self._cut = threading.Event()
        self._stopped = threading.Event()

    @property
    def server_port(self) -> int:
        return int(self._listener.getsockname()[1])

    # --- the selector loop --------------------------------------------------------------------

    def serve_forever(self) -> None:
        self._selector.register(self._listener, selectors.EVENT_READ, "accept")
        self._selector.register(self._wake_read, selectors.EVENT_READ, "wake")
        try:
            while not self._cut.is_set():
                try:
                    self._turn()
                except Exception as exc:
                    log.error("http server loop error", extra={"err": one_line_error(exc)},
                              exc_info=exc)
                if self._stopping.is_set() and not self._drain_for_shutdown():
                    break
        finally:
            for conn in list(self._connections):
                self._close(conn)
            self._selector.close()
            self._stopped.set()

    def _turn(self) -> None:
        again, self._again = self._again, {}
        for key, mask in self._selector.select(0 if again else self._next_timeout()):
            if key.data == "accept":
                self._accept()
            elif key.data == "wake":
                self._drain_wake()
            elif mask & selectors.EVENT_WRITE:
                self._advance(key.data)
            else:
                self._readable(key.data)
        for conn in again:
            if conn in self._connections:
                self._advance(conn)
        self._take_answers()
        self._expire()

    def _next_timeout(self) -> float | None:
        waiting = [c.deadline for c in self._connections if c.state != BUSY]
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
                refuse_over_cap(sock)
                continue
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Connection(sock, str(address[0]), self._timeouts,
                              tls_pending=self.tls is not None)
            self._connections.add(conn)
            self._watch(conn, selectors.EVENT_READ)

    def _make_room(self) -> bool:
        """Below the cap, or made so by closing the connection that has been served the most
        answers, and of those the one waiting longest: idle keep-alive connections before new
        ones, and a client that keeps its connections busy by pipelining cannot lock new ones
        out. A request running on the closed connection is dropped (workers never touch
        sockets). False only when every connection is new and running its first request."""
        if len(self._connections) < self._max_connections:
            return True
        candidates = [c for c in self._connections if c.served or c.state != BUSY]
        if not candidates:
            return False
        chosen = min(candidates, key=lambda c: (-c.served, c.state == BUSY, c.since))
        log.debug("connection limit reached: closing the connection served the most",
                  extra={"client": chosen.address, "served": chosen.served})
        self._close(chosen)
        return True

    def _watch(self, conn: Connection, events: int) -> None:
        if conn.events == events:
            return
        if not events:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(conn.sock)
        elif conn.events:
            self._selector.modify(conn.sock, events, conn)
        else:
            self._selector.register(conn.sock, events, conn)
        conn.events = events

    def _readable(self, conn: Connection) -> None:
        if conn.state == WRITING:  # TLS wanted to read while writing: carry on writing
            self._advance(conn)
            return
        try:
            if conn.tls_pending and not self._handshake(conn):
                return
            data = conn.sock.recv(65536)
            # Decrypted bytes the selector cannot see: read them now.
            while data and isinstance(conn.sock, ssl.SSLSocket) and conn.sock.pending() \
                    and len(data) < MAX_HEAD_BYTES + MAX_BODY_BYTES:
                data += conn.sock.recv(65536)
        except (ssl.SSLWantReadError, BlockingIOError):
            return
        except ssl.SSLWantWriteError:
            self._watch(conn, selectors.EVENT_WRITE)
            return
        except Exception as exc:
            # OSError, ValueError: the client's doing. Anything else, a bug on this connection (an
            # odd certificate, say), closes it too: left readable, the loop would spin on it.
            level = logging.DEBUG if isinstance(exc, OSError | ValueError) else logging.WARNING
            log.log(level, "http connection error", extra={"client": conn.address,
                                                           "err": one_line_error(exc)})
            self._close(conn)
            return
        if not data:  # EOF: a head cut short is never served
            self._close(conn)
            return
        conn.receive(data)
        self._advance(conn)

    def _advance(self, conn: Connection) -> None:
        """Move a connection on as far as it goes without waiting: write what is queued, start
        the next request/response cycle, read buffered events, answer probes, hand requests to
        workers. Iterative: a thousand pipelined probes are a loop, not a recursion."""
        budget = PIPELINE_BATCH
        while conn in self._connections:
            if conn.outbox and not self._flush(conn):
                return
            if conn.finished:
                self._close(conn)
                return
            if conn.cycle_done:
                conn.next_cycle()
            if conn.state != READING:
                return
            if budget <= 0:
                # The others get a turn first; and nothing more is read from this client until
                # what it sent is answered, or its pipelined requests would pile up unbounded.
                self._watch(conn, 0)
                self._again[conn] = None
                return
            try:
                event = conn.http.next_event()
            except h11.RemoteProtocolError as exc:
                conn.refuse(exc.error_status_hint, str(exc) or "bad request")
                continue
            if event is h11.NEED_DATA:
                self._watch(conn, selectors.EVENT_READ)
                return
            if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                self._close(conn)
                return
            if isinstance(event, h11.Request):
                conn.check_head(event)
            elif isinstance(event, h11.EndOfMessage):
                budget -= 1
                self._dispatch(conn)

    def _dispatch(self, conn: Connection) -> None:
        """A whole request has arrived: answer a probe here, hand anything else to a worker."""
        request = conn.request
        assert request is not None
        environ = environ_for(request, conn.address, self.server_port, self.tls is not None)
        if environ["PATH_INFO"] in self._inline and request.method in (b"GET", b"HEAD"):
            self._queue_answer(conn, run_app(self._app, environ))  # _advance goes on from here
            return
        conn.state = BUSY
        self._watch(conn, 0)
        try:
            self._workers.submit(self._serve, conn, environ)
        except RuntimeError:  # shutting down
            self._close(conn)

    def _handshake(self, conn: Connection) -> bool:
        """Advance a TLS handshake; True once the connection is ready for its request."""
        if not isinstance(conn.sock, ssl.SSLSocket):
            first = conn.sock.recv(1, socket.MSG_PEEK)
            if not first:
                raise ConnectionResetError("closed before the TLS handshake")
            if first != b"\x16":  # not a TLS handshake record: plain HTTP on the TLS port
                # Go's servers answer the same way, which tells the operator what is wrong.
                conn.refuse(400, "Client sent an HTTP request to an HTTPS server.")
                self._advance(conn)
                return False
            assert self.tls is not None
            self._watch(conn, 0)
            conn.sock = self.tls.context().wrap_socket(conn.sock, server_side=True,
                                                       do_handshake_on_connect=False)
            self._watch(conn, selectors.EVENT_READ)
        conn.sock.do_handshake()  # SSLWantReadError: not yet
        assert self.tls is not None
        if not self.tls.allows_peer(conn.sock.getpeercert()):
            # client_allowed_sans: a verified certificate, but not one of the allowed names.
            raise ConnectionResetError("client certificate names no allowed SAN")
        conn.tls_pending = False
        return True

    # --- answers ------------------------------------------------------------------------------

    def _queue_answer(self, conn: Connection, answer: Answer) -> None:
        try:
            conn.queue_answer(answer, closing=self._stopping.is_set())
        except h11.LocalProtocolError as exc:  # the app's headers do not frame its body: a bug
            log.error("answer cannot be framed", extra={"err": one_line_error(exc)})
            self._close(conn)

    def _flush(self, conn: Connection) -> bool:
        """Write what the socket takes now; True once the whole answer is written."""
        try:
            waiting = conn.send_some()
        except (OSError, ValueError) as exc:
            log.debug("http connection error", extra={"client": conn.address,
                                                      "err": one_line_error(exc)})
            self._close(conn)
            return False
        if waiting == "done":
            return True
        self._watch(conn, selectors.EVENT_READ if waiting == "read" else selectors.EVENT_WRITE)
        return False

    def _take_answers(self) -> None:
        with self._lock:
            answered, self._answered = self._answered, []
        for conn, answer in answered:
            if conn in self._connections:
                self._queue_answer(conn, answer)
                self._advance(conn)

    def _expire(self) -> None:
        now = time.monotonic()
        for conn in [c for c in self._connections if c.state != BUSY and c.deadline <= now]:
            # What waited while this loop ran late (a long turn on a starved CPU) is read first:
            # deadlines judge clients. Not from a client parked for pipelining (`_again`).
            if conn.state == READING and conn.events & selectors.EVENT_READ:
                self._readable(conn)
                if conn not in self._connections or conn.state != READING or conn.deadline > now:
                    continue
            log.debug("closing a connection whose request or answer did not finish in time",
                      extra={"client": conn.address, "state": conn.state})
            self._close(conn)

    def _close(self, conn: Connection) -> None:
        """Close a connection (loop thread only: selectors are not thread-safe)."""
        self._watch(conn, 0)
        self._connections.discard(conn)
        shut(conn.sock)

    # --- the workers --------------------------------------------------------------------------

    def _serve(self, conn: Connection, environ: dict[str, Any]) -> None:
        """Run the app (worker thread) and hand its answer to the loop, which writes it."""
        answer = run_app(self._app, environ)
        with self._lock:
            self._answered.append((conn, answer))
        self._wake()

    # --- shutdown -----------------------------------------------------------------------------

    def _drain_for_shutdown(self) -> bool:
        """While stopping: stop accepting, close what waits for a request; True while answers
        are still being made or written."""
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._selector.unregister(self._listener)
            self._listener.close()
        for conn in [c for c in self._connections if c.state == READING]:
            self._close(conn)
        return bool(self._connections)

    def shutdown(self, grace: float) -> None:
        """Stop accepting, close idle connections now, let requests in flight be answered for
        up to `grace` seconds, then cut the rest. Returns when the loop has stopped."""
        self._stopping.set()
        self._wake()
        if not self._stopped.wait(grace):
            log.warning("shutdown grace period over: closing connections with a request in "
                        "flight")
            self._cut.set()
            self._wake()
            self._stopped.wait(5)
        self._workers.shutdown(wait=False, cancel_futures=True)
        with contextlib.suppress(OSError):
            self._listener.close()
        for sock in (self._wake_read, self._wake_write):
            sock.close()


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


"""One client connection of the exporter's HTTP server: its h11 protocol state, the answer
bytes waiting to be written, the deadline of whatever it is waiting for, and how its socket is
closed (the 503 of a connection over the cap). The server's loop (httpserver.py) decides when to
call these; nothing here blocks or touches the selector."""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

import h11
import h11._readers

from polarity_exporter.wsgi import Answer

MAX_HEAD_BYTES = 16 * 1024
MAX_HEADER_LINES = 100  # as Apache's LimitRequestFields: h11 parses each line on the loop
MAX_BODY_BYTES = 64 * 1024  # the exporter takes no request bodies; small ones are discarded
SEND_BYTES = 256 * 1024  # per send() call
SEND_BYTES_PER_TURN = 4 * 1024 * 1024  # per connection and turn of the loop

READING, BUSY, WRITING = "reading", "busy", "writing"


def _refuse_obs_fold(lines: Any) -> Any:
    """h11 joins a header line that starts with a blank to the one before (obs-fold, which RFC
    9112 lets a server refuse). A proxy in front may read such lines differently, so a body
    could pass for a second request: the head is refused (400) instead. h11 has no option for
    this; its own line splitter calls this function, so the check is exact."""
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            raise h11.LocalProtocolError("obsolete line folding is not accepted")
        yield line


if not callable(getattr(h11._readers, "_obsolete_line_fold", None)):  # h11 changed: say so
    raise ImportError("h11 no longer has _readers._obsolete_line_fold; see connection.py")
h11._readers._obsolete_line_fold = _refuse_obs_fold


@dataclass(frozen=True)
class Timeouts:
    head: float  # a request head, from its first byte (or the connection, or the last answer)
    idle: float  # a kept-alive connection waiting for its next request
    write: float  # one answer, whole, from its first byte


@dataclass(eq=False)
class Connection:
    sock: socket.socket
    address: str
    timeouts: Timeouts
    deadline: float = 0.0  # monotonic: when the current wait (head, idle or write) ends
    since: float = 0.0  # monotonic: when it began waiting for a request, or began writing
    http: h11.Connection = field(default_factory=lambda: h11.Connection(
        h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES))
    state: str = READING
    tls_pending: bool = False  # a TLS connection whose handshake has not completed
    events: int = 0  # what the selector watches it for (0: not registered)
    outbox: list[memoryview] = field(default_factory=list)
    request: h11.Request | None = None  # the request being read or answered
    served: int = 0  # answers written on it: at the cap, the most served is closed first

    def __post_init__(self) -> None:
        self.since = time.monotonic()
        self.deadline = self.since + self.timeouts.head

    def receive(self, data: bytes) -> None:
        if self.http.their_state is h11.IDLE and self.http.trailing_data[0] == b"":
            # The first byte of a request: from now on its head has the head timeout.
            self.deadline = min(self.deadline, time.monotonic() + self.timeouts.head)
        self.http.receive_data(data)

    def next_cycle(self) -> None:
        """The answer is written and the connection is kept: wait for the next request."""
        self.http.start_next_cycle()
        self.request = None
        self.served += 1
        self.since = time.monotonic()
        # Bytes of the next request already here (pipelined): its head is timed from now.
        partial = self.http.trailing_data[0] != b""
        self.deadline = self.since + (self.timeouts.head if partial else self.timeouts.idle)
        self.state = READING

    def check_head(self, request: h11.Request) -> None:
        """What h11 leaves to the server: no chunked bodies, no body beyond the limit, and an
        answer to `Expect: 100-continue`."""
        self.request = request
        headers = dict(request.headers)  # h11 lowercases names and refuses conflicting lengths
        # h11 bounds only a head that is still incomplete; one that arrived whole in a read is
        # measured here (each line as sent: name, ": ", value, CRLF).
        size = len(request.method) + len(request.target) + 11 + sum(
            len(name) + len(value) + 4 for name, value in request.headers)
        if size > MAX_HEAD_BYTES or len(request.headers) > MAX_HEADER_LINES:
            self.refuse(431, "request head too large")
        elif b"transfer-encoding" in headers:  # answered now: the body is never read
            self.refuse(411, "chunked request bodies are not accepted")
        elif int(headers.get(b"content-length", b"0")) > MAX_BODY_BYTES:
            self.refuse(413, f"request bodies are limited to {MAX_BODY_BYTES} bytes")
        elif self.http.they_are_waiting_for_100_continue:
            # Queued, but the request is still being read: its head deadline stays.
            self.outbox += [memoryview(chunk) for chunk in self.http.send_with_data_passthrough(
                h11.InformationalResponse(status_code=100, headers=[])) or () if chunk]

    def refuse(self, status: int, text: str) -> None:
        """A plain-text answer after which the connection closes; when the answer has begun
        already, h11 cannot frame another and the connection only closes."""
        if self.http.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            self.state = WRITING
            self.http.send_failed()  # our state becomes ERROR: the loop closes it
            return
        body = f"{text}\n".encode()
        self.queue([h11.Response(status_code=status, headers=[
            ("Content-Type", "text/plain"), ("Content-Length", str(len(body))),
            ("Connection", "close")]), h11.Data(data=body), h11.EndOfMessage()])

    def queue_answer(self, answer: Answer, closing: bool) -> None:
        """The app's answer, framed by h11 (LocalProtocolError when its headers cannot frame
        its body: a bug)."""
        status, headers, body = answer
        if closing:
            headers = [*headers, ("Connection", "close")]
        events: list[Any] = [h11.Response(status_code=status, headers=headers)]
        assert self.request is not None
        if self.request.method != b"HEAD":
            events += [h11.Data(data=part) for part in body if part]
        self.queue([*events, h11.EndOfMessage()])

    def queue(self, events: list[Any]) -> None:
        """Frame events and queue their bytes; the write deadline starts with the first byte of
        an answer, not with the request."""
        if not self.outbox:
            self.since = time.monotonic()
            self.deadline = self.since + self.timeouts.write
        for event in events:
            for chunk in self.http.send_with_data_passthrough(event) or ():
                if chunk:
                    self.outbox.append(memoryview(chunk))
        self.state = WRITING

    def send_some(self) -> str:
        """Write what the socket takes now, at most SEND_BYTES_PER_TURN (one fast reader of a
        large answer must not hold the loop): "done", or what to wait for ("write" or, for TLS,
        "read"). Raises OSError when the connection broke."""
        budget = SEND_BYTES_PER_TURN
        try:
            while self.outbox and budget > 0:
                first = self.outbox[0]
                sent = self.sock.send(first[:SEND_BYTES])
                budget -= sent
                if sent == len(first):
                    self.outbox.pop(0)
                    continue
                self.outbox[0] = first[sent:]
                if sent < SEND_BYTES:  # the socket's buffer is full
                    break
        except (BlockingIOError, ssl.SSLWantWriteError):
            pass
        except ssl.SSLWantReadError:
            return "read"
        return "write" if self.outbox else "done"

    @property
    def finished(self) -> bool:
        """Nothing more is to be read or written on it."""
        return self.http.our_state in (h11.MUST_CLOSE, h11.CLOSED, h11.ERROR)

    @property
    def cycle_done(self) -> bool:
        return self.http.our_state is h11.DONE and self.http.their_state is h11.DONE


def refuse_over_cap(sock: socket.socket) -> None:
    """Answer 503 without reading, as far as the socket takes it at once, and close."""
    with contextlib.suppress(OSError):
        sock.setblocking(False)
        sock.send(_OVER_CAP)
    shut(sock)


def shut(sock: socket.socket) -> None:
    """Shut a client's socket down and close it, whatever state it is in."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


def _over_cap() -> bytes:
    """The 503 for a connection over the cap, framed by h11 (which frames answers only to a
    request, so it is given a minimal one)."""
    http = h11.Connection(h11.SERVER)
    http.receive_data(b"GET / HTTP/1.0\r\n\r\n")
    http.next_event()
    body = b"too many connections\n"
    return b"".join(http.send(event) or b"" for event in (
        h11.Response(status_code=503, headers=[("Content-Type", "text/plain"),
                                               ("Content-Length", str(len(body)))]),
        h11.Data(data=body), h11.EndOfMessage()))


_OVER_CAP = _over_cap()

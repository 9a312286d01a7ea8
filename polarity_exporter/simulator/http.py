"""The simulator's HTTP side: a request and a response as values, and the threaded server that
sends a response, with the test-only socket faults (hangs, trickles, cuts, resets) a response
may ask for. What a response says is decided by the simulator (server.py), never here.
"""

from __future__ import annotations

import socket
import struct
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

JSONAPI = "application/vnd.api+json"
# Large bodies go out in slices so one write never has to copy the whole body.
CHUNK_BYTES = 1 << 20
TRICKLE_BYTES = 16  # TEST-ONLY: slice size of a trickled body


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # without the query string
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names
    body: bytes


@dataclass
class Response:
    status: int
    # The body is a list of byte chunks so a cached multi-megabyte body is never copied.
    chunks: list[bytes]
    headers: dict[str, str] = field(default_factory=dict)
    # TEST-ONLY socket behaviour for fault injection (simulator/faults.py), never Polarity's:
    hang: float = 0.0  # seconds to wait before sending anything (a server that never answers)
    trickle: float = 0.0  # seconds between TRICKLE_BYTES-sized slices of the body
    cut_after: int | None = None  # close the connection after this many body bytes
    reset: bool = False  # answer nothing and reset the connection (TCP RST)
    trickle_headers: float = 0.0  # seconds between single bytes of a header that never ends
    trickle_chunk_size: float = 0.0  # seconds between single bytes of an endless chunk-size line

    @property
    def length(self) -> int:
        return sum(len(chunk) for chunk in self.chunks)


class Handles(Protocol):
    """What the server needs of the simulator."""

    stopping: threading.Event

    def handle(self, request: Request) -> Response: ...


class SimulatorServer(ThreadingHTTPServer):
    daemon_threads = True
    # Many short-lived test clients reconnect quickly; avoid "address in use" on fixed ports.
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 simulator: Handles) -> None:
        self.simulator = simulator
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already gone

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hanging up mid-response (timeouts, stop()) are normal here; stay quiet.
        pass


class SimulatorHandler(BaseHTTPRequestHandler):
    # HTTP/1.1 with Content-Length on every response keeps the exporter's connections alive.
    protocol_version = "HTTP/1.1"
    server_version = "polarity-simulator"
    timeout = 60  # idle kept-alive connections release their thread eventually
    # Headers and body go out in separate writes; with Nagle's algorithm the body would wait
    # for the client's delayed ACK (40 ms on Linux) on every response.
    disable_nagle_algorithm = True
    server: SimulatorServer

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        parts = urlsplit(self.path)
        request = Request(
            method=self.command,
            path=parts.path,
            query=parse_qs(parts.query, keep_blank_values=True),
            headers={name.lower(): value for name, value in self.headers.items()},
            body=body,
        )
        simulator = self.server.simulator
        response = simulator.handle(request)
        if response.hang and simulator.stopping.wait(response.hang):
            self.close_connection = True
            return
        if response.reset or response.trickle_headers or response.trickle_chunk_size:
            self._send_broken(response)
            return
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(response.length))
        self.end_headers()
        if self.command == "HEAD":
            return
        if response.trickle or response.cut_after is not None:
            self._send_faulty(response)
            return
        for chunk in response.chunks:
            view = memoryview(chunk)
            for start in range(0, len(view), CHUNK_BYTES):
                self.wfile.write(view[start:start + CHUNK_BYTES])

    def _send_faulty(self, response: Response) -> None:
        """TEST-ONLY: send the body slowly and/or only in part, then drop the connection."""
        body = b"".join(response.chunks)
        if response.cut_after is not None:
            body = body[: response.cut_after]
            self.close_connection = True
        step = TRICKLE_BYTES if response.trickle else max(1, len(body))
        stopping = self.server.simulator.stopping
        for start in range(0, len(body), step):
            self.wfile.write(body[start:start + step])
            self.wfile.flush()
            if response.trickle and stopping.wait(response.trickle):
                self.close_connection = True
                return

    def _send_broken(self, response: Response) -> None:
        """TEST-ONLY: a reset, or a status line whose headers or chunk sizes never end."""
        self.close_connection = True
        if response.reset:
            # SO_LINGER with a zero timeout: close() sends RST instead of FIN.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
            return
        if response.trickle_headers:
            interval, start = response.trickle_headers, b"HTTP/1.1 200 OK\r\nX-Slow: "
        else:
            interval = response.trickle_chunk_size
            start = (f"HTTP/1.1 200 OK\r\nContent-Type: {JSONAPI}\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n1").encode()
        self.wfile.write(start)
        self.wfile.flush()
        stopping = self.server.simulator.stopping
        for _ in range(int(120 / interval)):  # bounded: two minutes at the most
            if stopping.wait(interval):
                return
            try:
                self.wfile.write(b"0")
                self.wfile.flush()
            except OSError:
                return  # the client gave up

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _serve

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: tests and benchmarks read stderr

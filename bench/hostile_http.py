"""Hostile HTTP clients against polarity-exporter and against Go's net/http, side by side.

Starts polarity-exporter (against a simulator of its own, sized so /metrics is about 6 MB) and
Debian's `prometheus-blackbox-exporter` (Go's net/http with the defaults Prometheus exporters
use), runs the same hostile-client cases against both, one server at a time, and prints a
Markdown table: what each server did, as measured.

    python bench/hostile_http.py                  # every case, about 5 minutes
    python bench/hostile_http.py --cases 1,3,7    # a subset
    python bench/hostile_http.py --exporter-cmd '{python} -m polarity_exporter --demo \\
        --web.listen-address 127.0.0.1:{port}'

Linux only (it reads /proc/PID/stat). All traffic goes to 127.0.0.1; every loop is bounded in
count and time. Needs `apt-get install prometheus-blackbox-exporter`; exits 2 without it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import resource
import secrets
import selectors
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
BLACKBOX_NAMES = ("prometheus-blackbox-exporter", "blackbox_exporter")
# {python}: this interpreter; {port}: the port to listen on; {polarity_url}: a simulator the
# script starts only when the command names it.
EXPORTER_CMD = ("{python} -m polarity_exporter --polarity.url {polarity_url} "
                "--web.listen-address 127.0.0.1:{port}")
# 8,000 integrations make a /metrics of about 6 MB: the slow-reader case needs an answer larger
# than what the kernel buffers on both sides of a loopback connection (a few MB).
SIM_INTEGRATIONS = 8000
# Each module adds about 390 bytes to blackbox's /config: 16,000 make it about 6 MB.
BLACKBOX_MODULES = 16000
PROBE = "/-/healthy"


def request(path: str = PROBE, extra: str = "", method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode("latin-1")


# --- the servers ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """One server process under test, started from an argv template with a {port} in it."""

    name: str
    argv: list[str]
    ready_path: str
    big_path: str  # a path whose answer is several MB, for the slow reader
    log: Path
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 60) -> None:
        self.port = free_port()
        argv = [arg.replace("{port}", str(self.port)) for arg in self.argv]
        with self.log.open("ab") as log:
            # cwd: the log's directory, not the caller's, which `python -m` would put first on
            # sys.path (an override's PYTHONPATH must win over a checkout in the cwd).
            self.proc = subprocess.Popen(argv, env=self.env, cwd=self.log.parent,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        # Readiness by polling, not by sleeping: start-up time varies with the machine's load.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if status_of(self.port, request(self.ready_path), 1.0) == "200":
                return
            time.sleep(0.2)
        self.stop()
        tail = self.log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{self.name} did not become ready: {shlex.join(argv)}\n{tail}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/PID/stat (fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


@contextlib.contextmanager
def simulator(workdir: Path, integrations: int, user: str, password: str) -> Iterator[str]:
    """A Polarity simulator process; yields its URL."""
    port = free_port()
    env = {**os.environ, "SIM_USERNAME": user, "SIM_PASSWORD": password}
    argv = [sys.executable, "-m", "polarity_exporter.simulator", "--port", str(port),
            "--integrations", str(integrations), "--errors", str(integrations)]
    with (workdir / "simulator.log").open("ab") as log:
        proc = subprocess.Popen(argv, env=env, cwd=workdir, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection((HOST, port), 1):
                break
            time.sleep(0.2)
        else:
            raise RuntimeError(f"the simulator did not start: {shlex.join(argv)}")
        yield f"http://{HOST}:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def blackbox_config(path: Path) -> None:
    """A modules file big enough that /config answers several MB (the slow reader's target)."""
    lines = ["modules:"]
    for i in range(BLACKBOX_MODULES):
        lines += [f"  pad_{i:05d}:", "    prober: tcp", "    timeout: 5s"]
    path.write_text("\n".join(lines) + "\n")


# --- client helpers ----------------------------------------------------------------------------


def connect(port: int, timeout: float = 3.0, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:  # before connect: the window scale is fixed by the handshake
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(timeout)
    try:
        sock.connect((HOST, port))
    except OSError:
        sock.close()
        raise
    return sock


def read_until(sock: socket.socket, done: Callable[[bytes], bool],
               deadline: float) -> tuple[bytes, bool]:
    """What arrives until done(data), EOF or the deadline; and whether the server closed."""
    data = b""
    while not done(data):
        left = deadline - time.monotonic()
        if left <= 0:
            return data, False
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return data, False
        except OSError:  # reset by the server: closed too
            return data, True
        if not chunk:
            return data, True
        data += chunk
    return data, False


def status_of(port: int, raw: bytes, timeout: float = 3.0) -> str:
    """The status code a fresh connection gets for `raw`, or what happened instead."""
    try:
        with connect(port, timeout) as sock:
            sock.sendall(raw)
            data, closed = read_until(sock, lambda d: b"\r\n" in d, time.monotonic() + timeout)
    except OSError as exc:
        return f"{type(exc).__name__}"
    match = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    if match:
        return match.group(1).decode()
    return "closed, no answer" if closed else f"no answer in {timeout:g} s"


def probe(port: int, timeout: float = 1.0) -> bool:
    return status_of(port, request(), timeout) == "200"


def closed_by_peer(sock: socket.socket) -> bool:
    """Whether the server closed (or answered on) an idle connection, without waiting."""
    # Non-blocking, not MSG_DONTWAIT: on a socket with a timeout Python polls for up to the
    # timeout before calling recv at all.
    sock.setblocking(False)
    try:
        sock.recv(1, socket.MSG_PEEK)  # b"" (EOF) or an answer
    except BlockingIOError:
        return False  # nothing to read: still open
    except OSError:
        pass  # reset
    return True


def wait_answering(port: int, limit: float) -> float | None:
    """Seconds until a probe succeeds again, or None within `limit`."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if probe(port):
            return time.monotonic() - start
        time.sleep(0.5)
    return None


class Prober:
    """A legitimate client: GET /-/healthy on a fresh connection every `every` seconds with a
    1 s timeout, while the `with` block runs. Each probe has a thread of its own, so probes keep
    their schedule while earlier ones wait (as a kubelet's do)."""

    def __init__(self, port: int, every: float) -> None:
        self.port, self.every = port, every
        self.results: list[bool] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        start = time.monotonic()
        probes: list[threading.Thread] = []
        for i in range(200):
            if self._stop.wait(max(0.0, start + i * self.every - time.monotonic())):
                break
            probes.append(threading.Thread(
                target=lambda: self.results.append(probe(self.port)), daemon=True))
            probes[-1].start()
        for thread in probes:  # each ends within its timeouts (2 s at most)
            thread.join(3)

    @property
    def failed(self) -> str:
        return f"{self.results.count(False)}/{len(self.results)}"


class BodyCounter:
    """Counts the body bytes of one answer as they arrive; knows when the answer is whole."""

    def __init__(self) -> None:
        self.head = b""
        self._start = bytearray()
        self.body = 0
        self.length: int | None = None
        self.chunked = False
        self._tail = b""

    def feed(self, chunk: bytes) -> None:
        if not self.head:
            self._start += chunk
            end = self._start.find(b"\r\n\r\n")
            if end < 0:
                return
            self.head, chunk = bytes(self._start[:end]), bytes(self._start[end + 4:])
            length = re.search(rb"\r\ncontent-length: *(\d+)", self.head, re.I)
            self.length = int(length.group(1)) if length else None
            chunked = re.search(rb"\r\ntransfer-encoding: *chunked", self.head, re.I)
            self.chunked = chunked is not None
        self.body += len(chunk)
        self._tail = (self._tail + chunk)[-5:]

    @property
    def whole(self) -> bool:
        if self.length is not None:
            return self.body >= self.length
        return self.chunked and self._tail == b"0\r\n\r\n"


def drain(sock: socket.socket, counter: BodyCounter, deadline: float) -> bool:
    """Read at full speed until the answer is whole, EOF or the deadline; True at EOF."""
    while not counter.whole and time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(1 << 18)
        except TimeoutError:
            return False
        except OSError:
            return True
        if not chunk:
            return True
        counter.feed(chunk)
    return False


# --- the cases ----------------------------------------------------------------------------------


def heavy_heads(srv: Server, head: bytes) -> str:
    """Send `head` on a new connection once a second for 10 s while a prober probes every
    0.3 s; then wait (up to 60 s) until the server answers again."""
    sockets: list[socket.socket] = []
    before = cpu_seconds(srv.pid)
    try:
        with Prober(srv.port, every=0.3) as prober:
            start = time.monotonic()
            for i in range(10):
                time.sleep(max(0.0, start + i - time.monotonic()))
                with contextlib.suppress(OSError):
                    sock = connect(srv.port, timeout=1.0)
                    sockets.append(sock)
                    sock.sendall(head)
            time.sleep(max(0.0, start + 10 - time.monotonic()))
        in_window = cpu_seconds(srv.pid) - before
        again = wait_answering(srv.port, 60)  # the heads already read may still be parsed
        total = cpu_seconds(srv.pid) - before
    finally:
        for sock in sockets:
            sock.close()
    result = f"{prober.failed} probes failed; {in_window:.1f} CPU-s in the 10 s"
    if again is None:
        return result + f"; still not answering 60 s after the last head ({total:.1f} CPU-s)"
    if again > 0.5:
        return result + f"; answers again {again:.0f} s later ({total:.1f} CPU-s in all)"
    return result


def case_backtracking_head(srv: Server) -> str:
    # A Content-Length value of 16 K blanks: quadratic for a lazy regex that trims blanks.
    return heavy_heads(srv, b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nContent-Length: 1"
                       + b" " * 16200 + b"x\r\n\r\n")


def case_no_colon_line(srv: Server) -> str:
    # A field line with no colon, then 16 K blanks: quadratic for a "name with blanks" regex.
    return heavy_heads(srv, b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nX-No-Colon"
                       + b" " * 16200 + b"\r\n\r\n")


def case_pipelined(srv: Server) -> str:
    count = 1500
    out = memoryview(request() * count)
    data = bytearray()
    closed = False
    with connect(srv.port) as sock, selectors.DefaultSelector() as sel:
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        # Write and read together: a client that wrote everything before reading could fill
        # both directions' buffers and wait forever.
        start = time.monotonic()
        while time.monotonic() - start < 10 and data.count(b"HTTP/1.1 200") < count:
            for _, events in sel.select(0.2):
                if events & selectors.EVENT_WRITE and out:
                    try:
                        out = out[sock.send(out):]
                    except BlockingIOError:
                        pass
                    except OSError:
                        out = out[:0]
                    if not out:
                        sel.modify(sock, selectors.EVENT_READ)
                if events & selectors.EVENT_READ:
                    try:
                        chunk = sock.recv(65536)
                    except BlockingIOError:
                        continue
                    except OSError:
                        chunk = b""
                    if not chunk:
                        closed = True
                    data += chunk
            if closed:
                break
        elapsed = time.monotonic() - start
        answered = data.count(b"HTTP/1.1 200")
        if closed:
            after = "then closed"
        else:  # one more request on it: is the connection still usable?
            sock.setblocking(True)
            try:
                sock.sendall(request())
                more, _ = read_until(sock, lambda d: b"HTTP/1.1 200" in d, time.monotonic() + 2)
            except OSError:
                more = b""
            after = "still usable" if b"HTTP/1.1 200" in more else "open, not answering"
    fresh = "fresh GET ok" if probe(srv.port, 2.0) else "fresh GET failed"
    return f"{answered}/{count} answered in {elapsed:.1f} s; connection {after}; {fresh}"


def case_eviction(srv: Server) -> str:
    idle: list[socket.socket] = []
    flood: deque[socket.socket] = deque()
    stop = threading.Event()
    opened = 0

    def attack() -> None:
        # New connections, as fast as a loop makes them, that never send a byte; at most 400
        # held at once (the oldest is closed), at most 20,000 in all, for at most 20 s.
        nonlocal opened
        end = time.monotonic() + 20
        while not stop.is_set() and time.monotonic() < end and opened < 20000:
            with contextlib.suppress(OSError):
                flood.append(connect(srv.port, timeout=1.0))
                opened += 1
            while len(flood) > 400:
                flood.popleft().close()
            time.sleep(0.002)

    try:
        for _ in range(127):  # one request each, answered, then idle (kept alive)
            sock = connect(srv.port)
            idle.append(sock)
            sock.sendall(request())
            read_until(sock, _whole, time.monotonic() + 3)
        attacker = threading.Thread(target=attack, daemon=True)
        attacker.start()
        time.sleep(0.5)  # let the flood reach the cap first
        succeeded = 0
        start = time.monotonic()
        for i in range(40):  # spread over 5 s
            time.sleep(max(0.0, start + i * 0.125 - time.monotonic()))
            succeeded += status_of(srv.port, request(), 2.0) == "200"
        stop.set()
        attacker.join(5)
        evicted = sum(closed_by_peer(sock) for sock in idle)
    finally:
        stop.set()
        for sock in idle + list(flood):
            sock.close()
    return (f"{succeeded}/40 succeeded ({opened} flood connections; "
            f"{evicted}/127 idle ones closed by the server)")


def _whole(data: bytes) -> bool:
    counter = BodyCounter()
    counter.feed(data)
    return counter.whole


def case_slow_reader(srv: Server) -> str:
    # The answer's size, read at full speed (for the exporter this also logs in first).
    with connect(srv.port, 60) as sock:
        sock.sendall(request(srv.big_path, "Connection: close\r\n"))
        reference = BodyCounter()
        drain(sock, reference, time.monotonic() + 60)
    size = reference.body
    # Now slowly: 4 KiB receive buffer, 20 KiB/s for 12 s (longer than any 5 s write
    # deadline), then at full speed for at most 30 s more to see whether the rest still comes.
    counter = BodyCounter()
    with connect(srv.port, 5, rcvbuf=4096) as sock:
        sock.sendall(request(srv.big_path, "Connection: close\r\n"))
        start = time.monotonic()
        eof = False
        while time.monotonic() - start < 12 and not counter.whole and not eof:
            try:
                chunk = sock.recv(1024)
            except OSError:
                chunk = b""
            eof = not chunk
            counter.feed(chunk)
            time.sleep(len(chunk) / 20480)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        if not eof:
            eof = drain(sock, counter, time.monotonic() + 30)
        elapsed = time.monotonic() - start
    mb = size / 1e6
    if counter.whole:
        return f"whole body ({mb:.1f} MB) in {elapsed:.1f} s"
    share = 100 * counter.body / size if size else 0
    end = "then EOF" if eof else "then nothing more"
    return f"cut: {share:.0f}% of {mb:.1f} MB arrived, {end} ({elapsed:.1f} s)"


def case_partial_pipelined(srv: Server) -> str:
    with connect(srv.port) as sock:
        sock.sendall(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\nGET /-/healthy HTTP/1.1\r\nHo")
        start = time.monotonic()
        data, closed = read_until(sock, lambda d: False, start + 70)
        elapsed = time.monotonic() - start
    first = "first answered" if data.startswith(b"HTTP/1.1 200") else "first not answered"
    if closed:
        return f"{first}; closed after {elapsed:.1f} s"
    return f"{first}; still open after {elapsed:.0f} s"


def case_nul(srv: Server) -> str:
    return status_of(srv.port, request(extra="X-A: a\x00b\r\n"))


def case_no_host(srv: Server) -> str:
    return status_of(srv.port, b"GET /-/healthy HTTP/1.1\r\n\r\n")


def case_tabs(srv: Server) -> str:
    after_colon = status_of(srv.port, b"GET /-/healthy HTTP/1.1\r\nHost:\tx\r\n\r\n")
    in_line = status_of(srv.port, b"GET\t/-/healthy HTTP/1.1\r\nHost: x\r\n\r\n")
    return f"`Host:\\tx` {after_colon}; `GET\\t/-/healthy` {in_line}"


def case_slowloris(srv: Server) -> str:
    slow: list[socket.socket] = []
    closed_at: dict[int, float] = {}
    trickle = b"X-Slow: " + b"a" * 20  # one byte of this per second
    start = time.monotonic()
    try:
        for _ in range(300):
            with contextlib.suppress(OSError):
                sock = connect(srv.port, timeout=2.0)
                slow.append(sock)
                sock.sendall(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n")
        with Prober(srv.port, every=0.5) as prober:
            for tick in range(10):
                time.sleep(max(0.0, start + tick + 1 - time.monotonic()))
                for i, sock in enumerate(slow):
                    if i in closed_at:
                        continue
                    if closed_by_peer(sock):
                        closed_at[i] = time.monotonic() - start
                        continue
                    try:
                        sock.send(trickle[tick:tick + 1])  # non-blocking since closed_by_peer
                    except OSError:
                        closed_at[i] = time.monotonic() - start
    finally:
        for sock in slow:
            sock.close()
    ok = prober.results.count(True)
    result = f"{ok}/{len(prober.results)} probes ok; "
    if len(slow) < 300:
        result += f"{300 - len(slow)} of 300 could not connect; "
    if not closed_at:
        return result + f"none of {len(slow)} slow connections closed in 10 s"
    times = sorted(closed_at.values())
    return (result + f"server closed {len(times)}/{len(slow)} slow connections "
            f"(first by {times[0]:.0f} s, last by {times[-1]:.0f} s)")


def case_framing(srv: Server) -> str:
    heads = {
        "bare CR": request(extra="X-A: a\rb\r\n"),
        "obs-fold": request(extra="X-A: a\r\n b\r\n"),
        "CL+TE": request(extra="Content-Length: 5\r\nTransfer-Encoding: chunked\r\n")
        + b"0\r\n\r\n",
        "two CL": request(extra="Content-Length: 0\r\nContent-Length: 5\r\n") + b"hello",
    }
    return "; ".join(f"{name} {status_of(srv.port, raw)}" for name, raw in heads.items())


@dataclass(frozen=True)
class Case:
    number: int
    title: str
    run: Callable[[Server], str]
    parallel: bool = False  # only waits: run against both servers at once


CASES = (
    Case(1, "Content-Length + 16,200 blanks (regex backtracking), 1/s for 10 s; probes "
            "every 0.3 s, 1 s timeout", case_backtracking_head),
    Case(2, "field line without colon + 16,200 blanks, 1/s for 10 s; probes every 0.3 s",
         case_no_colon_line),
    Case(3, "1,500 pipelined GET /-/healthy in one write; answers within 10 s",
         case_pipelined),
    Case(4, "127 idle keep-alive connections + a connection flood; 40 GETs on fresh "
            "connections over 5 s", case_eviction),
    Case(5, "slow reader: GET of a ~6 MB answer, 4 KiB SO_RCVBUF, 20 KiB/s for 12 s, then "
            "full speed", case_slow_reader),
    Case(6, "a request and half a pipelined head, then silence (70 s cap)",
         case_partial_pipelined, parallel=True),
    Case(7, "NUL in a header value (`X-A: a\\0b`): status", case_nul),
    Case(8, "HTTP/1.1 without Host: status", case_no_host),
    Case(9, "tab after the colon / tab in the request line: status", case_tabs),
    Case(10, "slowloris: 300 connections, a header byte per second each; probes every 0.5 s "
             "for 10 s", case_slowloris),
    Case(11, "bare CR, obs-fold, Content-Length + Transfer-Encoding, two Content-Lengths: "
             "status", case_framing),
)


# --- running ------------------------------------------------------------------------------------


def run_case(case: Case, srv: Server) -> str:
    if srv.exited() is not None:
        srv.start()
    if wait_answering(srv.port, 60) is None:
        return "not answering before the case"
    try:
        result = case.run(srv)
    except Exception as exc:  # a case that breaks is reported, not fatal
        result = f"harness error: {type(exc).__name__}: {exc}"
    code = srv.exited()
    if code is not None:
        result += f"; server process exited ({code}), restarted"
        srv.start()
    elif wait_answering(srv.port, 5) is None:
        # Left busy (case 1 can keep a server's loop busy for minutes): a fresh process, so the
        # next case measures that case, not this one's aftermath.
        srv.stop()
        srv.start()
        result += "; restarted after the case (not answering)"
    return result


def versions(blackbox: str) -> str:
    try:
        from polarity_exporter import __version__ as exporter
    except ImportError:
        exporter = "unknown"
    def git(*argv: str) -> str:
        return subprocess.run(["git", "-C", str(Path(__file__).parent), *argv],
                              capture_output=True, text=True, check=False).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD")
    if commit and git("status", "--porcelain", "--", "../polarity_exporter"):
        commit += " + uncommitted changes"
    out = subprocess.run([blackbox, "--version"], capture_output=True, text=True, check=False)
    lines = [" ".join(line.split()) for line in (out.stdout + out.stderr).splitlines()
             if line.strip()]
    go = [line for line in lines[:1] + lines[1:] if line is lines[0] or "go version" in line]
    return (f"polarity-exporter {exporter} (checkout {commit or 'unknown'}); {'; '.join(go)}; "
            f"Python {sys.version.split()[0]}; nproc {len(os.sched_getaffinity(0))}")


def parse_cases(text: str) -> list[Case]:
    if text == "all":
        return list(CASES)
    wanted = {int(part) for part in text.split(",") if part.strip()}
    unknown = wanted - {case.number for case in CASES}
    if unknown:
        raise SystemExit(f"unknown case(s): {sorted(unknown)}; cases are 1-{len(CASES)}")
    return [case for case in CASES if case.number in wanted]


def cell(text: str) -> str:
    return text.replace("|", "\\|")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default="all", help="comma-separated case numbers, e.g. 1,3,7")
    parser.add_argument("--exporter-cmd", default=EXPORTER_CMD,
                        help="command starting the exporter; {python}, {port} and "
                             "{polarity_url} (a simulator the script starts) are filled in")
    parser.add_argument("--blackbox-bin", help="blackbox_exporter binary (default: from PATH)")
    parser.add_argument("--integrations", type=int, default=SIM_INTEGRATIONS,
                        help="size of the simulator behind {polarity_url}")
    args = parser.parse_args()
    cases = parse_cases(args.cases)
    blackbox = args.blackbox_bin or next(filter(None, map(shutil.which, BLACKBOX_NAMES)), None)
    if not blackbox or not Path(blackbox).exists():
        print("prometheus-blackbox-exporter not found: apt-get install -y "
              "prometheus-blackbox-exporter (or --blackbox-bin)", file=sys.stderr)
        return 2
    # Cases 4 and 10 hold several hundred sockets at once.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))

    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hostile-http-") as tmp, \
            contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        user, password = "bench", secrets.token_urlsafe(16)
        template = args.exporter_cmd.replace("{python}", shlex.quote(sys.executable))
        if "{polarity_url}" in template:
            url = stack.enter_context(simulator(workdir, args.integrations, user, password))
            template = template.replace("{polarity_url}", url)
        env = {k: v for k, v in os.environ.items() if not k.startswith("POLARITY_")}
        env.update(POLARITY_USERNAME=user, POLARITY_PASSWORD=password)
        blackbox_config(workdir / "blackbox.yml")
        servers = [
            Server("exporter", shlex.split(template), "/-/ready", "/metrics",
                   workdir / "exporter.log", env),
            Server("blackbox", [blackbox, f"--config.file={workdir / 'blackbox.yml'}",
                                "--web.listen-address=127.0.0.1:{port}"],
                   "/-/healthy", "/config", workdir / "blackbox.log"),
        ]
        for srv in servers:
            stack.callback(srv.stop)
            srv.start()
        rows: list[tuple[str, list[str]]] = []
        for case in cases:
            if case.parallel:
                with ThreadPoolExecutor(len(servers)) as pool:
                    results = list(pool.map(lambda s, c=case: run_case(c, s), servers))
            else:
                results = [run_case(case, srv) for srv in servers]
            print(f"case {case.number}: {' | '.join(results)}", file=sys.stderr, flush=True)
            rows.append((f"{case.number}. {case.title}", results))
    took = time.monotonic() - began

    print("| case | exporter | Go net/http (blackbox_exporter) |")
    print("|---|---|---|")
    for title, results in rows:
        print(f"| {cell(title)} | {' | '.join(cell(r) for r in results)} |")
    print()
    print(f"{versions(blackbox)}; run took {took // 60:.0f} min {took % 60:.0f} s")
    if args.exporter_cmd != EXPORTER_CMD:
        print(f"exporter command: {args.exporter_cmd}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Scrape deadlines, and a watchdog that holds every socket to them.

A socket timeout bounds the wait for the *next* byte, not for the whole answer: a server that
sends one byte a second (in its status line, its headers, a chunk-size line or its body) never
trips it. So the deadline is enforced from outside the read: while a request runs, its sockets
are registered with a `Guard`, and one watchdog thread shuts the sockets of every guard whose
deadline has passed. A blocked read then returns at once, whatever it was reading, and the caller
turns that into `DeadlineExceeded`.

States of a guard: armed -> (disarmed | fired). `disarm()` is called before the connection goes
back to the pool, so a fired guard can never cut a socket that another request has picked up.
The watchdog sleeps without a timeout while nothing is armed: no wake-ups between scrapes.
"""

from __future__ import annotations

import heapq
import itertools
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from polarity_exporter.errors import DeadlineExceeded
from polarity_exporter.fetchlog import FetchLog


class Deadline:
    """A point in time (monotonic clock) by which something must be done.

    `extend_to` only ever moves it later: a fetch shared by several scrapes runs until the
    latest of their deadlines (see scrapecache.py).
    """

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic,
                 log: FetchLog | None = None) -> None:
        self._clock = clock
        self.seconds = seconds
        self.end = clock() + seconds
        # The fetch's log (fetchlog.py): the deadline goes wherever the fetch's work goes,
        # across its threads, so the log travels with it.
        self.log = log

    def note(self, text: str) -> None:
        """A line in the fetch's log, if this deadline belongs to a logged fetch."""
        if self.log is not None:
            self.log.add(text)

    def remaining(self) -> float:
        return self.end - self._clock()

    def extend_to(self, end: float) -> None:
        if end > self.end:
            self.seconds += end - self.end
            self.end = end

    def check(self, what: str, why: str = "") -> float:
        remaining = self.remaining()
        if remaining <= 0:
            because = f" ({why})" if why else ""
            raise DeadlineExceeded(f"{what}: scrape deadline of {self.seconds:.2f}s "
                                   f"exceeded{because}")
        return remaining


class Guard:
    """The sockets of one request, cut when its deadline passes."""

    def __init__(self, deadline: Deadline, watchdog: Watchdog) -> None:
        self.deadline = deadline
        self._watchdog = watchdog
        self._sockets: list[socket.socket] = []
        # Held while shutting sockets down (a non-blocking call): fire() and disarm() must not
        # interleave, or a socket already handed back to the pool could be cut.
        self._lock = threading.Lock()
        self._state = "armed"

    @property
    def fired(self) -> bool:
        return self._state == "fired"

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            if self._state == "armed":
                self._sockets.append(sock)
            elif self._state == "fired":
                _cut(sock)

    def fire(self) -> None:
        with self._lock:
            if self._state != "armed":
                return
            self._state = "fired"
            for sock in self._sockets:
                _cut(sock)
            self._sockets.clear()

    def disarm(self) -> None:
        with self._lock:
            if self._state == "armed":
                self._state = "disarmed"
            self._sockets.clear()
        self._watchdog.forget(self)


def _cut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed: nothing left to cut


class Watchdog:
    """One thread for the process, started on first use; fires guards at their deadlines."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Guard]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, deadline: Deadline) -> Guard:
        guard = Guard(deadline, self)
        with self._cond:
            heapq.heappush(self._heap, (deadline.end, next(self._order), guard))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="deadline-watchdog",
                                                daemon=True)
                self._thread.start()
            self._cond.notify()
        return guard

    def forget(self, guard: Guard) -> None:
        with self._cond:
            kept = [entry for entry in self._heap if entry[2] is not guard]
            if len(kept) != len(self._heap):
                heapq.heapify(kept)
                self._heap = kept

    def _run(self) -> None:
        while True:
            with self._cond:
                due = self._next_due()
            if due is not None:
                due.fire()

    def _next_due(self) -> Guard | None:
        """Wait (holding the condition, which wait() releases) until a guard is due."""
        while True:
            if not self._heap:
                self._cond.wait()
                continue
            end, _, guard = self._heap[0]
            if guard.deadline.end > end:  # extended since it was armed: queue it again
                heapq.heapreplace(self._heap, (guard.deadline.end, next(self._order), guard))
                continue
            wait = end - guard.deadline._clock()
            if wait > 0:
                self._cond.wait(wait)
                continue
            heapq.heappop(self._heap)
            return guard


WATCHDOG = Watchdog()
_current = threading.local()


@contextmanager
def guarding(guard: Guard) -> Iterator[Guard]:
    """Make `guard` the one that sockets opened or reused by this thread register with."""
    previous = getattr(_current, "guard", None)
    _current.guard = guard
    try:
        yield guard
    finally:
        _current.guard = previous


def watch_current(sock: socket.socket | None) -> None:
    """Register a socket with this thread's current guard, if a request is being guarded."""
    guard: Guard | None = getattr(_current, "guard", None)
    if guard is not None and sock is not None:
        guard.watch(sock)

"""One upstream fetch for many concurrent scrapes, each answered within its own deadline, and an
optional short-lived result cache.

Two Prometheus replicas of an HA pair (or twenty clients at once) asking for /metrics at the same
moment must not each walk Polarity's API: the first request starts a fetch and every request that
arrives while it runs shares it ("single flight").

Deadlines are per scrape, not per fetch. The fetch runs in its own thread, with a deadline that
each request joining it extends to its own (`Deadline.extend_to`): the fetch lasts as long as the
most patient waiter allows, so a client announcing a tiny timeout cannot shorten it for the
others. Each request waits only until its own deadline, less the time its answer needs to be
built and sent (`encode_reserve`); a request whose time runs out gets a truthful answer
(`late`: polarity_up 0) and leaves the fetch running for the rest.

With `--cache.ttl` above 0 a finished result is also reused for that many seconds, for HA pairs
that scrape a few seconds apart, unless the fetch ran out of time (that result speaks of the
deadline, not of Polarity). The Prometheus guidelines ask that a cached result says so: the HELP
of `polarity_up` then states the TTL (the collector builds it so), and
`polarity_scrape_result_age_seconds` tells how old the served result is.

    idle --request--> in flight --fetch done--> (cached for ttl) --> idle
                         ^  |  more requests join: deadline extended
                         |  +- a request's own deadline passes: it answers late, flight goes on
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client.core import Metric

from polarity_exporter import metrics, pools
from polarity_exporter.deadline import Deadline
from polarity_exporter.fetchlog import FetchLog

log = logging.getLogger(__name__)

# when to stop talking to Polarity -> (families, whether they may be reused)
Fetch = Callable[[Deadline], tuple[list[Metric], bool]]
Late = Callable[[float], list[Metric]]  # timeout in seconds -> "nothing arrived in time"

# Building and encoding the answer takes time after the fetch: measured at 10,000 integrations
# (91,000 samples) about 0.06 s to build and 0.34 s to encode (bench/README.md). A fifth of the
# deadline, at most 1 s, is kept for both, so the answer leaves before Prometheus' own timeout.
ENCODE_RESERVE_FRACTION = 0.2
ENCODE_RESERVE_MAX = 1.0


def encode_reserve(timeout: float, last_encode: float = 0.0) -> float:
    """Time kept to build and send the answer: a fifth of the deadline (at most 1 s), or more
    when recent answers took longer to encode (tens of thousands of integrations), but never
    more than half the deadline."""
    usual = min(ENCODE_RESERVE_MAX, ENCODE_RESERVE_FRACTION * timeout)
    return min(timeout / 2, max(usual, 1.5 * last_encode))


@dataclass
class Scraped:
    """An answer's families, and the log of the fetch behind them (shared by the scrapes that
    shared the fetch)."""

    families: list[Metric]
    log: FetchLog


@dataclass
class _Flight:
    deadline: Deadline  # for the fetch: the latest waiter's deadline less its reserve
    started: float = 0.0  # monotonic
    done: threading.Event = field(default_factory=threading.Event)
    families: list[Metric] | None = None
    reusable: bool = False
    failed: bool = False
    finished: float = 0.0  # monotonic time the fetch ended


class SharedScrape:
    """Callable with a timeout in seconds -> the families to answer with."""

    def __init__(self, fetch: Fetch, late: Late, ttl: float = 0.0,
                 clock: Callable[[], float] = time.monotonic,
                 max_lifetime: float = 3600.0) -> None:
        self._fetch = fetch
        # A fetch is extended by the scrapes that join it, but never past this many seconds from
        # its start: else overlapping scrapes (an HA pair) would keep one stalled request alive
        # forever, and every scrape would answer polarity_up 0.
        self._max_lifetime = max_lifetime
        self._late = late
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()  # guards _flight and _last; never held across a fetch
        self._flight: _Flight | None = None
        self._last: _Flight | None = None
        self._closed = False
        self._then: Callable[[], None] | None = None  # run once the flight in flight ends
        self._last_encode = 0.0  # seconds the slowest of the recent answers took to encode

    def encoded(self, seconds: float) -> None:
        """How long an answer took to encode after its families were ready (web layer)."""
        # The slowest recent answer counts at once; a faster one lowers the estimate slowly.
        self._last_encode = max(seconds, 0.8 * self._last_encode)

    def __call__(self, timeout: float) -> Scraped:
        # The fetch stops talking to Polarity a full reserve before this request's deadline;
        # the request waits half of it more, for the fetch thread to build the families.
        reserve = encode_reserve(timeout, self._last_encode)
        answer_by = self._clock() + timeout
        fetch_by, wait_until = answer_by - reserve, answer_by - reserve / 2
        with self._lock:
            cached = self._fresh()
            if cached is not None:
                return self._serve(cached)
            flight = self._flight
            if flight is None:
                flight = _Flight(Deadline(timeout - reserve, self._clock, log=FetchLog()),
                                 started=self._clock())
                if self._closed:  # a reload retired this server a moment ago
                    flight.deadline.note("this server was retired by a reload: no fetch")
                    _log(flight).outcome = "down: retired by a reload"
                    flight.failed = True
                    flight.done.set()
                else:
                    # Time queued for a fetch thread counts against the flight's deadline.
                    pools.fetches.submit(self._run, flight)
                    self._flight = flight
            else:
                latest = flight.started + self._max_lifetime
                flight.deadline.extend_to(min(fetch_by, latest - reserve))
        if not flight.done.wait(max(0.0, wait_until - self._clock())):
            log.warning("scrape deadline passed before the Polarity fetch finished; it goes on "
                        "for scrapes with later deadlines", extra={"timeout": f"{timeout:.2f}s"})
            flight.deadline.note(f"a scrape with a {timeout:.2f}s deadline answered "
                                 "polarity_up 0 before the fetch finished")
            return Scraped(self._late(timeout), _log(flight))
        if flight.failed:  # a bug, logged by the fetch: this answer still says polarity_up 0
            return Scraped(self._late(timeout), _log(flight))
        return self._serve(flight)

    def _run(self, flight: _Flight) -> None:
        try:
            families, reusable = self._fetch(flight.deadline)
            flight.families, flight.reusable = families, reusable
        except BaseException as exc:  # a bug: fail the waiting scrapes, not the thread
            flight.failed = True
            _log(flight).outcome = f"down: fetch failed unexpectedly ({type(exc).__name__})"
            log.error("Polarity fetch failed unexpectedly", exc_info=exc,
                      extra={"err": " ".join(f"{type(exc).__name__}: {exc}".split())[:300]})
        finally:
            flight.finished = self._clock()
            with self._lock:
                self._flight = None
                if not flight.failed and flight.reusable:
                    self._last = flight
                then, self._then = self._then, None
            flight.done.set()
            if then is not None:
                then()

    def _fresh(self) -> _Flight | None:
        last = self._last
        if self._ttl > 0 and last is not None and self._clock() - last.finished < self._ttl:
            return last
        return None

    def _serve(self, flight: _Flight) -> Scraped:
        assert flight.families is not None
        log = _log(flight)
        if self._ttl <= 0:
            return Scraped(flight.families, log)
        age = metrics.RESULT_AGE.new(ttl=f"{self._ttl:g}")
        age.add_sample(age.name, {}, max(0.0, self._clock() - flight.finished))
        return Scraped([*flight.families, age], log)

    def close(self, then: Callable[[], None] | None = None) -> None:
        """Start no more fetches; `then` runs once the fetch in flight, if any, has ended
        (bounded by its deadline; on a fetch thread), else at once."""
        with self._lock:
            self._closed = True
            if self._flight is not None:
                self._then = then
                return
        if then is not None:
            then()



def _log(flight: _Flight) -> FetchLog:
    assert flight.deadline.log is not None  # every flight has one
    return flight.deadline.log

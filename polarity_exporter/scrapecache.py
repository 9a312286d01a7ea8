"""One upstream fetch for many concurrent scrapes, and an optional short-lived result cache.

Two Prometheus replicas of an HA pair (or twenty clients at once) asking for /metrics at the same
moment must not each walk Polarity's API: the first request in leads the fetch and every request
that arrives while it runs waits for, and shares, its result ("single flight").

With `--cache.ttl` above 0 a finished result is also reused for that many seconds, for HA pairs
that scrape a few seconds apart. The Prometheus guidelines ask that a cached result says so: the
HELP of `polarity_up` then states the TTL, and `polarity_scrape_result_age_seconds` tells how old
the served result is.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client.core import GaugeMetricFamily, Metric

log = logging.getLogger(__name__)

Scrape = Callable[[float], list[Metric]]  # timeout in seconds -> metric families


class SharedScrapeFailed(RuntimeError):
    """The fetch that this request was waiting for raised (a bug); it costs this scrape only."""


@dataclass
class _Flight:
    done: threading.Event = field(default_factory=threading.Event)
    families: list[Metric] | None = None
    failed: bool = False
    finished: float = 0.0  # monotonic time the fetch ended


class SharedScrape:
    """Callable like `Scrape`; coalesces concurrent calls and reuses results for `ttl` seconds.

    `late(timeout)` builds the answer for a request whose own timeout ran out while it waited for
    a fetch another request started (a truthful "this scrape got nothing in time").
    """

    def __init__(self, scrape: Scrape, late: Scrape, ttl: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._scrape = scrape
        self._late = late
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._flight: _Flight | None = None
        self._last: _Flight | None = None

    def __call__(self, timeout: float) -> list[Metric]:
        with self._lock:
            cached = self._fresh()
            if cached is not None:
                return self._serve(cached)
            flight = self._flight
            leader = flight is None
            if flight is None:
                flight = self._flight = _Flight()
        if leader:
            self._lead(flight, timeout)
        elif not flight.done.wait(timeout):
            log.warning("scrape timed out waiting for the Polarity fetch already in flight",
                        extra={"timeout": f"{timeout:.2f}s"})
            return self._late(timeout)
        if flight.failed:
            raise SharedScrapeFailed("the shared Polarity fetch failed")
        return self._serve(flight)

    def _lead(self, flight: _Flight, timeout: float) -> None:
        try:
            families = self._scrape(timeout)
            if self._ttl > 0:
                _mark_cached(families, self._ttl)
            flight.families = families
        except BaseException:
            flight.failed = True
            raise
        finally:
            flight.finished = self._clock()
            with self._lock:
                self._flight = None
                if not flight.failed:
                    self._last = flight
            flight.done.set()

    def _fresh(self) -> _Flight | None:
        last = self._last
        if self._ttl > 0 and last is not None and self._clock() - last.finished < self._ttl:
            return last
        return None

    def _serve(self, flight: _Flight) -> list[Metric]:
        assert flight.families is not None
        if self._ttl <= 0:
            return flight.families
        age = GaugeMetricFamily(
            "polarity_scrape_result_age_seconds",
            f"Seconds since this result was fetched from Polarity (reused for up to "
            f"{self._ttl:g}s, --cache.ttl).")
        age.add_metric([], max(0.0, self._clock() - flight.finished))
        return [*flight.families, age]


def _mark_cached(families: list[Metric], ttl: float) -> None:
    # Families are built fresh for every fetch, so amending this list's HELP is safe.
    for family in families:
        if family.name == "polarity_up":
            family.documentation += f" Results may be up to {ttl:g}s old (--cache.ttl)."

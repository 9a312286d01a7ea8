"""When a request to Polarity is tried again: transient failures with back-off, and HTTP 429.

A 429 is handled here and nowhere else:

    429 answered --RateLimit.record (by the transport, for every request)--> blocked until its
        |          Retry-After: each later request of this server waits it out if that fits its
        |          deadline, and fails at once (RateLimitedError) if it does not
        +-- a GET: retried once, if the wait fits the deadline (RateLimit.refused)
        +-- a login: not retried (RateLimit.refused with retry=False); the next scrape tries again
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

import requests

from polarity_exporter.deadline import Deadline
from polarity_exporter.errors import RateLimitedError

# Retry-After beyond this is clamped: a server asking for hours (or `inf`) must not stop the
# exporter from ever asking again.
MAX_RETRY_AFTER = 600.0


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds a Retry-After header asks for (delta-seconds or an HTTP date), clamped to
    [0, MAX_RETRY_AFTER]; None when absent or unreadable."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        try:
            date = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        seconds = date.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds):
        return None
    return min(MAX_RETRY_AFTER, max(0.0, seconds))


class RateLimit:
    """Polarity's Retry-After, honoured by every request of one client until it passes."""

    # A 429 is retried at most once per request, after its Retry-After.
    MAX_RETRIES = 1

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._until = 0.0  # monotonic

    def block(self, seconds: float) -> None:
        with self._lock:
            self._until = max(self._until, time.monotonic() + seconds)

    def record(self, response: requests.Response) -> None:
        """A 429 arrived: block every request until its Retry-After (if it has a usable one)."""
        wait = retry_after(response.headers.get("Retry-After"))
        if wait is not None:
            self.block(wait)

    def refused(self, response: requests.Response, deadline: Deadline, what: str,
                earlier: int | None = None) -> None:
        """After a 429 (recorded): return when the request may be tried again, which is once,
        and only if the wait fits in the deadline; else raise RateLimitedError. `earlier`: the
        429s this request already had, or None for a request never retried (a login)."""
        wait = retry_after(response.headers.get("Retry-After"))
        if wait is None:
            raise RateLimitedError(f"{what}: rate limited by Polarity "
                                   "(HTTP 429, no usable Retry-After)")
        seconds = f"Retry-After {math.ceil(wait)}s"
        if earlier is None:
            raise RateLimitedError(f"{what}: rate limited by Polarity (HTTP 429), {seconds}")
        if earlier >= self.MAX_RETRIES:
            raise RateLimitedError(f"{what}: rate limited by Polarity again (HTTP 429), "
                                   f"{seconds}")
        if wait + 0.1 >= deadline.remaining():
            raise RateLimitedError(f"{what}: rate limited by Polarity (HTTP 429), {seconds} "
                                   "does not fit in the scrape deadline")

    def remaining(self) -> float:
        with self._lock:
            return self._until - time.monotonic()

    def wait(self, deadline: Deadline, what: str) -> None:
        """Sleep out a block that fits in the deadline; fail at once if it does not."""
        blocked = self.remaining()
        if blocked <= 0:
            return
        if blocked + 0.1 >= deadline.remaining():
            raise RateLimitedError(f"{what}: Polarity asked to wait {math.ceil(blocked)}s more "
                                   "(HTTP 429 Retry-After); not calling it before then")
        deadline.note(f"{what}: waiting {blocked:.2f}s for Polarity's Retry-After")
        time.sleep(blocked)


@dataclass(frozen=True)
class RetryPolicy:
    """Idempotent requests that met a transient failure are retried a few times, with back-off,
    only while the deadline leaves room."""

    max_retries: int = 2
    statuses: frozenset[int] = frozenset({502, 503, 504})

    def backoff(self, attempt: int, deadline: Deadline) -> bool:
        """Sleep before retry number `attempt` (0-based); False when the deadline has no room."""
        if attempt >= self.max_retries:
            return False
        pause = 0.2 * 2**attempt
        if deadline.remaining() <= pause + 0.1:
            return False
        deadline.note(f"retry {attempt + 1} of {self.max_retries} after {pause:.1f}s")
        time.sleep(pause)
        return True

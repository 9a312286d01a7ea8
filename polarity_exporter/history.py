"""The recent scrapes and probes shown on the landing page (`--history.limit`, default 100).

Each entry keeps its time, target, one-line result, duration and the log of the fetch behind it
(fetchlog.py), which scrapes that shared a fetch share. Memory is bounded by the limit: at most
`limit` entries, each with at most one fetch log (fetchlog.MAX_BYTES) and a result cut to
MAX_RESULT characters. As blackbox_exporter's history: entries are numbered from the start, and
the oldest is dropped first.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

from polarity_exporter.fetchlog import FetchLog

MAX_RESULT = 500


@dataclass(frozen=True)
class Entry:
    id: int
    time: float  # Unix seconds, when the answer was ready
    target: str
    result: str  # "up", or "down: " which part failed and why
    duration: float  # seconds, from the request's arrival to its answer
    log: FetchLog


class History:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._entries: deque[Entry] = deque(maxlen=max(limit, 1))
        self._next = 0

    def add(self, target: str, result: str, duration: float, log: FetchLog) -> None:
        if self.limit <= 0:
            return
        result = " ".join(result.split())[:MAX_RESULT]
        with self._lock:
            self._entries.append(Entry(self._next, time.time(), target, result, duration, log))
            self._next += 1

    def entries(self) -> list[Entry]:
        """Newest first."""
        with self._lock:
            return list(reversed(self._entries))

    def get(self, ident: int) -> Entry | None:
        with self._lock:
            for entry in self._entries:
                if entry.id == ident:
                    return entry
        return None

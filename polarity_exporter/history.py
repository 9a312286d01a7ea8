"""The recent scrapes and probes shown on the landing page (`--history.limit`, default 100).

Each entry keeps its time, target, one-line result, duration and the log of the fetch behind it
(fetchlog.py), which scrapes that shared a fetch share. Memory is bounded: at most `limit`
entries, each with a result cut to MAX_RESULT characters, and logs of at most MAX_LOG_BYTES
together (the oldest entries lose theirs first). As blackbox_exporter's history: entries are
numbered from the start, and the oldest is dropped first.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

from polarity_exporter import fetchlog
from polarity_exporter.fetchlog import FetchLog, printable_line

MAX_RESULT = 500
# The logs kept, all entries together: 100 full logs (the default limit). With a higher limit
# the oldest entries keep their line on the page and lose their log first.
MAX_LOG_BYTES = 100 * fetchlog.MAX_BYTES
DROPPED = FetchLog()
DROPPED.outcome = "dropped"
DROPPED.add(f"log dropped: the recent scrapes keep at most {MAX_LOG_BYTES // 2**20} MiB of logs")


@dataclass
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
        result = printable_line(result, MAX_RESULT)
        with self._lock:
            self._entries.append(Entry(self._next, time.time(), target, result, duration, log))
            self._next += 1
            self._bound_logs()

    def _bound_logs(self) -> None:
        """Drop the logs of the oldest entries until the distinct logs kept fit MAX_LOG_BYTES
        (scrapes that shared a fetch share one log, counted once)."""
        seen: set[int] = set()
        total = 0
        for entry in reversed(self._entries):  # newest first: they keep their logs
            if id(entry.log) in seen:
                continue
            seen.add(id(entry.log))
            total += entry.log.size
            if total > MAX_LOG_BYTES:
                entry.log = DROPPED

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

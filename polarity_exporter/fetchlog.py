"""The log of one Polarity fetch, for `?debug=true` and the landing page's recent scrapes.

A fetch writes what it did here as it goes (each request's method, path, status, bytes and
milliseconds; retries and Retry-After waits; token events; pages; each part's outcome), through
its `Deadline`, which every request of the fetch already carries across its threads. Scrapes that
share a fetch share its log.

Bounded whatever the server does: at most MAX_LINES lines and MAX_BYTES bytes, each line cut to
MAX_LINE characters; what does not fit is counted, and the text ends with a line saying so.
Nothing written here may carry a secret: callers write paths, statuses and the one-line error
messages that the client already keeps free of credentials (tests/test_debug.py checks it with
generated secrets across every fault).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable

MAX_LINES = 500
MAX_BYTES = 64 * 1024
MAX_LINE = 1000


# Control characters a server's text may carry (ESC starts a terminal's escape sequences):
# the log is read with curl in a terminal, so they become U+FFFD. So do lone surrogates, which
# no encoder writes.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def printable_line(text: str, limit: int) -> str:
    """`text` on one line of at most `limit` characters, without control characters; only
    the first few `limit`s of a long text are looked at."""
    line = " ".join(text[: limit * 4].split())[:limit]
    return line if line.isprintable() else _CONTROL.sub("\ufffd", line)


class FetchLog:
    """Lines with the seconds since the fetch began; safe to write from several threads."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._start = clock()
        self._lock = threading.Lock()
        self._lines: list[str] = []
        self._bytes = 0
        self._cut = 0
        self.outcome = "in progress"  # one line, set when the fetch ends (collector.py)

    def add(self, text: str) -> None:
        line = f"{self._clock() - self._start:8.3f}s {printable_line(text, MAX_LINE)}"
        size = len(line.encode()) + 1
        with self._lock:
            if len(self._lines) >= MAX_LINES or self._bytes + size > MAX_BYTES:
                self._cut += 1
                return
            self._lines.append(line)
            self._bytes += size

    @property
    def size(self) -> int:
        """Bytes of the lines kept."""
        with self._lock:
            return self._bytes

    def text(self) -> str:
        with self._lock:
            lines, cut = list(self._lines), self._cut
        if cut:
            lines.append(f"... {cut} more lines cut (the log keeps {MAX_LINES} lines or "
                         f"{MAX_BYTES // 1024} KiB)")
        return "\n".join(lines) + "\n" if lines else ""

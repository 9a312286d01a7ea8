"""Logging in the formats Go exporters use: logfmt (default) or JSON, one line per event.

The cause of a failure is logged in one line (`err`). A bug's record also carries its exception
(`exc_info`); at `--log.level=debug` only, the formatter writes where it happened as a `traceback`
field, still on the event's one line: the frames (file, line, function, source line) and the
exception's type, never its message or a frame's values, which may hold what the code was
reading (a secret, a value from the targets file). Above debug, no traceback is written.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
import traceback
from typing import Any

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
          "error": logging.ERROR}
_LEVEL_NAMES = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warn",
                logging.ERROR: "error", logging.CRITICAL: "error"}
# Attributes every LogRecord has; anything else was passed through `extra=` and is a field.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def _fields(record: logging.LogRecord, tracebacks: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        + f".{int(record.msecs):03d}Z",
        "level": _LEVEL_NAMES.get(record.levelno, "info"),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    for key, value in vars(record).items():
        if key not in _STANDARD:
            out[key] = value
    if record.exc_info and record.exc_info[1] is not None:
        exc = record.exc_info[1]
        out.setdefault("err", f"{type(exc).__name__}: {exc}")
        if tracebacks:
            out["traceback"] = where(exc)
    return out


def where(exc: BaseException) -> str:
    """A traceback without the exception's message: the frames and the exception's type."""
    frames = "".join(traceback.format_list(traceback.extract_tb(exc.__traceback__)))
    return f"Traceback (most recent call last):\n{frames}{type(exc).__name__}"


# json.dumps escapes C0 controls, but leaves these as they are: C1 controls (NEL, U+0085, ends
# a line for some readers) and the Unicode line and paragraph separators. Escaped too, so that
# a text from Polarity (an error title, say) can never start a line of its own.
_LINE_BREAKERS = {code: f"\\u{code:04x}" for code in [*range(0x7F, 0xA0), 0x2028, 0x2029]}


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str).translate(_LINE_BREAKERS)


def _logfmt_value(value: Any) -> str:
    text = str(value)
    if text and not any(c in text for c in ' ="\\') and text.isprintable():
        return text
    return _json(text)


class LogfmtFormatter(logging.Formatter):
    def __init__(self, tracebacks: bool = False) -> None:
        super().__init__()
        self.tracebacks = tracebacks  # at debug level only

    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record, self.tracebacks)
        return " ".join(f"{k}={_logfmt_value(v)}" for k, v in fields.items())


class JsonFormatter(LogfmtFormatter):
    def format(self, record: logging.LogRecord) -> str:
        return _json(_fields(record, self.tracebacks))


class RepeatFilter(logging.Filter):
    """Warnings and errors repeated within `interval` seconds are dropped and counted.

    Any client can make the exporter fetch (and so fail, and log) as often as it likes; the log
    must not grow with it. The same message with the same `err` is written at most once per
    interval; the next one written says how many were dropped (`repeated=N`).
    """

    def __init__(self, interval: float = 10.0, clock: Any = time.monotonic) -> None:
        super().__init__()
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, str(record.msg), str(getattr(record, "err", ""))[:300])
        now = self._clock()
        with self._lock:
            last, dropped = self._seen.get(key, (-1e18, 0))
            if now - last < self._interval:
                self._seen[key] = (last, dropped + 1)
                return False
            if len(self._seen) >= 1000:
                self._seen.clear()
            self._seen[key] = (now, 0)
        if dropped:
            record.repeated = dropped
        return True


def setup_logging(level: str = "info", fmt: str = "logfmt") -> None:
    handler = logging.StreamHandler(sys.stderr)
    debug = level == "debug"
    handler.setFormatter(JsonFormatter(debug) if fmt == "json" else LogfmtFormatter(debug))
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS[level])
    # urllib3 logs every connection at debug; useful only when debugging the exporter itself.
    urllib3_log = logging.getLogger("urllib3")
    urllib3_log.setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
    connection_log = logging.getLogger("urllib3.connection")  # a logger's filters: its own
    if not any(isinstance(f, _UnquotedHeaders) for f in connection_log.filters):
        connection_log.addFilter(_UnquotedHeaders())


class _UnquotedHeaders(logging.Filter):
    """urllib3's "Failed to parse headers" warning quotes the header bytes a server sent, which
    may echo a credential: said without them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith("Failed to parse headers"):
            record.msg, record.args = "Failed to parse headers (what the server sent is not " \
                "shown: it may echo a credential)", ()
            record.exc_info, record.exc_text = None, None  # its message quotes them too
        return True

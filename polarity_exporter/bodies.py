"""Response bodies from Polarity: read as a file-like stream, bounded in size, every read held to
the scrape deadline; and the one-line reading of an error body.
"""

from __future__ import annotations

import codecs
import json
import os
from collections.abc import Callable
from typing import Any

import requests
import urllib3

from polarity_exporter.deadline import Deadline
from polarity_exporter.errors import PolarityError, ProtocolError, one_line
from polarity_exporter.jsondecode import StreamGuard

# An error body is read only for its `detail`: a few KB hold it; the rest is never read.
ERROR_BODY_BYTES = 4096
# A login or refresh answer holds a token and little else.
TOKEN_BODY_BYTES = 64 * 1024
READ_BYTES = 64 * 1024
# What a streaming parser behind a StreamGuard is given at once.
STREAM_SLICE = 8 * 1024


# --- bodies -----------------------------------------------------------------------------------

class BodyReader:
    """File-like view of a streamed response body, bounded in size, inside the deadline.

    The deadline guard cuts the socket when time is up; a read that fails then is reported as
    the deadline, not as a broken connection.
    """

    def __init__(self, response: requests.Response, deadline: Deadline, what: str, *,
                 limit: int, repair_utf8: bool = False, guard: StreamGuard | None = None) -> None:
        self._raw = response.raw
        self._raw.decode_content = True  # urllib3 bounds each decoded read to what was asked
        self._deadline = deadline
        self._what = what
        self._limit = limit
        # The streaming JSON parser rejects a whole body for one invalid UTF-8 byte; replacing
        # such bytes with U+FFFD keeps every other record. Done in read(), what the streaming
        # parser calls: bodies read whole (read_up_to) are decoded by their callers.
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace") if repair_utf8 else None
        self._guard = guard
        self._slice = STREAM_SLICE if guard is not None else READ_BYTES
        # What was read and handed back (replay), served before reading on: the last handed
        # back first, each with what to call once it is all served.
        self._replays: list[tuple[memoryview, Callable[[], None] | None]] = []
        self.total = 0
        self.ended = False  # the end of the body was read
        self._digest: Any = None  # a hashlib object fed what is read (hash_from_here)
        self._digest_up_to = 0

    def read(self, size: int = -1) -> bytes:
        if size == 0:  # ijson probes the stream's type with read(0)
            return b""
        chunk = b""
        while not chunk:
            if not self._replays:
                self._replays.append((memoryview(self._read_raw(READ_BYTES)), None))
            # Handed out in slices: the guard's bound on nesting depends on what the parser is
            # given at once (see StreamGuard).
            read = chunk = self._replayed(min(size if size > 0 else READ_BYTES, self._slice))
            if self._utf8 is not None:
                # A slice of part of one character repairs to nothing: read on, as b"" is
                # the end of the body to the parser (found by an attack).
                chunk = self._repair(chunk, self._utf8)
            if not read:
                break
        if self._guard is not None:
            self._guard.check(chunk)
        return chunk

    def _read_raw(self, size: int) -> bytes:
        self._deadline.check(self._what)
        try:
            chunk: bytes = self._raw.read1(min(size, READ_BYTES))
        except (urllib3.exceptions.HTTPError, requests.RequestException, OSError) as exc:
            self._deadline.check(self._what, "the response body did not arrive in time")
            raise PolarityError(f"{self._what}: reading the response failed: "
                                f"{_read_failure(exc)}") from None
        if not chunk:
            # A cut socket reads as the end of the body: tell the deadline from a short body.
            self._deadline.check(self._what, "the response body did not arrive in time")
            self.ended = True
        self.total += len(chunk)
        if self.total > self._limit:
            raise ProtocolError(f"{self._what}: response larger than {self._limit} bytes")
        if self._digest is not None:
            if self.total > self._digest_up_to:
                self._digest = None
            else:
                self._digest.update(chunk)  # hashlib lets the GIL go for large chunks
        return chunk

    def hash_from_here(self, digest: Any, up_to: int) -> None:
        """Feed `digest` (a hashlib object, given what was read so far) every byte read from
        now on, for a body of at most `up_to` bytes."""
        self._digest, self._digest_up_to = digest, up_to

    def digest(self) -> bytes | None:
        """The digest of the whole body, if it was hashed and read to its end."""
        return self._digest.digest() if self._digest is not None and self.ended else None

    @staticmethod
    def _repair(chunk: bytes, decoder: codecs.IncrementalDecoder) -> bytes:
        # ASCII needs no work unless a multi-byte sequence is pending from the last chunk.
        if chunk and chunk.isascii() and not decoder.getstate()[0]:
            return chunk
        return decoder.decode(chunk, final=not chunk).encode("utf-8")

    def _replayed(self, limit: int) -> bytes:
        """Up to `limit` bytes of what was handed back last."""
        view, done = self._replays[-1]
        chunk = bytes(view[:limit])
        if len(chunk) < len(view):
            self._replays[-1] = (view[len(chunk):], done)
        else:
            self._replays.pop()
            del view  # its buffer goes now, before `done` gives back what it was counted as
            if done is not None:
                done()
        return chunk

    def let_go(self) -> None:
        """Drop what was handed back and not served: nothing more is read."""
        self._replays.clear()

    def fill(self, buffer: memoryview) -> tuple[int, bool]:
        """Read into `buffer` (nothing handed back is waiting) until it is full or the body
        ends; the bytes read, and whether that was the end."""
        size = 0
        while size < len(buffer):
            chunk = self._read_raw(len(buffer) - size)
            if not chunk:
                return size, True
            buffer[size:size + len(chunk)] = chunk
            size += len(chunk)
        return size, False

    def read_up_to(self, limit: int) -> tuple[bytes, bool]:
        """Up to `limit` bytes; and whether that was the whole body."""
        chunks: list[bytes] = []
        size = 0
        while size < limit and self._replays:  # handed back: served first
            chunks.append(self._replayed(limit - size))
            size += len(chunks[-1])
        while size < limit:
            chunk = self._read_raw(min(READ_BYTES, limit - size))
            if not chunk:
                return b"".join(chunks), True
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks), False

    def read_all(self) -> bytes:
        """The whole body; ProtocolError past the reader's limit."""
        body, _ = self.read_up_to(self._limit + 1)
        return body

    def replay(self, data: bytes | memoryview, done: Callable[[], None] | None = None) -> None:
        """Serve `data` (already read) before reading on, and before what is still to be served
        of an earlier replay (not copied); then call `done`."""
        self._replays.append((memoryview(data), done))


def _read_failure(exc: BaseException) -> str:
    """Why reading a body failed, in words of our own: urllib3's messages quote what the
    server sent (a DecodeError its Content-Encoding header), which may echo a credential."""
    if isinstance(exc, urllib3.exceptions.DecodeError):
        return "the body could not be decoded as its Content-Encoding says"
    if isinstance(exc, (urllib3.exceptions.TimeoutError, requests.Timeout, TimeoutError)):
        return "timed out"
    if isinstance(exc, OSError) and exc.errno is not None:
        return os.strerror(exc.errno)
    if isinstance(exc, (urllib3.exceptions.ProtocolError, requests.ConnectionError)):
        return "the connection broke before the body ended"
    return type(exc).__name__


def check_json(response: requests.Response, what: str, scrub: Callable[[str], str]) -> None:
    content_type = response.headers.get("Content-Type", "")
    if "json" not in content_type.lower():
        raise ProtocolError(f"{what}: expected JSON, got Content-Type "
                            f"{one_line(scrub(content_type))[:80]!r}")


def error_detail(response: requests.Response, deadline: Deadline, what: str,
                 scrub: Callable[[str], str]) -> str:
    """`errors[0].detail` (or the nested `errors[0].meta.errors[0].detail`, or `title`) of an
    error body, read only up to ERROR_BODY_BYTES and within the deadline; "" if none."""
    try:
        head, _ = BodyReader(response, deadline, what, limit=ERROR_BODY_BYTES) \
            .read_up_to(ERROR_BODY_BYTES)
    except PolarityError:
        return ""
    try:
        first = json.loads(head.decode("utf-8", errors="replace"))["errors"][0]
        nested = first.get("meta", {}).get("errors", [{}])[0].get("detail") \
            if isinstance(first.get("meta"), dict) else None
        detail = first.get("detail") or nested or first.get("title")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError, RecursionError):
        return ""
    if not isinstance(detail, (str, int)) or not detail:
        return ""
    return one_line(scrub(str(detail)))[:200]  # scrubbed whole, then cut

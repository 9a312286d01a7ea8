"""Bounded JSON decoding: whole bodies with `json`, and a guard for streamed ones.

Polarity's bodies are written partly by third-party integrations, and a broken or hostile server
can send anything. Whatever arrives, decoding either yields Python values the models can check or
raises `ProtocolError` with one line; it never raises RecursionError, OverflowError or a
ValueError from int() at the web layer.

- Numbers: an integer of more than 19 digits, a float that overflows and the non-standard
  constants (NaN, Infinity) become `OUT_OF_RANGE`, which every model reader treats as an
  unreadable field: one bad number costs its field, not the page.
- Depth: `json` parses recursively and stops with RecursionError (caught) near Python's recursion
  limit, about 1,000 levels, in linear time. ijson's C backend builds a prefix string per level
  and costs quadratic memory on deep input (50,000 levels: 6 GB), so streamed bodies pass through
  `StreamGuard`, which refuses deep nesting (and digit runs ijson cannot hold) before ijson sees
  it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from typing import Any, Final, Protocol

import ijson
import orjson

from polarity_exporter.errors import ProtocolError


class _OutOfRange:
    """A number that JSON allows but no field of Polarity's can hold."""

    _instance: _OutOfRange | None = None

    def __new__(cls) -> _OutOfRange:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "OUT_OF_RANGE"


OUT_OF_RANGE: Final = _OutOfRange()
# int64 has 19 digits.
MAX_INT_DIGITS = 19
# Streamed bodies: more opening brackets than this between two records (a bound of the
# nesting) is no error record Polarity writes. ijson's memory grows with the square of the
# nesting: at this bound, about 10 MB.
MAX_STREAM_OPENERS = 2000
# Streamed bodies: a record is built whole before the summary folds it; one this large is no
# error record Polarity writes (they hold a stack trace at most).
MAX_STREAM_RECORD_BYTES = 1024 * 1024
# Streamed bodies: ijson's C backend fails with SystemError, or crashes the process, on an
# integer of more than 4,300 digits; a digit run this long never reaches it (a sample every
# kilobyte finds any run over 2,048 digits, then the chunk is searched whole). An exponent too
# large for Decimal raises decimal.InvalidOperation, which costs only the errors part. Whole
# bodies have no such limit: json is given the digits as text.
MAX_STREAM_DIGITS = 4000


def _int(text: str) -> Any:
    # Called with the digits as text, so int()'s 4,300-digit limit is never reached.
    return int(text) if len(text) - (text[0] == "-") <= MAX_INT_DIGITS else OUT_OF_RANGE


def json_float(text: str) -> Any:
    """A JSON number with a fraction or an exponent, as every reader here gives it: a float,
    or OUT_OF_RANGE past a float's range."""
    value = float(text)
    return value if math.isfinite(value) else OUT_OF_RANGE


def _constant(_name: str) -> Any:
    return OUT_OF_RANGE


# A whole body over this size must have at least MIN_BYTES_PER_CONTAINER bytes for each `[` or
# `{`: Polarity's bodies have one in 70 to 160 bytes, while `[],[],…` (one in 3) decodes to 20
# times its size in Python objects. The check is two counts at C speed.
DENSITY_CHECK_BYTES = 64 * 1024
MIN_BYTES_PER_CONTAINER = 32


def too_dense(body: bytes) -> bool:
    """More than one `[` or `{` in MIN_BYTES_PER_CONTAINER bytes (past the first 64 KiB)."""
    return len(body) > DENSITY_CHECK_BYTES and \
        (body.count(b"{") + body.count(b"[")) * MIN_BYTES_PER_CONTAINER > len(body)


def decode_json(body: bytes, what: str) -> Any:
    """Decode a whole body (already bounded in size by the reader).

    orjson first: twice as fast as json on Polarity's bodies. It refuses what the exporter must
    still read field by field (NaN, numbers beyond a double, lone surrogates, invalid UTF-8,
    nesting past 1,024): those bodies, rare, are decoded again by `json` with the bounds below.
    """
    if too_dense(body):
        raise ProtocolError(f"{what}: JSON too dense to decode safely (more than one `[` or "
                            f"`{{` in {MIN_BYTES_PER_CONTAINER} bytes)")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        # strict=False: a raw control character inside a string is kept (and later cleaned
        # from labels) instead of costing the whole page.
        return json.loads(body.decode("utf-8", errors="replace"), strict=False,
                          parse_int=_int, parse_float=json_float,
                          parse_constant=_constant)
    except RecursionError:
        raise ProtocolError(f"{what}: JSON nested too deeply to read") from None
    except ValueError as exc:
        reason = exc.args[0] if exc.args else type(exc).__name__
        raise ProtocolError(f"{what}: response is not valid JSON ({reason})") from None


# Digits become "0", everything else a space: a long digit run is then one substring search.
_DIGITS: Final = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_DIGIT_CHARS: Final = b"0123456789"
_LONG_RUN: Final = b"0" * MAX_STREAM_DIGITS
# Bytes between two looks at a chunk for digits; a run of more than twice this many digits
# covers two neighbouring looks.
_DIGIT_SAMPLE_STEP: Final = 1024


class StreamGuard:
    """Watches the raw bytes of a streamed JSON body for input the streaming parser must not see,
    at almost no cost (two counts and a sparse sample per chunk).

    Depth: a structure can be no deeper than the number of `[` and `{` bytes it contains. ijson
    parses each chunk it reads (at most STREAM_SLICE bytes, bodies.py) whole before it yields
    the records that ended in it, so after a record, what is unparsed lies within the last
    chunk. The guard counts opening brackets and bytes since the last record that way, upper
    bounds of the nesting and the record's size at any point, and refuses the body once one
    passes its limit: no deep structure and no huge record reaches ijson, and an ordinary record
    (a few dozen brackets, a few KB) is nowhere near them. Brackets inside strings count too, so
    a record with thousands of them in its text is refused as well; no error record is like
    that.
    """

    def __init__(self, what: str) -> None:
        self._what = what
        self._openers = 0  # opening brackets handed to the parser since the last record
        self._bytes = 0  # bytes handed to the parser since the last record
        self._last = (0, 0)  # the last chunk's opening brackets and bytes
        self._record_seen = False
        self._digits = 0  # digits that ended the last chunk

    def record_done(self) -> None:
        """The parser yielded a record: nesting is back at the records' list."""
        self._record_seen = True

    def check(self, data: bytes) -> None:
        if not data:
            return
        openers, size = self._last
        if self._record_seen:  # what follows the record lies within the last chunk
            self._openers, self._bytes = openers, size
        else:
            self._openers, self._bytes = self._openers + openers, self._bytes + size
        self._record_seen = False
        self._last = (data.count(b"[") + data.count(b"{"), len(data))
        if self._openers + self._last[0] > MAX_STREAM_OPENERS:
            raise ProtocolError(f"{self._what}: JSON nested too deeply (more than "
                                f"{MAX_STREAM_OPENERS} opening brackets in one record)")
        if self._bytes + self._last[1] > MAX_STREAM_RECORD_BYTES:
            raise ProtocolError(f"{self._what}: a record of more than "
                                f"{MAX_STREAM_RECORD_BYTES} bytes")
        self._check_digits(data)

    def _check_digits(self, data: bytes) -> None:
        head = len(data) - len(data.lstrip(_DIGIT_CHARS))
        run = self._digits + head
        if head == len(data):
            self._digits = run
        else:
            if b"00" in data[::_DIGIT_SAMPLE_STEP].translate(_DIGITS) \
                    and _LONG_RUN in data.translate(_DIGITS):
                run = MAX_STREAM_DIGITS
            self._digits = len(data) - len(data.rstrip(_DIGIT_CHARS))
        if run >= MAX_STREAM_DIGITS:
            raise ProtocolError(f"{self._what}: a run of {MAX_STREAM_DIGITS} digits or more")


class StreamedBody(Protocol):
    total: int  # bytes read so far

    def read(self, size: int = -1) -> bytes: ...


def stream_items(body: StreamedBody, guard: StreamGuard, what: str,
                 empty: bool = False) -> Iterator[Any]:
    """The records of `data` in a streamed body, one at a time, as ijson's C backend reads them
    behind `guard` (which sees every slice first). `empty`: a body without records is no error
    (the rest of a body whose first records were read another way)."""
    count = 0
    try:
        # use_float=False: numbers ijson's C backend cannot hold as int or float (1e400,
        # 20-digit counts) arrive as Decimal; the readers take them as json would read their
        # text (models.as_json_number).
        for item in ijson.items(body, "data.item", use_float=False):
            count += 1
            guard.record_done()
            yield item
    except (ijson.JSONError, UnicodeDecodeError, ArithmeticError) as exc:
        # UnicodeDecodeError: ijson's C backend cannot decode a key holding an escaped lone
        # surrogate ("\udc00"). ArithmeticError: decimal.InvalidOperation on a number token.
        # The first line only: ijson's next lines quote the body around the error ("… (right
        # here)"), which may echo a credential.
        reason = " ".join(str(exc).partition("\n")[0].split())[:120]
        raise ProtocolError(f"{what}: response is not valid JSON ({reason})") from None
    if count == 0 and not empty:
        raise ProtocolError(f"{what}: {body.total} bytes without a 'data' list of records")


# --- where a run of records ends --------------------------------------------------------------

# A backslash escape (the byte after a backslash, whatever it is), a quote, or a bracket.
_TOKENS: Final = re.compile(rb'\\.|["{}\[\]]', re.DOTALL)
# Quotes after a run of more backslashes than this are not counted (a pass over the bytes per
# backslash): no text Polarity writes has one, and the caller then reads the body as before.
MAX_ESCAPE_RUN = 16


def _escaped_quotes(data: bytes, begin: int, end: int) -> int | None:
    """How many quotes in data[begin:end] are escaped: a quote after a run of k backslashes is
    when k is odd. bytes.count of k backslashes and a quote counts the quotes after runs of at
    least k (each match ends at its quote, so none overlap); None past MAX_ESCAPE_RUN."""
    escaped, run = 0, 1
    at_least = data.count(b'\\"', begin, end)
    while at_least:
        if run > MAX_ESCAPE_RUN:
            return None
        longer = data.count(b"\\" * (run + 1) + b'"', begin, end)
        if run % 2:
            escaped += at_least - longer
        run, at_least = run + 1, longer
    return escaped


def value_end(data: bytes, begin: int, end: int, tail: int) -> int | None:
    """Where the last value that is an object ends in data[begin:end], a run of
    comma-separated values of a JSON array that starts between two of them; None if none is
    found.

    Only the last `tail` bytes are walked (all of them when `tail` covers the run): whether
    the walk starts inside a string is known exactly from the quotes before it (minus the
    escaped ones), and of the objects that close in the walk, the value ends are those that
    close at the lowest depth. With the whole run walked, the answer is exact; from a tail it
    is exact whenever the tail holds the end of a value, which the caller proves by decoding
    `[data[begin:cut]]`: that decodes only if the cut ends a value.
    """
    start = max(begin, end - tail)
    while start > begin and data[start - 1] == 0x5C:  # never inside a run of backslashes
        start -= 1
    escaped = _escaped_quotes(data, begin, start)
    if escaped is None:
        return None
    in_string = (data.count(b'"', begin, start) - escaped) % 2
    # Depth relative to where the walk starts; walked from `begin`, it is the depth.
    depth, best, lowest, exact = 0, None, 0, None
    for match in _TOKENS.finditer(data, start, end):
        token = data[match.start()]
        if token == 0x22:  # "
            in_string ^= 1
        elif in_string or token == 0x5C:
            continue
        elif token == 0x7B or token == 0x5B:  # { [
            depth += 1
        else:
            depth -= 1
            if token == 0x7D:
                if best is None or depth <= lowest:
                    best, lowest = match.end(), depth
                if depth == 0:
                    exact = match.end()
    return exact if start == begin else best

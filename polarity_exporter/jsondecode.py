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
  `StreamGuard`, which refuses nesting beyond MAX_STREAM_DEPTH (and digit runs beyond
  MAX_STREAM_DIGITS) before ijson sees it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from itertools import accumulate
from typing import Any, Final

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
# Streamed bodies: deeper than this is no error record Polarity writes.
MAX_STREAM_DEPTH = 64
# Streamed bodies: ijson's C backend fails with SystemError, or crashes the process, on an
# integer of more than 4,300 digits; a digit run this long never reaches it. (An exponent too
# large for Decimal raises decimal.InvalidOperation, which costs only the errors part.) Whole
# bodies have no such limit: json is given the digits as text.
MAX_STREAM_DIGITS = 1000


def _int(text: str) -> Any:
    # Called with the digits as text, so int()'s 4,300-digit limit is never reached.
    return int(text) if len(text) - (text[0] == "-") <= MAX_INT_DIGITS else OUT_OF_RANGE


def _float(text: str) -> Any:
    value = float(text)
    return value if math.isfinite(value) else OUT_OF_RANGE


def _constant(_name: str) -> Any:
    return OUT_OF_RANGE


def decode_json(body: bytes, what: str,
                object_hook: Callable[[dict[str, Any]], Any] | None = None) -> Any:
    """Decode a whole body (already bounded in size by the reader)."""
    try:
        # strict=False: a raw control character inside a string is kept (and later cleaned
        # from labels) instead of costing the whole page.
        return json.loads(body.decode("utf-8", errors="replace"), strict=False,
                          object_hook=object_hook, parse_int=_int, parse_float=_float,
                          parse_constant=_constant)
    except RecursionError:
        raise ProtocolError(f"{what}: JSON nested too deeply to read") from None
    except ValueError as exc:
        reason = exc.args[0] if exc.args else type(exc).__name__
        raise ProtocolError(f"{what}: response is not valid JSON ({reason})") from None


# What string-aware depth tracking needs of a chunk: quotes and brackets.
_NOT_STRUCTURE: Final = bytes(b for b in range(256) if b not in b'"[]{}')
_SKELETON_STRING: Final = re.compile(rb'"[^"]*"')
_NOT_BRACKETS: Final = bytes(b for b in range(256) if b not in b"[]{}")
_STEP: Final = [0] * 256
for _opener in b"[{":
    _STEP[_opener] = 1
for _closer in b"]}":
    _STEP[_closer] = -1
# Digits become "0", everything else a space: a long digit run is then one substring search.
_DIGITS: Final = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_LONG_RUN: Final = b"0" * MAX_STREAM_DIGITS


class StreamGuard:
    """Watches the raw bytes of a streamed JSON body for input the streaming parser must not see.

    Works chunk by chunk at C speed (replace, translate, substring search): the escapes that
    matter are dropped, the chunk is reduced to its quotes and brackets, string contents are cut
    out of that skeleton, and what is left gives the nesting depth. Digit runs are checked on the
    raw bytes (strings included: a string of a thousand digits is no error record either).
    """

    def __init__(self, what: str) -> None:
        self._what = what
        self._depth = 0
        self._in_string = False
        self._escape = False  # the last chunk ended inside a string, right after a backslash
        self._digits = 0  # digits that ended the last chunk

    def check(self, data: bytes) -> None:
        if not data:
            return
        self._check_digits(data)
        self._check_depth(self._brackets(data))

    def _brackets(self, data: bytes) -> bytes:
        """The brackets of `data` that stand outside strings, in order."""
        if self._escape:
            data, self._escape = data[1:], False
        if b"\\" in data:
            # Of JSON's escapes only \\ and \" can change what is string and what is not; \\ is
            # dropped first, so that in \\" the quote still closes the string.
            if b"\\\\" in data:
                data = data.replace(b"\\\\", b"")
            if b'\\"' in data:
                data = data.replace(b'\\"', b"")
            if data.endswith(b"\\"):  # a lone backslash ends the chunk: it escapes the next
                data, self._escape = data[:-1], True
        # Two adjacent quotes in the skeleton are an empty string or the gap between two
        # strings with nothing outside them: dropping the pair keeps what stands outside
        # strings, and the quotes' parity. It leaves few quotes for the regex below.
        skeleton = data.translate(None, _NOT_STRUCTURE).replace(b'""', b"")
        if self._in_string:
            close = skeleton.find(b'"')
            if close < 0:
                return b""
            skeleton, self._in_string = skeleton[close + 1:], False
        outside = _SKELETON_STRING.sub(b"", skeleton) if b'"' in skeleton else skeleton
        quote = outside.find(b'"')
        if quote >= 0:  # a string runs past the end of the chunk
            outside, self._in_string = outside[:quote], True
        return outside

    def _check_depth(self, brackets: bytes) -> None:
        opened = brackets.count(b"[") + brackets.count(b"{")
        if self._depth + opened <= MAX_STREAM_DEPTH:
            self._depth += opened - (len(brackets) - opened)
            return
        levels = list(accumulate(map(_STEP.__getitem__, brackets), initial=self._depth))
        if max(levels) > MAX_STREAM_DEPTH:
            raise ProtocolError(f"{self._what}: JSON nested deeper than {MAX_STREAM_DEPTH} "
                                "levels")
        self._depth = levels[-1]

    def _check_digits(self, data: bytes) -> None:
        mapped = data.translate(_DIGITS)
        head = len(mapped) - len(mapped.lstrip(b"0"))
        if self._digits + head >= MAX_STREAM_DIGITS or _LONG_RUN in mapped:
            raise ProtocolError(f"{self._what}: a run of more than {MAX_STREAM_DIGITS} digits")
        tail = len(mapped) - len(mapped.rstrip(b"0"))
        self._digits = self._digits + tail if tail == len(mapped) else tail

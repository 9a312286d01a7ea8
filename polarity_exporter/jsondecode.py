"""Bounded JSON decoding: whole bodies with `json`, and a guard for streamed ones.

Polarity's bodies are written partly by third-party integrations, and a broken or hostile server
can send anything. Whatever arrives, decoding either yields Python values the models can check or
raises `ProtocolError` with one line; it never raises RecursionError, OverflowError or a
ValueError from int() at the web layer.

- Numbers: an integer of more than 20 characters, a float that overflows and the non-standard
  constants (NaN, Infinity) become `OUT_OF_RANGE`, which every model reader treats as an
  unreadable field: one bad number costs its field, not the page.
- Depth: `json` parses recursively and stops with RecursionError (caught) near Python's recursion
  limit, about 1,000 levels, in linear time. ijson's C backend builds a prefix string per level
  and costs quadratic memory on deep input (50,000 levels: 6 GB), so streamed bodies pass through
  `StreamGuard`, which refuses nesting beyond MAX_STREAM_DEPTH before ijson sees it.
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
# int64 has 19 digits; one more for the sign.
MAX_INT_CHARS = 20
# Streamed bodies: deeper than this is no error record Polarity writes.
MAX_STREAM_DEPTH = 64
# Streamed bodies: ijson's C backend fails (or crashes, past 4,300 digits) on numbers it cannot
# convert; these bounds keep such tokens away from it. Whole bodies have no such limit.
MAX_STREAM_NUMBER_CHARS = 1000
MAX_STREAM_EXPONENT_DIGITS = 15


def _int(text: str) -> Any:
    # Called with the digits as text, so int()'s 4,300-digit limit is never reached.
    return int(text) if len(text) <= MAX_INT_CHARS else OUT_OF_RANGE


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


# Strings closed within the chunk; what is left outside them is structure and scalars.
_STRING: Final = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
# The rest of a string that started in an earlier chunk, up to (not including) its quote.
_STRING_REST: Final = re.compile(rb'(?:[^"\\]|\\.)*', re.DOTALL)
_NOT_BRACKETS: Final = bytes(b for b in range(256) if b not in b"[]{}")
_STEP: Final = [0] * 256
for _opener in b"[{":
    _STEP[_opener] = 1
for _closer in b"]}":
    _STEP[_closer] = -1
_NUMBER_CHARS: Final = b"+-.0123456789eE"
_LONG_NUMBER: Final = re.compile(rb"[-+.0-9eE]{%d}" % MAX_STREAM_NUMBER_CHARS)
_HUGE_EXPONENT: Final = re.compile(rb"[eE][-+]?[0-9]{%d}" % (MAX_STREAM_EXPONENT_DIGITS + 1))


class StreamGuard:
    """Watches the raw bytes of a streamed JSON body for input the streaming parser must not see.

    Works chunk by chunk at C speed (regex and bytes methods): string contents are cut out, and
    what is left is checked for nesting depth and for number tokens out of any sane range.
    """

    def __init__(self, what: str) -> None:
        self._what = what
        self._depth = 0
        self._in_string = False
        self._escape = False  # the last chunk ended inside a string, right after a backslash
        self._number_tail = b""  # a number token that ran to the end of the last chunk

    def check(self, data: bytes) -> None:
        outside = self._outside_strings(data)
        if outside:
            self._check_depth(outside)
            self._check_numbers(outside)

    def _outside_strings(self, data: bytes) -> bytes:
        pos = 0
        if self._in_string:
            if self._escape:
                if not data:
                    return b""
                pos, self._escape = 1, False
            end = _STRING_REST.match(data, pos).end()  # type: ignore[union-attr]
            if end == len(data):
                return b""
            if data[end] == 0x5C:  # a lone backslash ends the chunk
                self._escape = True
                return b""
            self._in_string = False
            pos = end + 1
            self._number_tail = b""
        stripped = _STRING.sub(b" ", data[pos:] if pos else data)
        quote = stripped.find(b'"')
        if quote < 0:
            return stripped
        # A string runs past the end of the chunk.
        self._in_string = True
        rest = stripped[quote + 1:]
        backslashes = len(rest) - len(rest.rstrip(b"\\"))
        self._escape = backslashes % 2 == 1
        return stripped[:quote] + b" "

    def _check_depth(self, outside: bytes) -> None:
        opened = outside.count(b"[") + outside.count(b"{")
        if self._depth + opened <= MAX_STREAM_DEPTH:
            self._depth += opened - outside.count(b"]") - outside.count(b"}")
            return
        brackets = outside.translate(None, _NOT_BRACKETS)
        levels = list(accumulate(map(_STEP.__getitem__, brackets), initial=self._depth))
        if max(levels) > MAX_STREAM_DEPTH:
            raise ProtocolError(f"{self._what}: JSON nested deeper than {MAX_STREAM_DEPTH} "
                                "levels")
        self._depth = levels[-1]

    def _check_numbers(self, outside: bytes) -> None:
        # A token cut by the chunk boundary is checked whole: the tail kept from the last
        # chunk is joined to this one.
        text = self._number_tail + outside if self._number_tail else outside
        if _LONG_NUMBER.search(text):
            raise ProtocolError(f"{self._what}: a number of more than "
                                f"{MAX_STREAM_NUMBER_CHARS} characters")
        if _HUGE_EXPONENT.search(text):
            raise ProtocolError(f"{self._what}: a number with an exponent of more than "
                                f"{MAX_STREAM_EXPONENT_DIGITS} digits")
        tail = len(text) - len(text.rstrip(_NUMBER_CHARS))
        self._number_tail = text[len(text) - tail:] if tail else b""

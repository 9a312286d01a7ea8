"""Streamed errors bodies (larger than client.WHOLE_ERRORS_BYTES): record-aligned pieces.

A body too large to hold whole used to go through ijson record by record: ijson builds every
record whole, stack traces included, and was most of the CPU of a large scrape. Now the body is
cut into pieces of about PIECE_BYTES that end where a record ends, and each piece is decoded as
a list of records in the documented shape, in C, straight into records
(models.documented_error_items). A piece with anything else in it goes through ijson as
before, record by record, behind a StreamGuard: one odd record costs its piece's speed.

Where a piece ends is guessed first: records are alike, so the `}, {"<first key>"` places from
the piece's end back, the first key being the first record's. A guess is kept only if the piece
up to it decodes: a cut inside a string leaves the string open, a cut inside a record leaves its
brace open, and a cut past the end of the records' list leaves a `]` inside the piece; none of
them is a valid list. If MAX_GUESSES guesses fail, the end is found by reading the piece token
by token, strings included (exact, and a hundred times slower); after MAX_SLOW_PIECES pieces
that needed it, the rest of the body goes to ijson. A body whose `data` is not its first key,
the last piece (the end of the list and whatever follows it), a record longer than a piece,
and whatever follows a piece in which the list ends go through ijson too.

What is read is what ijson alone reads (tests/test_errorstream.py), with two exceptions in what
is refused. ijson refuses some bodies msgspec reads: an exponent too large for a Decimal in a
field nobody reads, or whatever its StreamGuard refuses (thousands of brackets in one record's
text, a digit run of thousands); a piece in the documented shape never reaches ijson, so those
records are read. And the guard's counts are exact only to a slice (8 KiB): a body within a
slice of its bounds may be refused or not depending on where a piece starts.

Memory: the first WHOLE_ERRORS_BYTES read, then at most two pieces of the body, beside the
records of one piece.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from typing import Any, Final

import ijson

from polarity_exporter.deadline import Deadline
from polarity_exporter.errors import ProtocolError
from polarity_exporter.jsondecode import StreamGuard
from polarity_exporter.models import ErrorRecord, Problems, documented_error_items, parse_errors
from polarity_exporter.transport import STREAM_SLICE, BodyReader, one_line

ERRORS = "/api/integrations/errors"
# A piece of the body decoded at once (~200 of Polarity's records): small enough that its
# buffers stay below the allocator's mmap threshold (memory.py) and are reused, not mapped anew.
PIECE_BYTES = 256 * 1024
# Where a piece may end, found from its end back: at most this many are tried (decoded), among
# the first MAX_KEYS_BACK places the first key occurs, before the exact scan. Polarity's
# records hold a handful of objects at most (affected users) that may look alike.
MAX_GUESSES = 4
MAX_KEYS_BACK = 64
# White space looked through between two records (pretty-printers write a few bytes).
MAX_SPACE = 64
# Pieces that needed the exact scan (~0.3 s per MB) read before the rest of the body goes to
# ijson whole: a body whose pieces all need it costs at most this many scans more than ijson.
MAX_SLOW_PIECES = 8

_DATA_START: Final = re.compile(rb'\s*\{\s*"data"\s*:\s*\[\s*')
_FIRST_KEY: Final = re.compile(rb'\{\s*("[^"\\]{1,64}")\s*:')
_SEPARATOR: Final = re.compile(rb"\s*,\s*\{")
# A string (escapes included), a bracket, or a lone quote: a string the piece cuts short.
_TOKEN: Final = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[{}\[\]"]', re.DOTALL)
_OPEN: Final = frozenset(b"{[")
_QUOTE, _COMMA, _OPEN_BRACE, _CLOSE_BRACE = b'",{}'
_SPACE: Final = frozenset(b" \t\r\n")
_PREFIX: Final = b'{"data":['


def stream_errors(reader: BodyReader, head: bytes, guard: StreamGuard, problems: Problems,
                  deadline: Deadline) -> Iterator[ErrorRecord]:
    """The records of a streamed errors body; `head` is what was read of it already."""
    start = _DATA_START.match(head)
    first = _FIRST_KEY.match(head, start.end()) if start is not None else None
    if start is None or first is None:
        reader.replay(head)
        del head
        yield from parse_errors(_stream_records(reader, guard), problems)
        return
    body, at, ended, key, slow = head, start.end(), False, first.group(1), 0
    del head
    while slow < MAX_SLOW_PIECES:
        if not ended and len(body) - at < PIECE_BYTES:
            more, ended = reader.read_up_to(PIECE_BYTES)
            body, at = body[at:] + more, 0
        if ended and len(body) - at <= PIECE_BYTES:
            break  # the last piece, with the end of the list
        deadline.check(ERRORS)  # the head is cut into pieces without a read
        cut, records, fast = _piece(body, at, at + PIECE_BYTES, key, problems)
        if cut is None or cut <= at:
            break  # a record longer than a piece, or the list ends in this piece
        slow += not fast
        yield from records
        at = body.index(b",", cut) + 1
    reader.replay(_PREFIX + body[at:])
    del body
    yield from parse_errors(_stream_records(reader, guard), problems)


def _piece(body: bytes, start: int, end: int, key: bytes,
           problems: Problems) -> tuple[int | None, list[ErrorRecord], bool]:
    """Where the last whole record in body[start:end] ends, the records up to there, and
    whether they were read the fast way (a guessed end, the documented shape); no end for a
    record longer than the piece."""
    for guess in itertools.islice(_guesses(body, start, end, key), MAX_GUESSES):
        records = _documented(body, start, guess, problems)
        if records is not None:
            return guess, records, True
    cut = _exact_record_end(body, start, end)
    if cut is None:
        return None, [], False
    records = _documented(body, start, cut, problems)
    if records is None:  # not in the documented shape: record by record
        piece = _Piece(body[start:cut])
        records = list(parse_errors(_stream_records(piece, piece.guard), problems))
    return cut, records, False


def _documented(body: bytes, start: int, end: int, problems: Problems) -> list[ErrorRecord] | None:
    # A list, not `{"data": [...]}`: a cut past the end of the records' list (in a list that
    # follows it, say) must not decode.
    with memoryview(body) as view:
        piece = b"".join((b"[", view[start:end], b"]"))
    return documented_error_items(piece, problems)


def _guesses(body: bytes, start: int, end: int, key: bytes) -> Iterator[int]:
    """Just past the `}` of each `}, {"<key>"` in body[start:end], from the end back, `key`
    being the first key of the body's first record: where records are alike, where one ends
    and the next begins. (Never inside a string, whose quotes would be escaped; it can be
    inside a record, in a list of objects that start with the same key, which the decode that
    follows finds out.)"""
    before = end
    for _ in range(MAX_KEYS_BACK):
        found = body.rfind(key, start, before)
        if found < 0:
            return
        before = found
        brace = _before_space(body, found, start)
        comma = _before_space(body, brace, start) if body[brace] == _OPEN_BRACE else start
        close = _before_space(body, comma, start) if body[comma] == _COMMA else start
        if close > start and body[close] == _CLOSE_BRACE:
            yield close + 1


def _before_space(body: bytes, index: int, start: int) -> int:
    """The index of the last byte before `index` that is not white space; `start` if none is
    after it, or if the white space runs longer than a separator's would."""
    for _ in range(MAX_SPACE):
        index -= 1
        if index <= start:
            return start
        if body[index] not in _SPACE:
            return index
    return start


def _exact_record_end(body: bytes, start: int, end: int) -> int | None:
    """Just past the last record that ends in body[start:end] and is followed by `,` and `{`,
    read token by token: brackets inside strings do not count."""
    depth, found = 0, None
    for token in _TOKEN.finditer(body, start, end):
        if token.end() - token.start() > 1:
            continue  # a whole string
        char = body[token.start()]
        if char == _QUOTE:
            break  # a string that runs past the piece
        if char in _OPEN:
            depth += 1
            continue
        depth -= 1
        if depth < 0:
            break  # past the list of records
        if depth == 0 and char == _CLOSE_BRACE and _SEPARATOR.match(body, token.end()):
            found = token.end()
    return found


class _Piece:
    """A record-aligned piece handed to ijson as BodyReader hands out a stream: with invalid
    UTF-8 replaced, in slices of STREAM_SLICE, each checked by the piece's own guard."""

    def __init__(self, piece: bytes) -> None:
        data = (_PREFIX + piece + b"]}").decode("utf-8", "replace").encode("utf-8")
        self._data = memoryview(data)
        self.guard = StreamGuard(ERRORS)
        self.total = len(data)

    def read(self, size: int = -1) -> bytes:
        if size == 0:
            return b""
        step = min(size if size > 0 else STREAM_SLICE, STREAM_SLICE)
        chunk, self._data = bytes(self._data[:step]), self._data[step:]
        self.guard.check(chunk)
        return chunk


def _stream_records(reader: BodyReader | _Piece, guard: StreamGuard) -> Iterator[Any]:
    count = 0
    try:
        # use_float=False: numbers ijson's C backend cannot hold as int or float (1e400,
        # 20-digit counts) arrive as Decimal and cost only their field.
        for item in ijson.items(reader, "data.item", use_float=False):
            count += 1
            guard.record_done()
            yield item
    except (ijson.JSONError, UnicodeDecodeError, ArithmeticError) as exc:
        # UnicodeDecodeError: ijson's C backend cannot decode a key holding an escaped lone
        # surrogate ("\udc00"). ArithmeticError: decimal.InvalidOperation on a number token.
        raise ProtocolError(f"{ERRORS}: response is not valid JSON "
                            f"({one_line(str(exc))[:120]})") from None
    if count == 0:
        raise ProtocolError(f"{ERRORS}: {reader.total} bytes without a 'data' list of records")

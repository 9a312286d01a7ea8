"""An errors body too large to decode whole, decoded by msgspec a piece at a time when it is in
the documented shape.

The streaming parser (ijson) reads about 90 MB/s and builds a dict of every field of every
record; msgspec decodes only the fields the exporter reads, several times faster, but only
whole documents. So the records are taken in pieces, each a run of whole records: the cut is
proposed by jsondecode.value_end, string-aware, from the bytes at the end of what was read, and
proven by the decode itself, since `[piece]` is a JSON array only if the cut ends a record. No
cut is a guess. From the second piece on, the cut is first looked for as the bytes around the
last proven one (_separator: the closers that end a record, the comma and the next record's
first key), from the end, by a C search; the walk counts every quote of the piece first, which
was a tenth of a scrape of 24,000 records. It is looked for in the walk's tail only, and the
decode proves that cut too; the first it refuses ends the search for the body, so a body made
to defeat it costs one decode and a search of each tail more.
Anything else (a body that does not start `{"data": [`, a piece msgspec refuses,
no provable cut within PIECE_BYTES, the end of the records) hands the rest of the body,
from the last proven cut, to the streaming parser behind its guard, which reads it as it read
every streamed body before.

Memory: what was read and not yet decoded is at most the first WHOLE_ERRORS_BYTES (client.py),
then at most two reads of PIECE_BYTES; a piece decodes to the few fields read.
"""

from __future__ import annotations

import json
import re
from collections.abc import Generator, Iterator
from typing import Final

from polarity_exporter.bodies import BodyReader
from polarity_exporter.deadline import Deadline
from polarity_exporter.documented import DocumentedErrors, documented_piece
from polarity_exporter.errors import ProtocolError
from polarity_exporter.jsondecode import StreamGuard, stream_items, value_end
from polarity_exporter.models import ErrorRecord, Problems, parse_errors

# Read between two cuts, and the most a piece is cut from. A record is at most
# jsondecode.MAX_STREAM_RECORD_BYTES (1 MiB), so this much from a record's start holds its end;
# bytes without a provable cut go to the streaming parser, which refuses a larger record.
PIECE_BYTES = 1024 * 1024
# The first walk for a cut covers this much of a piece's end (a few records); then 16 times
# more, up to the whole piece. The next piece starts from the walk that found the cut. A cut
# that needed more than MAX_TAIL (records of hundreds of KiB: no error record Polarity writes)
# is the last: the walk is Python, byte by byte of structure, and such a body would cost more
# CPU in pieces than in the streaming parser.
FIRST_TAIL = 16 * 1024
MAX_TAIL = 256 * 1024
# Around a proven cut: the closers before it (at most 16) and, after it, the comma and the
# next record's first key (at most 64 characters, no escapes): `}}}},{"type"`. Outside strings
# these bytes are where a record ends and the next starts (or where nested objects do, which
# the decode refuses as a cut); inside a string their quotes would be escaped.
_CLOSERS: Final = frozenset(b"}] \t\r\n")
_NEXT_KEY: Final = re.compile(rb'[ \t\r\n]*,[ \t\r\n]*\{[ \t\r\n]*"[^"\\]{1,64}"')
# The documented body's start, up to its first record: only then is the first record known.
_START: Final = re.compile(rb'[ \t\r\n]*\{[ \t\r\n]*"data"[ \t\r\n]*:[ \t\r\n]*\[')
_SPACE: Final = re.compile(rb"[ \t\r\n]*")
_REST: Final = b'{"data":['  # what the streaming parser is given before the rest


def read_streamed(head: bytes, reader: BodyReader, guard: StreamGuard, problems: Problems,
                  deadline: Deadline, what: str) -> Iterator[DocumentedErrors | ErrorRecord]:
    """The records of a body whose first `head` bytes were read, as DocumentedErrors pieces for
    as long as they are in the documented shape, then as records from the streaming parser.
    The caller keeps no reference to `head`: it is let go once read."""
    start = _START.match(head)
    pieces = _Pieces(reader, problems, deadline, what)
    if start is None:
        rest = head
    else:
        read = pieces.read(head, start.end())
        del head
        rest = _REST + (yield from read)
    if pieces.count:
        deadline.note(f"{what}: {pieces.records} records in {pieces.count} pieces decoded in the "
                      "documented shape" + (f", the rest ({len(rest) - len(_REST)} bytes read "
                                            "so far) streamed" if not pieces.done else ""))
    if pieces.done:
        _check_end(rest, reader, what)
        return
    reader.replay(rest)
    del rest
    yield from parse_errors(stream_items(reader, guard, what, empty=pieces.count > 0), problems)


class _Pieces:
    def __init__(self, reader: BodyReader, problems: Problems, deadline: Deadline,
                 what: str) -> None:
        self._reader = reader
        self._problems = problems
        self._deadline = deadline
        self._what = what
        self._tail = FIRST_TAIL
        # The bytes around the last proven cut, and where in them the cut is; None: walk.
        self._separator: tuple[bytes, int] | None = None
        self._search = True  # until the decode refuses a cut found by the separator
        self._ended = False  # the whole body is read
        self.count = 0
        self.records = 0
        self.done = False  # every record was in a piece

    def read(self, data: bytes, begin: int) -> Generator[DocumentedErrors, None, bytes]:
        """Pieces while there are provable cuts, from data[begin:] (just after the records'
        `[`) on; returns the rest of what was read: from where the next record starts, or from
        what ends the records (`]`; or a comma or anything else that makes the body invalid,
        left for the streaming parser to refuse as it refused such bodies before)."""
        data, begin = self._space(data, begin)
        if data[begin:begin + 1] == b"]":  # no records
            return data[begin:]
        while True:
            data, begin, batch = self._cut(data, begin)
            if batch is None:
                return data[begin:]
            self.count += 1
            self.records += len(batch)
            yield batch
            data, begin = self._space(data, begin)
            after_record = data[begin:begin + 1]
            if after_record in (b"]", b""):  # the records end here (or the body does)
                self.done = after_record == b"]"
                return data[begin:]
            if after_record != b",":  # the streaming parser would take it for a first record
                raise ProtocolError(f"{self._what}: response is not valid JSON (a record is "
                                    f"followed by {after_record!r}, not ',' or ']')")
            data, after = self._space(data, begin + 1)
            if data[after:after + 1] in (b"]", b""):
                return data[begin:]  # `,]` or a cut-off body: the comma stays, to be refused
            if self._tail > MAX_TAIL:  # records of hundreds of KiB: the streaming parser
                return data[after:]
            begin = after

    def _cut(self, data: bytes,
             begin: int) -> tuple[bytes, int, DocumentedErrors | None]:
        """The next piece from `begin` (a record's start), reading more of the body as needed:
        the data read so far, where the piece ends, and its records; without a provable cut,
        where it would have started, and None."""
        self._deadline.check(self._what)  # the walks and decodes between reads, too
        data, begin = self._ensure(data, begin, PIECE_BYTES)
        stop = min(len(data), begin + PIECE_BYTES)
        if self._ended and stop == len(data):  # the end of the body is here
            last = _last_records(data, begin, self._problems)
            if last is not None:
                return data, last[1], last[0]
        found = self._by_separator(data, begin, stop)
        if found is not None:
            return data, found[1], found[0]
        cut = _cut(data, begin, stop, self._problems, self._tail)
        if cut is None:
            return data, begin, None
        batch, end, self._tail = cut
        if self._search:
            self._separator = _separator(data, end)
        return data, end, batch

    def _by_separator(self, data: bytes, begin: int,
                      stop: int) -> tuple[DocumentedErrors, int] | None:
        """The records of data[begin:stop] up to the last place that looks as the last proven
        cut did, if the decode proves it; None to walk."""
        if self._separator is None:
            return None
        separator, offset = self._separator
        # In the walk's tail only: a search of the whole piece that found nothing, or found the
        # bytes near its start (a piece of one record), would cost a scan of the piece for every
        # piece of a body made so (found by an attack: twice the walk's CPU).
        at = data.rfind(separator, max(begin, stop - self._tail), stop)
        if at < 0 or at + offset <= begin:
            return None
        batch = documented_piece(data, begin, at + offset, self._problems)
        if batch is None:  # not where a record ends: walk, for the rest of the body
            self._separator, self._search = None, False
            return None
        return batch, at + offset

    def _space(self, data: bytes, begin: int) -> tuple[bytes, int]:
        """Past the whitespace at `begin`, and at least one byte further unless the body
        ends."""
        while True:
            data, begin = self._ensure(data, begin, 1)
            begin = _SPACE.match(data, begin).end()  # type: ignore[union-attr]
            if begin < len(data) or self._ended:
                return data, begin

    def _ensure(self, data: bytes, begin: int, size: int) -> tuple[bytes, int]:
        """At least `size` bytes from `begin` on, unless the body ends first: what is left of
        `data` (usually part of a record) followed by more of the body."""
        while len(data) - begin < size and not self._ended:
            more, self._ended = self._reader.read_up_to(PIECE_BYTES)
            data, begin = data[begin:] + more, 0
        return data, begin


def _separator(data: bytes, cut: int) -> tuple[bytes, int] | None:
    """The bytes around a proven cut (_CLOSERS before it, _NEXT_KEY after it), and where in
    them the cut is; None when what follows the cut is not read yet, or is no next record."""
    after = _NEXT_KEY.match(data, cut)
    if after is None:
        return None
    start = cut
    while start > cut - 16 and data[start - 1] in _CLOSERS:
        start -= 1
    return data[start:after.end()], cut - start


def _cut(data: bytes, begin: int, end: int, problems: Problems,
         tail: int) -> tuple[DocumentedErrors, int, int] | None:
    """The records of data[begin:end] up to the last cut the decode proves, where it is, and
    the walk that found it; None if there is none (no whole record yet, or records outside the
    documented shape)."""
    while True:
        cut = value_end(data, begin, end, tail)
        if cut is not None:
            batch = documented_piece(data, begin, cut, problems)
            if batch is not None:
                return batch, cut, tail
        if tail >= end - begin:
            return None
        tail *= 16


# What may follow the records (`]`, other members such as "meta", `}`): read whole and checked
# by json, which the streaming parser was not exact about (it took `]}"` for a valid end, and
# the records of a second "data" member for more records).
MAX_END = 256 * 1024


def _check_end(rest: bytes, reader: BodyReader, what: str) -> None:
    """The body after its records is valid JSON, at most MAX_END bytes, and names "data" once
    (json keeps the last of two, whose records are not the ones read: refused)."""
    after = len(rest) - len(_REST)  # `rest` starts with _REST, then the `]`
    more, ended = reader.read_up_to(MAX_END + 1 - after)
    if not ended or after + len(more) > MAX_END:
        raise ProtocolError(f"{what}: more than {MAX_END} bytes after the records")
    keys: list[str] = []

    def pairs(members: list[tuple[str, object]]) -> dict[str, object]:
        keys[:] = [key for key, _ in members]  # the outermost object is decoded last
        return dict(members)

    try:
        # As the other readers read: invalid UTF-8 repaired, control characters in strings.
        json.loads((rest + more).decode("utf-8", "replace"), object_pairs_hook=pairs,
                   strict=False)
    except (ValueError, RecursionError):
        raise ProtocolError(f"{what}: response is not valid JSON after the records") from None
    if keys.count("data") != 1:
        raise ProtocolError(f"{what}: response names 'data' more than once")


# `]` tried from the end of a body read whole, for the one that ends the records.
LAST_BRACKETS = 4


def _last_records(data: bytes, begin: int,
                  problems: Problems) -> tuple[DocumentedErrors, int] | None:
    """The records of data[begin:] up to the `]` that ends them, in a body read to its end; and
    where that `]` is. Tried from the end (what follows the records is short); the decode
    proves it: `[data[begin:at]]` decodes only if the records end at `at`."""
    at = len(data)
    for _ in range(LAST_BRACKETS):
        at = data.rfind(b"]", begin, at)
        if at < 0:
            return None
        batch = documented_piece(data, begin, at, problems)
        if batch is not None:
            return batch, at
    return None

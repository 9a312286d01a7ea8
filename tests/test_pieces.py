"""A streamed errors body read a piece at a time by msgspec (pieces.py): every cut proven, and
the same summary as the streaming parser reading the whole body, whatever the body holds."""

from __future__ import annotations

import io
import json
import random
from collections import Counter
from typing import Any

import pytest
import requests
import urllib3
from errorbodies import ABSENT, BASE, DOCUMENTED, PLACES, VALUES, body_of, changed
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from polarity_exporter import pieces
from polarity_exporter.bodies import BodyReader
from polarity_exporter.deadline import Deadline
from polarity_exporter.errors import ProtocolError
from polarity_exporter.jsondecode import StreamGuard, stream_items, value_end
from polarity_exporter.models import Problems, parse_errors
from polarity_exporter.summary import LabelCleaner, summarize_errors

# Text that is hard to cut around: quotes, runs of backslashes, brackets and the record
# separator itself inside strings.
HOSTILE = st.lists(st.sampled_from(['"', "\\", "{", "}", "[", "]", ",", "},{", "a", " ", "é"]),
                   max_size=30).map("".join)
RECORD = DOCUMENTED.flatmap(lambda record: HOSTILE.map(
    lambda text: changed(record, ("attributes", "title"), text)))


def reader_of(body: bytes) -> BodyReader:
    response = requests.Response()
    response.raw = urllib3.HTTPResponse(body=io.BytesIO(body), preload_content=False)
    return BodyReader(response, Deadline(60), "errors", limit=len(body) + 1, repair_utf8=True,
                      guard=StreamGuard("errors"))


def summary(records: Any, problems: Problems) -> tuple[Any, Problems]:
    folded = summarize_errors(records, LabelCleaner(128), problems)
    return ({label: (entry.records, sorted(entry.users),
                     {code: (stats.occurrences, stats.has_count, stats.last_seen)
                      for code, stats in entry.codes.items()})
             for label, entry in folded.integrations.items()}, problems)


def by_pieces(body: bytes, head_bytes: int) -> tuple[Any, Problems]:
    reader = reader_of(body)
    head, _ = reader.read_up_to(head_bytes)
    problems: Problems = Counter()
    guard = reader._guard
    assert guard is not None
    return summary(pieces.read_streamed(head, reader, guard, problems, Deadline(60), "errors"),
                   problems)


def by_stream(body: bytes) -> tuple[Any, Problems]:
    reader = reader_of(body)
    problems: Problems = Counter()
    guard = reader._guard
    assert guard is not None
    return summary(parse_errors(stream_items(reader, guard, "errors"), problems), problems)


@pytest.fixture
def small_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pieces of a few records, so that a small body is cut many times."""
    monkeypatch.setattr(pieces, "PIECE_BYTES", 700)
    monkeypatch.setattr(pieces, "FIRST_TAIL", 64)
    monkeypatch.setattr(pieces, "MAX_TAIL", 1024)


def record_ends(run: bytes) -> list[int]:
    """Where each value of `run` (comma-separated values, as in an array) ends, by json."""
    decoder, text, ends, at = json.JSONDecoder(), run.decode("utf-8"), [], 0
    while at < len(text):
        _, at = decoder.raw_decode(text, at)
        ends.append(len(text[:at].encode("utf-8")))
        while at < len(text) and text[at] in ", ":
            at += 1
    return ends


@settings(max_examples=200, deadline=None)
@given(st.lists(RECORD, min_size=1, max_size=6), st.data())
def test_a_cut_found_from_the_start_is_exactly_where_a_record_ends(records: list[Any],
                                                                    data: st.DataObject) -> None:
    run = b", ".join(json.dumps(record).encode("utf-8") for record in records)
    end = data.draw(st.integers(0, len(run)))
    found = value_end(run, 0, end, tail=len(run) + 1)
    ends = [at for at in record_ends(run) if at <= end]
    assert found == (ends[-1] if ends else None)


@settings(max_examples=200, deadline=None)
@given(st.lists(RECORD, min_size=1, max_size=6), st.integers(1, 400), st.data())
def test_a_cut_from_a_tail_is_a_record_end_whenever_it_decodes(records: list[Any], tail: int,
                                                               data: st.DataObject) -> None:
    from polarity_exporter.documented import documented_piece
    run = b",".join(json.dumps(record).encode("utf-8") for record in records)
    end = data.draw(st.integers(0, len(run)))
    found = value_end(run, 0, end, tail)
    if found is not None and documented_piece(run, 0, found, Counter()) is not None:
        assert found in record_ends(run)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # a constant patch
@given(st.lists(RECORD, max_size=25), st.integers(1, 3000))
def test_pieces_read_a_documented_body_as_the_streaming_parser_does(
        small_pieces: None, records: list[Any], head_bytes: int) -> None:
    body = body_of(records)
    expected = by_stream(body) if records else None
    if expected is None:  # no records: both refuse the body
        with pytest.raises(ProtocolError):
            by_pieces(body, head_bytes)
        return
    assert by_pieces(body, head_bytes) == expected


@pytest.mark.parametrize(("place", "value"), [(p, v) for p in PLACES for v in VALUES])
def test_a_record_outside_the_documented_shape_hands_the_rest_to_the_streaming_parser(
        small_pieces: None, place: tuple[Any, ...], value: Any) -> None:
    records = [changed(BASE, ("attributes", "integration-id"), f"i{n % 3}") for n in range(12)]
    records[7] = changed(records[7], place, value)
    body = body_of([record for record in records if record is not ABSENT])
    try:
        expected = by_stream(body)
    except ProtocolError:  # e.g. a lone surrogate the streaming parser refuses: so do pieces
        with pytest.raises(ProtocolError):
            by_pieces(body, 300)
        return
    assert by_pieces(body, 300) == expected


@pytest.mark.parametrize("body", [
    b'{"jsonapi": {"version": "1.0"}, "data": [' + json.dumps(BASE).encode() + b"]}",
    b'  {\n "data" :\n [\n' + json.dumps(BASE, indent=2).encode() + b"\n ]\n}\n",
    b'{"data":[' + b",".join([json.dumps(BASE).encode()] * 9) + b'],"meta":{"a":[{"b":"]"}]}}',
], ids=["data-not-first", "pretty-printed", "brackets-after-the-records"])
def test_bodies_of_other_layouts_read_the_same(small_pieces: None, body: bytes) -> None:
    assert by_pieces(body, 100) == by_stream(body)


@pytest.mark.parametrize("tail", [b"", b"]", b"],", b']}x', b", {", b"}]}", b",]}", b", ]}",
                                  b",", b"]]}", b"0 ]}", b' "x"]}', b"{}]}"],
                         ids=["no-end", "no-object-end", "dangling", "trailing-garbage",
                              "cut-record", "extra-brace", "trailing-comma",
                              "trailing-comma-space", "cut-after-comma", "extra-bracket",
                              "a-number-after-a-record", "a-string-after-a-record",
                              "an-object-after-a-record"])
def test_a_broken_end_fails_the_part_as_the_streaming_parser_does(small_pieces: None,
                                                                 tail: bytes) -> None:
    body = b'{"data":[' + b",".join([json.dumps(BASE).encode()] * 9) + tail
    with pytest.raises(ProtocolError):
        by_stream(body)
    with pytest.raises(ProtocolError):
        by_pieces(body, 100)


def test_a_body_of_many_pieces_is_decoded_in_pieces_not_streamed(small_pieces: None) -> None:
    rng = random.Random(5)
    records = [changed(BASE, ("attributes", "error-count"), rng.randrange(100))
               for _ in range(200)]
    body = body_of(records)
    reader = reader_of(body)
    head, _ = reader.read_up_to(500)
    problems: Problems = Counter()
    deadline = Deadline(60, log=None)
    read = list(pieces.read_streamed(head, reader, StreamGuard("errors"), problems, deadline,
                                     "errors"))
    assert len(read) > 20  # pieces of a few records each
    assert sum(len(batch) for batch in read) == 200  # type: ignore[arg-type]
    assert all(type(batch).__name__ == "DocumentedErrors" for batch in read)


def test_records_that_need_a_long_walk_leave_the_rest_to_the_streaming_parser(
        small_pieces: None) -> None:
    # Each record needs a walk over more than MAX_TAIL to find its end: after the first such
    # piece, pieces would cost more than the streaming parser.
    big = changed(BASE, ("attributes", "meta", "stack"), "x" * 3000)
    body = body_of([big] * 6)
    reader = reader_of(body)
    head, _ = reader.read_up_to(100)
    problems: Problems = Counter()
    read = list(pieces.read_streamed(head, reader, StreamGuard("errors"), problems,
                                     Deadline(60), "errors"))
    assert sum(type(batch).__name__ == "DocumentedErrors" for batch in read) <= 1
    assert by_pieces(body, 100) == by_stream(body)


def test_a_record_larger_than_the_buffer_is_left_to_the_streaming_parser(
        small_pieces: None) -> None:
    big = changed(BASE, ("attributes", "title"), "x" * 10_000)
    body = body_of([BASE, big, BASE])
    assert by_pieces(body, 100) == by_stream(body)


@given(st.lists(st.sampled_from(["\\", '"', "a"]), max_size=60).map("".join))
def test_escaped_quotes_are_counted_exactly(text: str) -> None:
    from polarity_exporter.jsondecode import _escaped_quotes
    data = text.encode()
    expected, run = 0, 0
    for char in text:
        if char == '"' and run % 2:
            expected += 1
        run = run + 1 if char == "\\" else 0
    assert _escaped_quotes(data, 0, len(data)) == (expected if "\\" * 17 not in text else None)


def test_the_walk_from_a_tail_knows_when_it_starts_inside_a_string() -> None:
    # The tail starts inside the title, which holds what looks like the end of a record: a walk
    # that took it for structure would propose a cut there.
    record = changed(BASE, ("attributes", "code"), 'x \\" }},{"z": [' + "y" * 40)
    run = b",".join([json.dumps(record).encode()] * 3)
    inside = run.rindex(b"yyy")  # after the escaped quote, in the last record's code
    cut = value_end(run, 0, len(run), tail=len(run) - inside)
    assert cut == record_ends(run)[-1]


def test_the_work_between_two_reads_is_held_to_the_deadline() -> None:
    from polarity_exporter.errors import DeadlineExceeded
    body = body_of([BASE] * 50)
    reader = reader_of(body)
    head, _ = reader.read_up_to(100)
    with pytest.raises(DeadlineExceeded):
        list(pieces.read_streamed(head, reader, StreamGuard("errors"), Counter(), Deadline(0.0),
                                  "errors"))


def outcome(read: Any) -> Any:
    try:
        return read()
    except ProtocolError:
        return "refused"


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # a constant patch
@given(st.integers(1, 12), st.lists(st.tuples(st.integers(0, 3), st.floats(0, 1),
                                             st.sampled_from(list(b'{}[]",:\\ x0'))),
                                   min_size=1, max_size=3), st.integers(1, 2000))
def test_pieces_and_the_streaming_parser_agree_on_a_mutilated_body(
        small_pieces: None, count: int, edits: list[tuple[int, float, int]],
        head_bytes: int) -> None:
    records = [changed(BASE, ("attributes", "integration-id"), f"i{n % 4}") for n in range(count)]
    body = bytearray(body_of(records))
    for kind, where, byte in edits:  # replace, delete, insert, or cut off
        if not body:
            break
        at = int(where * (len(body) - 1))
        if kind == 0:
            body[at] = byte
        elif kind == 1:
            del body[at:at + 1 + byte % 20]
        elif kind == 2:
            body[at:at] = bytes([byte]) * (1 + byte % 4)
        else:
            del body[at:]
    mutilated = bytes(body)
    expected = outcome(lambda: by_stream(mutilated))
    if expected != "refused" and not is_json(mutilated):
        expected = "refused"  # the streaming parser takes `]}"` for an end; json does not
    assert outcome(lambda: by_pieces(mutilated, head_bytes)) == expected


def is_json(body: bytes) -> bool:
    try:
        json.loads(body.decode("utf-8", "replace"))  # as the reader repairs what it reads
    except ValueError:
        return False
    return True


# --- what follows the records (the second attack) ------------------------------------------------

@pytest.mark.parametrize("end", [b']}"', b']} "abc', b'], "meta": {"a": "', b"]}\x00", b"]"],
                         ids=["a-quote", "an-open-string", "an-open-member", "a-nul", "no-brace"])
def test_a_body_that_is_no_json_after_its_records_is_refused(small_pieces: None,
                                                             end: bytes) -> None:
    body = b'{"data":[' + b",".join([json.dumps(BASE).encode()] * 9) + end
    with pytest.raises(ValueError):
        json.loads(body)
    with pytest.raises(ProtocolError, match="not valid JSON after the records"):
        by_pieces(body, 100)


@pytest.mark.parametrize("second", [b'[{"id": "1"}]', b"null", b'"x"', b"[]"])
def test_a_body_that_names_data_twice_is_refused_not_added_up(small_pieces: None,
                                                              second: bytes) -> None:
    # json keeps the second "data", whose records are not the ones read: no count is right.
    body = b'{"data":[' + b",".join([json.dumps(BASE).encode()] * 9) + b'], "data": ' + \
        second + b"}"
    with pytest.raises(ProtocolError, match="'data' more than once"):
        by_pieces(body, 100)


def test_members_after_the_records_are_read_as_json_reads_them(small_pieces: None) -> None:
    body = b'{"data":[' + b",".join([json.dumps(BASE).encode()] * 9) + \
        b'], "meta": {"page": [1, 2, {"x": "]}"}]}, "links": null}'
    read, _ = by_pieces(body, 100)
    assert sum(entry[0] for entry in read.values()) == 9


def test_more_than_max_end_after_the_records_is_refused(small_pieces: None) -> None:
    body = b'{"data":[' + b",".join([json.dumps(BASE).encode()] * 9) + b'], "meta": "' + \
        b"x" * pieces.MAX_END + b'"}'
    with pytest.raises(ProtocolError, match="bytes after the records"):
        by_pieces(body, 100)


# --- the cut looked for as the bytes around the last one (pieces._separator) -----------------


def counted(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Calls of the walk, decodes of a piece, and those the decode refused."""
    calls: Counter[str] = Counter()
    walk, decode = pieces.value_end, pieces.documented_piece

    def walking(*args: Any) -> Any:
        calls["walks"] += 1
        return walk(*args)

    def decoding(*args: Any) -> Any:
        batch = decode(*args)
        calls["decodes"] += 1
        calls["refused"] += batch is None
        return batch

    monkeypatch.setattr(pieces, "value_end", walking)
    monkeypatch.setattr(pieces, "documented_piece", decoding)
    return calls


def searched_and_walked(monkeypatch: pytest.MonkeyPatch,
                        body: bytes) -> tuple[Counter[str], Counter[str]]:
    """counted() of reading `body` in pieces, then of reading it with the walk alone (no
    search for the bytes around the last cut); both read it as the streaming parser does."""
    counting = counted(monkeypatch)
    assert by_pieces(body, 500) == by_stream(body)
    searched = Counter(counting)
    with monkeypatch.context() as walk_only:
        walk_only.setattr(pieces, "_separator", lambda data, cut: None)
        walking = counted(walk_only)
        assert by_pieces(body, 500) == by_stream(body)
    return searched, walking


def test_a_body_of_many_pieces_is_walked_for_its_first_cut_only(
        small_pieces: None, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = counted(monkeypatch)
    records = [changed(BASE, ("attributes", "error-count"), n) for n in range(200)]
    body = body_of(records)
    assert by_pieces(body, 500) == by_stream(body)
    assert calls["walks"] == 1 and calls["refused"] == 0


def test_a_record_that_holds_the_separator_costs_one_refused_decode_then_walks(
        small_pieces: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # BASE ends `}}}}` and the next starts `{"id"`: from record 30 on, each meta holds the same
    # bytes, nested (the last such bytes of a piece that ends before the record does).
    meta = {**BASE["attributes"]["meta"], "other": [{"p": {"q": {"r": {}}}}, {"id": 1}]}
    records = [changed(BASE, ("attributes", "error-count"), n) for n in range(60)]
    records[30:] = [changed(record, ("attributes", "meta"), meta) for record in records[30:]]
    body = body_of(records)
    assert b'}}}}, {"id": 1}' in body
    calls, walking = searched_and_walked(monkeypatch, body)
    assert calls["refused"] == walking["refused"] + 1
    assert 1 < calls["walks"] < walking["walks"]  # walked from the refusal on, not before


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # a constant patch
@given(st.lists(RECORD, min_size=2, max_size=25), st.sampled_from([", ", ",", ",\n  "]))
def test_pieces_found_by_the_separator_read_as_the_streaming_parser_does(
        small_pieces: None, records: list[Any], comma: str) -> None:
    # Records of one layout in a row, as a server writes them, with hostile text in them.
    run = comma.join(json.dumps(record) for record in records)
    body = ('{"data": [' + run + "]}").encode("utf-8", "surrogatepass")
    assert by_pieces(body, 300) == by_stream(body)


def test_a_separator_found_only_far_from_a_pieces_end_is_not_used(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Records in pairs that share a first key, with long runs of blanks: the bytes around a cut
    # are found again only every other record. Searched beyond the walk's tail, they cut
    # pieces of one record near a piece's start, one more decode for every piece (an attack).
    inner = json.dumps(BASE, separators=(",", ":"))[1:-1]
    run = ",".join(f'{{"k{n // 2:07d}":1,' + " " * 3000 + inner + " " * 15 + "}"
                   for n in range(1500))
    body = ('{"data":[' + run + "]}").encode()
    searched, walking = searched_and_walked(monkeypatch, body)
    assert searched["decodes"] <= walking["decodes"] + 1 and searched["refused"] == 0

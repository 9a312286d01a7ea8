"""Streamed errors bodies, read in record-aligned pieces (errorstream.py): the same records and
the same unreadable fields as ijson alone reads, and the same refusals.

Bodies are served over HTTP by the simulator and read by the real client, with the thresholds
made small (a body streams past 2 KiB, pieces of 1 KiB) so that a few records make many pieces.
The reference is the same client with pieces larger than any body: ijson reads all of it.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import SIM_PASSWORD, SIM_USER
from errorbodies import ABSENT, BASE, DOCUMENTED, PLACES, VALUES, changed
from hypothesis import given, settings
from hypothesis import strategies as st

from polarity_exporter import client as client_module
from polarity_exporter import errorstream
from polarity_exporter.client import PolarityClient
from polarity_exporter.config import Password, PolarityConfig
from polarity_exporter.deadline import Deadline
from polarity_exporter.errors import ProtocolError
from polarity_exporter.models import ErrorRecord, Problems
from polarity_exporter.simulator import Simulator, SimulatorConfig
from polarity_exporter.simulator import faults as F

WHOLE = 2048
PIECE = 1024
IJSON_ONLY = 1 << 40

Read = tuple[list[ErrorRecord], Problems] | type[ProtocolError]


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[Simulator, PolarityClient]]:
    with Simulator(SimulatorConfig(users={SIM_USER: SIM_PASSWORD}, errors=300)) as sim:
        client = PolarityClient(PolarityConfig(url=sim.url,
                                               credentials=Password(SIM_USER, SIM_PASSWORD),
                                               timeout=5))
        try:
            yield sim, client
        finally:
            client.close()


def read(server: tuple[Simulator, PolarityClient], body: bytes | None, piece: int) -> Read:
    """The errors the client reads from `body` (None: the simulator's own), streamed."""
    sim, client = server
    sim.faults = None if body is None else F.body(body, F.on(F.ERRORS))
    problems: Problems = Counter()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(client_module, "WHOLE_ERRORS_BYTES", WHOLE)
        patch.setattr(errorstream, "PIECE_BYTES", piece)
        try:
            return list(client.iter_errors(Deadline(10), problems)), problems
        except ProtocolError as exc:
            assert "\n" not in str(exc)
            return ProtocolError


def assert_pieces_read_as_ijson(server: tuple[Simulator, PolarityClient],
                                body: bytes | None) -> Read:
    pieces = read(server, body, PIECE)
    assert pieces == read(server, body, IJSON_ONLY)
    return pieces


def streamed(records: list[Any], layout: str = "spaced", ascii_only: bool = True,
             **document: Any) -> bytes:
    """A body of `records` in one of the layouts a server may write, padded with ordinary
    records until it is streamed."""
    records = list(records)
    while len(json.dumps(records)) <= 2 * WHOLE:
        records.append(BASE)
    options: dict[str, Any] = {
        "spaced": {}, "compact": {"separators": (",", ":")}, "indented": {"indent": 1},
        "sorted": {"sort_keys": True, "separators": (",", ":")}}[layout]
    text = json.dumps({"data": records, **document}, ensure_ascii=ascii_only, **options)
    return text.encode("utf-8", "surrogatepass")


def test_the_simulators_body_is_read_in_pieces_as_ijson_reads_it(
        server: tuple[Simulator, PolarityClient]) -> None:
    read_back = assert_pieces_read_as_ijson(server, None)
    assert read_back is not ProtocolError and len(read_back[0]) == 300


LAYOUTS = st.sampled_from(["spaced", "compact", "indented", "sorted"])


@settings(max_examples=150, deadline=None)
@given(st.lists(DOCUMENTED, min_size=1, max_size=12), st.data())
def test_pieces_read_bodies_with_deviations_as_ijson_reads_them(
        server: tuple[Simulator, PolarityClient], records: list[dict[str, Any]],
        data: st.DataObject) -> None:
    for _ in range(data.draw(st.integers(0, 3))):
        k = data.draw(st.integers(0, len(records) - 1))
        records[k] = changed(records[k], data.draw(st.sampled_from(PLACES)),
                             data.draw(st.sampled_from(VALUES)))
    body = streamed([r for r in records if r is not ABSENT], data.draw(LAYOUTS),
                    data.draw(st.booleans()))
    assert_pieces_read_as_ijson(server, body)


def with_text(place: tuple[str, ...], text: str) -> dict[str, Any]:
    return changed(BASE, place, text)  # type: ignore[no-any-return]


# Each defeats one step of finding where a record ends, or of reading a piece.
BODIES = {
    "a separator and the first key inside a string":
        streamed([with_text(("attributes", "code"), '}, {"id": "x", "attributes": {')] * 9),
    "unbalanced braces in strings": streamed(
        [with_text(("attributes", "meta", "stack"), "{{{ [[ \\\" }")] * 9, "compact"),
    "objects that start with the first key inside a record": streamed(
        [changed(BASE, ("attributes", "meta", "affected_users"),
                 [{"id": str(k), "username": "u"} for k in range(30)])] * 5, "compact"),
    "a record longer than a piece":
        streamed([BASE, with_text(("attributes", "meta", "stack"), "x" * 3000), BASE] * 2),
    "data after another key": streamed([BASE] * 3).replace(b'{"data"', b'{"jsonapi": {}, "data"'),
    "garbage between two records": streamed([BASE] * 9).replace(b"}}, {", b"}} x {", 5),
    "a number between two records": streamed([BASE, 5, BASE] * 4),
    "a record cut short": streamed([BASE] * 9).replace(b'"ETIMEDOUT"}', b'"ETIMEDOUT"', 4),
    "invalid UTF-8 in a middle record": streamed(
        [BASE] * 5 + [with_text(("attributes", "code"), "caf\u00e9")] + [BASE] * 5,
        ascii_only=False).replace("caf\u00e9".encode(), b"caf\xe9"),
    "nesting past the guard's bound": streamed(
        [BASE] * 4 + [with_text(("attributes", "meta", "stack"), "DEEP")] + [BASE] * 4)
    .replace(b'"DEEP"', b"[" * 2500 + b"]" * 2500),
    "a second data key after the list": streamed([BASE] * 9, data2=1).replace(
        b'"data2"', b'"data"'),
    "no data list": streamed([]).replace(b'"data"', b'"other"'),
    "a list of records after the data list": streamed(
        [BASE] * 9, included=[changed(BASE, ("attributes", "code"), "INCLUDED")] * 9),
    "a list of other objects after the data list": streamed(
        [BASE] * 9, included=[{"id": "vt", "type": "integrations", "attributes": {}}] * 20),
    "white space between records": streamed([BASE] * 9).replace(b"}}, {", b"}}," + b" " * 600
                                                                + b"{"),
    "records that are not objects": streamed([1, "two", [3], None] * 40),
    "the first record is not an object": streamed([[1]] + [BASE] * 9),
}


@pytest.mark.parametrize("body", BODIES.values(), ids=BODIES.keys())
def test_pieces_read_hostile_bodies_as_ijson_reads_them(
        server: tuple[Simulator, PolarityClient], body: bytes) -> None:
    assert len(body) > WHOLE
    assert_pieces_read_as_ijson(server, body)


def test_a_record_with_thousands_of_brackets_in_its_text_is_read_in_pieces(
        server: tuple[Simulator, PolarityClient]) -> None:
    # ijson alone must refuse the body (the guard counts every bracket before a record ends);
    # a piece in the documented shape never reaches ijson or its guard.
    body = streamed([with_text(("attributes", "meta", "stack"), "[" * 3000)] + [BASE] * 40)
    assert read(server, body, IJSON_ONLY) is ProtocolError
    pieces = read(server, body, 4 * PIECE)
    assert pieces is not ProtocolError and len(pieces[0]) >= 10


def test_a_body_ijson_refuses_is_read_in_pieces_where_guesses_miss(
        server: tuple[Simulator, PolarityClient]) -> None:
    # Every record's affected users are objects that start with the records' first key, so
    # guesses land inside records.
    many = [BASE] * 40
    body = streamed([*many, with_text(("attributes", "meta", "stack"), "[" * 3000), *many])
    assert read(server, body, IJSON_ONLY) is ProtocolError
    pieces = read(server, body, 4 * PIECE)
    assert pieces is not ProtocolError and len(pieces[0]) == 81


@pytest.mark.parametrize(("text", "end"), [
    (b'{"a": "}, {"}, {"b": 1}', len(b'{"a": "}, {"}')),
    (b'{"a": "\\"}, {\\""}, {"b": 1}', len(b'{"a": "\\"}, {\\""}')),
    (b'{"a": [{"x": 1}, {"y": "]"}]}, {"b": 1}, {"c": "',
     len(b'{"a": [{"x": 1}, {"y": "]"}]}, {"b": 1}')),
    (b'{"a": "never closed }, {', None),
    (b'{"a": 1}]}, {"b": 1}', None),
])
def test_the_exact_scan_reads_strings_and_nesting(text: bytes, end: int | None) -> None:
    assert errorstream._exact_record_end(text, 0, len(text)) == end


def two_records() -> tuple[bytes, int, int]:
    """A body of two records whose affected users are objects that start with the records'
    first key; where the first record ends, and where the second one's second user starts."""
    first = json.dumps(BASE).encode()
    second = json.dumps(changed(BASE, ("id",), "e2")).encode()
    body = b'{"data":[' + first + b", " + second + b"]}"
    start = len(b'{"data":[')
    return body, start + len(first), body.rindex(b'{"id": "2"}')


def test_a_guess_inside_a_record_is_dropped_for_the_next_one() -> None:
    body, first_end, inside = two_records()
    start, end = len(b'{"data":['), inside + len(b'{"id"')
    guesses = list(errorstream._guesses(body, start, end, b'"id"'))
    assert guesses[:2] == [inside - 2, first_end]  # the users' separator first: wrong
    cut, records, fast = errorstream._piece(body, start, end, b'"id"', Counter())
    assert (cut, fast) == (first_end, True)
    assert [record.affected_users for record in records] == [("1", "2")]


def test_a_piece_whose_guesses_all_fail_is_cut_by_the_exact_scan(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(errorstream, "MAX_GUESSES", 1)
    body, first_end, inside = two_records()
    start, end = len(b'{"data":['), inside + len(b'{"id"')
    cut, records, fast = errorstream._piece(body, start, end, b'"id"', Counter())
    assert (cut, fast) == (first_end, False)
    assert len(records) == 1

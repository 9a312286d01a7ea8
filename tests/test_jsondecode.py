"""Bounded JSON decoding: the whole-body decoder and the guard in front of the streaming parser."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from polarity_exporter.bodies import STREAM_SLICE
from polarity_exporter.errors import ProtocolError
from polarity_exporter.jsondecode import (
    MAX_STREAM_DIGITS,
    MAX_STREAM_OPENERS,
    MAX_STREAM_RECORD_BYTES,
    OUT_OF_RANGE,
    StreamGuard,
    decode_json,
)


def feed(guard: StreamGuard, raw: bytes, cuts: list[int]) -> None:
    edges = sorted({0, len(raw), *(c % (len(raw) + 1) for c in cuts)})
    for start, end in itertools.pairwise(edges):
        guard.check(raw[start:end])


@settings(max_examples=200, deadline=None)
@given(st.integers(MAX_STREAM_OPENERS + 1, 3 * MAX_STREAM_OPENERS),
       st.lists(st.integers(0, 10**6), max_size=8))
def test_the_guard_refuses_deep_nesting_however_it_is_chunked(levels: int,
                                                              cuts: list[int]) -> None:
    raw = b'{"data":[' + b'{"a":[' * (levels // 2) + b"1" + b"]}" * (levels // 2) + b"]}"
    with pytest.raises(ProtocolError, match="nested too deeply"):
        feed(StreamGuard("body"), raw, cuts)


def test_the_guard_lets_a_long_stream_of_ordinary_records_through() -> None:
    record = json.dumps({"id": "e", "attributes": {"code": "[x]{y}", "meta": {
        "affected_users": [{"id": "1"}], "stack": "at f [as g] {h}"}}}).encode()
    guard = StreamGuard("body")
    body = b'{"data":[' + b",".join([record] * 20_000) + b"]}"
    for start in range(0, len(body), STREAM_SLICE):
        guard.check(body[start:start + STREAM_SLICE])
        guard.record_done()  # as ijson yields records from every slice


def test_the_guard_refuses_a_record_larger_than_its_bound() -> None:
    guard = StreamGuard("body")
    guard.check(b'{"data":[{"meta":"')
    with pytest.raises(ProtocolError, match="a record of more than"):
        for _ in range(MAX_STREAM_RECORD_BYTES // STREAM_SLICE + 2):
            guard.check(b"x" * STREAM_SLICE)


def test_the_guard_refuses_a_long_digit_run_split_across_chunks() -> None:
    guard = StreamGuard("body")
    guard.check(b'{"a":' + b"9" * (MAX_STREAM_DIGITS - 10))
    with pytest.raises(ProtocolError, match="digits"):
        guard.check(b"9" * 20 + b"}")


@pytest.mark.parametrize("offset", [0, 1, 700, 1023])
def test_the_guard_finds_a_long_digit_run_inside_a_chunk(offset: int) -> None:
    with pytest.raises(ProtocolError, match="digits"):
        StreamGuard("body").check(b" " * offset + b"7" * MAX_STREAM_DIGITS + b" " * 5000)


def test_the_guard_lets_ordinary_numbers_through() -> None:
    guard = StreamGuard("body")
    guard.check(b'{"a":[1e400, 99999999999999999999, -0.5, 12345, ' +
                b"1" * (MAX_STREAM_DIGITS - 1) + b"]}")


@pytest.mark.parametrize("text", ["99999999999999999999", "1e400", "-Infinity", "NaN",
                                  "9" * 5000])
def test_whole_bodies_never_hand_on_an_integer_no_field_can_hold(text: str) -> None:
    decoded = decode_json(f'{{"n": {text}, "ok": 7}}'.encode(), "body")
    assert decoded["ok"] == 7
    # orjson gives a float for what json gives as a 20-digit int; either way no field reads it
    # as a count or an id (tests/test_models.py), and nothing raises.
    n = decoded["n"]
    assert n is OUT_OF_RANGE or (type(n) is float and abs(n) >= 2**63)


def test_whole_bodies_nested_too_deeply_fail_cleanly() -> None:
    with pytest.raises(ProtocolError, match="nested too deeply"):
        decode_json((b"[" + b" " * 40) * 100_000 + b"]" * 100_000, "body")


def test_whole_bodies_too_dense_to_decode_safely_fail_cleanly() -> None:
    with pytest.raises(ProtocolError, match="too dense"):
        decode_json(b"[" + b"[]," * 1_000_000 + b"[]]", "body")

"""Bounded JSON decoding: the whole-body decoder and the guard in front of the streaming parser."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from polarity_exporter.errors import ProtocolError
from polarity_exporter.jsondecode import (
    MAX_STREAM_DEPTH,
    MAX_STREAM_DIGITS,
    OUT_OF_RANGE,
    StreamGuard,
    decode_json,
)

# Strings full of what a naive scanner would take for structure.
tricky_text = st.text(alphabet='[]{}"\\,:ab\n', max_size=12)
values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | tricky_text,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(tricky_text, children, max_size=4),
    max_leaves=40)


def depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    return 0


def feed(guard: StreamGuard, raw: bytes, cuts: list[int]) -> None:
    edges = sorted({0, len(raw), *(c % (len(raw) + 1) for c in cuts)})
    for start, end in itertools.pairwise(edges):
        guard.check(raw[start:end])


@settings(max_examples=300, deadline=None)
@given(values, st.integers(0, 80), st.lists(st.integers(0, 10**6), max_size=8))
def test_the_guard_measures_depth_outside_strings_across_any_chunking(
        value: Any, wrap: int, cuts: list[int]) -> None:
    raw = ("[" * wrap + json.dumps(value) + "]" * wrap).encode()
    guard = StreamGuard("body")
    expected = wrap + depth(value)
    if expected > MAX_STREAM_DEPTH:
        with pytest.raises(ProtocolError, match="nested deeper"):
            feed(guard, raw, cuts)
    else:
        feed(guard, raw, cuts)
        assert guard._depth == 0 and not guard._in_string


def test_the_guard_refuses_a_long_digit_run_split_across_chunks() -> None:
    guard = StreamGuard("body")
    guard.check(b'{"a":' + b"9" * (MAX_STREAM_DIGITS - 10))
    with pytest.raises(ProtocolError, match="digits"):
        guard.check(b"9" * 20 + b"}")


def test_the_guard_lets_ordinary_numbers_through() -> None:
    StreamGuard("body").check(b'{"a":[1e400, 99999999999999999999, -0.5, 12345]}')


@pytest.mark.parametrize("text", ["99999999999999999999", "1e400", "-Infinity", "NaN",
                                  "9" * 5000])
def test_whole_bodies_turn_unholdable_numbers_into_out_of_range(text: str) -> None:
    assert decode_json(f'{{"n": {text}, "ok": 7}}'.encode(), "body") == {
        "n": OUT_OF_RANGE, "ok": 7}


def test_whole_bodies_nested_too_deeply_fail_cleanly() -> None:
    with pytest.raises(ProtocolError, match="nested too deeply"):
        decode_json(b"[" * 100_000 + b"]" * 100_000, "body")

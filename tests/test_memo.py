"""Bounded memo tables (memo.py): computed once while the working set fits, bounded always."""

from __future__ import annotations

from polarity_exporter.memo import Memo


def counting(limit: int) -> tuple[Memo[int, str], list[int]]:
    computed: list[int] = []

    def compute(key: int) -> str:
        computed.append(key)
        return str(key)

    return Memo(compute, limit), computed


def test_a_working_set_within_the_limit_is_computed_once() -> None:
    memo, computed = counting(100)
    for _ in range(3):
        assert [memo(key) for key in range(100)] == [str(key) for key in range(100)]
    assert len(computed) == 100


def test_a_working_set_just_over_the_limit_is_mostly_remembered() -> None:
    # A single table that started again when full recomputed four keys in five here.
    memo, computed = counting(100)
    for _ in range(2):
        for key in range(120):
            memo(key)
    computed.clear()
    for key in range(120):
        memo(key)
    assert len(computed) <= 20


def test_memory_stays_within_twice_the_limit() -> None:
    memo, _ = counting(100)
    for key in range(10_000):
        memo(key)
        assert len(memo) <= 200


def test_a_remembered_value_is_found_without_computing() -> None:
    memo, computed = counting(10)
    memo.remember(5, "five")
    assert memo.get(5) == "five" and memo(5) == "five" and memo.get(6) is None
    assert computed == []

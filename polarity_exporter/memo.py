"""Bounded tables of values computed once and met again on later scrapes (the parsed
timestamps of error records, the texts of sample values).

Two generations: a value is looked up in the current table, then in the previous one (and moved
to the current one when found there); a full current table becomes the previous one and the
oldest is dropped. So a working set up to the limit is kept whole from scrape to scrape, while
one table that started again when full lost most of a working set just over its limit on every
scrape (24,000 records against 20,000 entries: four lookups in five missed). Memory: at most
twice the limit. Shared by threads; the GIL keeps each dict operation whole, and a lost entry
is only computed again.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Memo(Generic[K, V]):
    """key -> compute(key), remembered in two generations of at most `limit` entries each."""

    def __init__(self, compute: Callable[[K], V], limit: int) -> None:
        self._compute = compute
        self.limit = limit
        self._current: dict[K, V] = {}
        self._previous: dict[K, V] = {}

    def __call__(self, key: K) -> V:
        value = self.get(key)
        if value is None:
            value = self._compute(key)
            self.remember(key, value)
        return value

    def get(self, key: K) -> V | None:
        value = self._current.get(key)
        if value is None:
            value = self._previous.get(key)
            if value is not None:
                self.remember(key, value)
        return value

    def remember(self, key: K, value: V) -> None:
        if len(self._current) >= self.limit:
            self._previous, self._current = self._current, {}
        self._current[key] = value

    def __len__(self) -> int:
        return len(self._current) + len(self._previous)

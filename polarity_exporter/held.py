"""A streamed errors body held whole while it may be the body the caller folded last time.

A body over client.WHOLE_ERRORS_BYTES is decoded in pieces as it arrives (pieces.py), so whether
it is byte for byte the last one was only known once every piece had been decoded and folded:
the series scrape (24,000 records, 23 MiB) spent about 60% of its CPU on a body that had not
changed. When the last body (the one the kept families were built from) was at most
HELD_ERRORS_BYTES long, the next one is first read up to that length and one byte more, without
decoding: if it ends there and has the same SHA-256, nothing is decoded at all; otherwise what was
read is handed back to the reader and decoded as before, from its first byte.

Memory: a body is held only when the caller knows its last size, that size is at most
HELD_ERRORS_BYTES, and that many bytes are free in one process-wide budget (HELD_BUDGET_BYTES),
taken without waiting and given back once the held bytes have been decoded. The body is read
into one buffer of that size, never joined or copied (an attack measured twice the budget when
the chunks were joined, and again when bytes handed back were put before the held ones).
So 100,000 records (a 124 MiB body) are never held, and many large targets at once hold at
most the budget; the others are decoded as they arrive, as before.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol, TypeVar

from polarity_exporter.bodies import BodyReader

HELD_ERRORS_BYTES = 32 * 1024 * 1024
HELD_BUDGET_BYTES = 64 * 1024 * 1024


class KnownBody(Protocol):
    """What the caller holds from the errors body it decoded last (reuse.SameBody)."""

    def expected_size(self) -> int | None:
        """Bytes of the body the kept families were built from, if any."""

    def __call__(self, digest: bytes | None, size: int) -> bool | None:
        """Told each body read (its SHA-256 when read whole, else None): True when the caller
        holds what it gives already, and it is then not decoded; None when it may, but cannot
        tell yet (ask again)."""


@dataclass(frozen=True)
class Held:
    """What held() found: the known body (`same`: decode nothing), or a body to decode; `ask`
    asks `known` again, while decoding, about a body that may be the known one."""

    same: bool
    ask: Callable[[], bool | None] | None = None


T = TypeVar("T")


def until_known(batches: Iterator[T], verdict: Held, known: Callable[[], None]) -> Iterator[T]:
    """`batches` (a held body decoded), until `verdict.ask` tells it is the known body (then
    `known()` and nothing more is decoded). So a body met again while the listing, read beside
    it, was not yet done is decoded only until the listing is: never waited for."""
    ask = verdict.ask
    try:
        for batch in batches:
            yield batch
            if ask is not None:
                answer = ask()
                if answer:
                    known()
                    return
                if answer is False:
                    ask = None
    finally:
        if isinstance(batches, Generator):
            batches.close()  # a decode left early: its reads end here, not when collected


class _Budget:
    """Bytes that may be held at once, process-wide. The lock covers two integer operations,
    never a read."""

    def __init__(self, total: int) -> None:
        self._free = total
        self._lock = threading.Lock()

    def take(self, size: int) -> bool:
        with self._lock:
            if size > self._free:
                return False
            self._free -= size
            return True

    def give(self, size: int) -> None:
        with self._lock:
            self._free += size


BUDGET = _Budget(HELD_BUDGET_BYTES)


@contextmanager
def held(head: bytes, reader: BodyReader, known: KnownBody | None) -> Iterator[Held]:
    """Whether the streamed body whose first bytes are `head` is the known one (True: decode
    nothing). On False the caller decodes it from `head` and the reader on, which serves first
    what was read ahead (one buffer, never copied); the budget comes back once that is all
    served, or when the caller is done. A body that may be held next time is hashed as it is
    read, and `known` told its digest at the end."""
    size = known.expected_size() if known is not None else None
    if known is None or size is None or not len(head) < size <= HELD_ERRORS_BYTES or \
            not BUDGET.take(size):
        if known is not None and (size is None or size <= HELD_ERRORS_BYTES):
            reader.hash_from_here(hashlib.sha256(head), HELD_ERRORS_BYTES)
        del head  # the caller lets it go once decoded
        yield Held(False)
        if known is not None:
            known(reader.digest(), reader.total)
        return
    given = False

    def give() -> None:  # once: when the held bytes are all decoded, or at the end
        nonlocal given
        if not given:
            given = True
            BUDGET.give(size)

    try:
        # Hashed as read: each read is checked against the deadline, the hash included.
        reader.hash_from_here(hashlib.sha256(head), HELD_ERRORS_BYTES)
        buffer = bytearray(size + 1 - len(head))  # one buffer, never copied: the budget's size
        del head
        read, ended = reader.fill(memoryview(buffer))
        digest = reader.digest()
        answer = known(digest, reader.total) if ended else False
        if answer:
            yield Held(True)
            return
        reader.replay(memoryview(buffer)[:read], done=give)
        del buffer
        total = reader.total
        yield Held(False, None if answer is False else lambda: known(digest, total))
        if not ended:
            known(reader.digest(), reader.total)
    finally:
        reader.let_go()  # a decode left early: the held buffer goes before its budget comes back
        give()

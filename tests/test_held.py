"""A streamed errors body (over client.WHOLE_ERRORS_BYTES, here made small) is held whole while
it may be the body the kept families were built from (held.py): met again byte for byte, it is
not decoded; otherwise what was held is decoded from its first byte, and /metrics says what a
fresh build says.

Served over HTTP by the simulator (test-only body faults) and read by the real client and
collector, as tests/test_reuse.py.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import urllib3
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_reuse import (
    CHANGES,
    LISTING_FIRST,
    NOT_DECODED,
    answers,
    logged_scrape,
    serve,
    stable,
)

from polarity_exporter import client as client_module
from polarity_exporter import collector as collector_module
from polarity_exporter import held
from polarity_exporter import pieces as pieces_module
from polarity_exporter import summary as summary_module
from polarity_exporter.bodies import BodyReader
from polarity_exporter.client import PolarityClient
from polarity_exporter.collector import PolarityCollector
from polarity_exporter.config import CollectorConfig
from polarity_exporter.deadline import Deadline
from polarity_exporter.exposition import encode_openmetrics, encode_text
from polarity_exporter.reuse import SameBody
from polarity_exporter.simulator import Simulator
from polarity_exporter.simulator import faults as F

STREAMED_FROM = 1024  # bytes: the test dataset's errors body (tens of KB) is streamed
SCRAPES_TO_SKIP = 2  # the first learns the size and digest (hashed as read), the second skips


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[Simulator, PolarityClient]]:
    from conftest import simulator_and_client
    with simulator_and_client() as served:
        yield served


@pytest.fixture(autouse=True)
def streamed(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(client_module, "WHOLE_ERRORS_BYTES", STREAMED_FROM)
    _, errors = answers("nothing")
    assert len(errors) > STREAMED_FROM
    yield
    assert budget_free() == held.HELD_BUDGET_BYTES  # every scrape gave back what it took


def budget_free() -> int:
    return held.BUDGET._free


def fresh(client: PolarityClient) -> list[Any]:
    families, _ = PolarityCollector(client, CollectorConfig()).scrape(Deadline(5.0))
    return families


def decoded_each_scrape(collector: PolarityCollector, scrapes: int) -> list[bool]:
    return [NOT_DECODED not in logged_scrape(collector)[1] for _ in range(scrapes)]


def test_a_streamed_body_met_again_byte_for_byte_is_not_decoded(
        served: tuple[Simulator, PolarityClient]) -> None:
    sim, client = served
    serve(sim, "nothing", errors_after=LISTING_FIRST)
    collector = PolarityCollector(client, CollectorConfig())
    assert decoded_each_scrape(collector, SCRAPES_TO_SKIP + 1) == [True, False, False]
    kept, _ = collector.scrape(Deadline(5.0))
    assert stable(kept, encode_text) == stable(fresh(client), encode_text)


@pytest.mark.parametrize("change", ["an error count", "a record gone", "an affected user",
                                    "the order of two records"])
def test_a_streamed_body_that_changed_is_decoded_from_its_first_byte_and_kept(
        served: tuple[Simulator, PolarityClient], change: str) -> None:
    sim, client = served
    serve(sim, "nothing", errors_after=LISTING_FIRST)
    collector = PolarityCollector(client, CollectorConfig())
    decoded_each_scrape(collector, SCRAPES_TO_SKIP)
    serve(sim, change, errors_after=LISTING_FIRST)
    assert decoded_each_scrape(collector, 2) == [True, False]  # then it is the one met again
    kept, _ = collector.scrape(Deadline(5.0))
    assert stable(kept, encode_text) == stable(fresh(client), encode_text)


def test_a_streamed_body_over_the_held_size_is_never_held(
        served: tuple[Simulator, PolarityClient], monkeypatch: pytest.MonkeyPatch) -> None:
    sim, client = served
    _, errors = answers("nothing")
    monkeypatch.setattr(held, "HELD_ERRORS_BYTES", len(errors) - 1)
    serve(sim, "nothing", errors_after=LISTING_FIRST)
    collector = PolarityCollector(client, CollectorConfig())
    assert decoded_each_scrape(collector, SCRAPES_TO_SKIP + 1) == [True] * (SCRAPES_TO_SKIP + 1)


def test_a_streamed_body_is_decoded_as_it_arrives_when_the_budget_is_taken(
        served: tuple[Simulator, PolarityClient]) -> None:
    sim, client = served
    serve(sim, "nothing", errors_after=LISTING_FIRST)
    collector = PolarityCollector(client, CollectorConfig())
    assert held.BUDGET.take(held.HELD_BUDGET_BYTES)  # other targets hold it all
    try:
        assert decoded_each_scrape(collector, SCRAPES_TO_SKIP) == [True] * SCRAPES_TO_SKIP
    finally:
        held.BUDGET.give(held.HELD_BUDGET_BYTES)
    kept, _ = collector.scrape(Deadline(5.0))
    assert stable(kept, encode_text) == stable(fresh(client), encode_text)


@pytest.mark.parametrize("fault", ["cut", "truncated", "status 500"])
def test_a_held_body_that_breaks_gives_the_budget_back_and_fails_the_errors_part(
        served: tuple[Simulator, PolarityClient], fault: str) -> None:
    sim, client = served
    serve(sim, "nothing")
    collector = PolarityCollector(client, CollectorConfig())
    decoded_each_scrape(collector, SCRAPES_TO_SKIP - 1)  # size and digest known: the next holds
    listing, errors = answers("nothing")
    broken = {"cut": F.cut(len(errors) // 2, F.on(F.ERRORS)),
              "truncated": F.truncate(0.5, F.on(F.ERRORS)),
              "status 500": F.status(500, F.on(F.ERRORS))}[fault]
    sim.faults = F.chain(F.body(listing, F.on(F.INTEGRATIONS)), F.body(errors, F.on(F.ERRORS)),
                         broken)
    _, log = logged_scrape(collector)
    assert "part errors: failed" in log
    assert budget_free() == held.HELD_BUDGET_BYTES
    serve(sim, "nothing")
    kept, _ = collector.scrape(Deadline(5.0))
    assert stable(kept, encode_text) == stable(fresh(client), encode_text)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(st.sampled_from(list(CHANGES)), min_size=1, max_size=2),
                min_size=2, max_size=6))
def test_whatever_changes_between_streamed_bodies_metrics_say_what_a_fresh_build_says(
        served: tuple[Simulator, PolarityClient], changes: list[list[str]]) -> None:
    sim, client = served
    keeping = PolarityCollector(client, CollectorConfig())
    for change in changes:  # runs of the same change make bodies met again
        serve(sim, *change)
        kept, _ = keeping.scrape(Deadline(5.0))
        for encode in (encode_text, encode_openmetrics):
            assert stable(kept, encode) == stable(fresh(client), encode), change


# --- the reader hands back what was read ahead (bodies.BodyReader.replay) --------------------

def reader_of(body: bytes) -> BodyReader:
    response = requests.Response()
    response.raw = urllib3.HTTPResponse(body=io.BytesIO(body), preload_content=False)
    return BodyReader(response, Deadline(60), "errors", limit=len(body) + 1)


def test_what_was_handed_back_is_read_first_and_then_the_rest_of_the_body() -> None:
    reader = reader_of(b"0123456789")
    ahead, whole = reader.read_up_to(4)
    assert (ahead, whole) == (b"0123", False)
    reader.replay(ahead)
    assert reader.read_up_to(2) == (b"01", False)
    assert reader.read_up_to(100) == (b"23456789", True)


def test_what_is_handed_back_again_comes_before_what_is_still_to_be_served() -> None:
    reader = reader_of(b"0123456789")
    reader.replay(reader.read_up_to(6)[0])
    assert reader.read_up_to(2) == (b"01", False)
    reader.replay(b"xy")
    assert reader.read_up_to(100) == (b"xy23456789", True)


# --- what a held body costs in memory, and when its budget comes back (held.held) -----------

HELD_SIZE = 8 * 1024 * 1024
HEAD_SIZE = 1024 * 1024
READ_SIZE = 256 * 1024  # what the pieces read at once, here


class Known:
    """A caller that kept a body of HELD_SIZE bytes with another digest."""

    def expected_size(self) -> int | None:
        return HELD_SIZE

    def __call__(self, digest: bytes | None, size: int) -> bool:
        return False


def held_reader() -> tuple[BodyReader, bytes]:
    reader = reader_of(bytes(range(256)) * (HELD_SIZE // 256))
    head, whole = reader.read_up_to(HEAD_SIZE)
    assert not whole
    return reader, head


def test_a_held_body_takes_about_its_size_in_memory_even_when_read_is_handed_back() -> None:
    import tracemalloc
    reader, head = held_reader()
    tracemalloc.start()
    try:
        with held.held(head, reader, Known()) as verdict:
            assert not verdict.same
            reader.replay(reader.read_up_to(READ_SIZE)[0])  # as the pieces hand back the rest
            while reader.read_up_to(READ_SIZE)[0]:
                pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < HELD_SIZE - HEAD_SIZE + 4 * READ_SIZE  # one buffer, and the reads of it


def test_the_budget_comes_back_once_the_held_bytes_are_all_read_again() -> None:
    reader, head = held_reader()
    with held.held(head, reader, Known()) as verdict:
        assert not verdict.same
        assert budget_free() == held.HELD_BUDGET_BYTES - HELD_SIZE
        read = len(head)
        while read < HELD_SIZE:
            read += len(reader.read_up_to(READ_SIZE)[0])
        assert budget_free() == held.HELD_BUDGET_BYTES  # before the decode is over


# --- a body that may be the known one, while the listing is still read (held.until_known) ---

def counted_batches(consumed: list[int], closed: list[bool]) -> Iterator[int]:
    try:
        for batch in range(5):
            consumed.append(batch)
            yield batch
    finally:
        closed.append(True)


def answers_in_turn(*answers: bool | None) -> tuple[held.Held, list[bool | None]]:
    given: list[bool | None] = []
    turns = iter(answers)

    def ask() -> bool | None:
        given.append(next(turns))
        return given[-1]
    return held.Held(False, ask), given


def test_a_decode_stops_once_the_body_is_told_to_be_the_known_one() -> None:
    consumed: list[int] = []
    closed: list[bool] = []
    verdict, _ = answers_in_turn(None, None, True)
    told: list[bool] = []
    assert list(held.until_known(counted_batches(consumed, closed), verdict,
                                 lambda: told.append(True))) == [0, 1, 2]
    assert consumed == [0, 1, 2] and closed == [True] and told == [True]


def test_a_decode_goes_on_to_the_end_once_the_body_is_told_not_to_be_the_known_one() -> None:
    consumed: list[int] = []
    verdict, given = answers_in_turn(None, False)
    assert list(held.until_known(counted_batches(consumed, []), verdict, lambda: None)) == \
        [0, 1, 2, 3, 4]
    assert given == [None, False]  # not asked again


@pytest.mark.parametrize("late", [F.INTEGRATIONS, F.ERRORS])
def test_a_body_met_again_says_what_a_fresh_build_says_whichever_part_ends_first(
        served: tuple[Simulator, PolarityClient], late: str) -> None:
    sim, client = served
    listing, errors = answers("nothing")
    sim.faults = F.chain(F.body(listing, F.on(F.INTEGRATIONS)), F.body(errors, F.on(F.ERRORS)),
                         F.hang(LISTING_FIRST, F.on(late)))
    collector = PolarityCollector(client, CollectorConfig())
    for _ in range(SCRAPES_TO_SKIP + 1):
        kept, _ = collector.scrape(Deadline(5.0))
        assert stable(kept, encode_text) == stable(fresh(client), encode_text)


def test_part_of_a_character_handed_back_alone_is_not_taken_for_the_end_of_the_body() -> None:
    euro = "€".encode()
    response = requests.Response()
    response.raw = urllib3.HTTPResponse(body=io.BytesIO(euro[2:] + euro), preload_content=False)
    reader = BodyReader(response, Deadline(60), "errors", limit=100, repair_utf8=True)
    reader.replay(euro[:2])
    read = []
    while chunk := reader.read(8):
        read.append(chunk)
    assert b"".join(read) == euro * 2


# --- the listing done while a held body that is the kept one is decoded ----------------------

class ListedOnSecondPiece:
    """The fold of the second piece waits until the listing is done: so the listing ends while
    the body is decoded, deterministically."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.listed: list[threading.Event] = []
        self.pieces = 0
        gate = self

        class Watched(SameBody):
            def __init__(self, reuse: Any, listing: Any, listed: threading.Event) -> None:
                gate.listed.append(listed)
                super().__init__(reuse, listing, listed)

        fold = summary_module.ErrorSummary.add_documented

        def add_documented(summary: Any, batch: Any) -> None:
            gate.pieces += 1
            if gate.pieces == 2:
                assert gate.listed[-1].wait(5.0)
            fold(summary, batch)

        monkeypatch.setattr(collector_module, "SameBody", Watched)
        monkeypatch.setattr(summary_module.ErrorSummary, "add_documented", add_documented)
        monkeypatch.setattr(pieces_module, "PIECE_BYTES", 2048)


def test_a_held_body_stops_being_decoded_once_the_listing_agrees_and_counts_as_kept(
        served: tuple[Simulator, PolarityClient], monkeypatch: pytest.MonkeyPatch) -> None:
    sim, client = served
    listing, errors = answers("nothing")
    at = errors.index(b'"occurred-on": "') + len(b'"occurred-on": "')
    assert at < 1024  # in the first piece, decoded before the listing is done: unreadable
    errors = errors[:at] + b"yesterday" + errors[errors.index(b'"', at):]
    collector = PolarityCollector(client, CollectorConfig())
    sim.faults = F.chain(F.body(listing, F.on(F.INTEGRATIONS)), F.body(errors, F.on(F.ERRORS)))
    collector.scrape(Deadline(5.0))  # learns the body's size and digest
    gate = ListedOnSecondPiece(monkeypatch)
    sim.faults = F.chain(F.body(listing, F.on(F.INTEGRATIONS)), F.body(errors, F.on(F.ERRORS)),
                         F.hang(LISTING_FIRST, F.on(F.INTEGRATIONS)))
    kept, log = logged_scrape(collector)
    assert f"{NOT_DECODED} further" in log and gate.pieces == 2
    assert stable(kept, encode_text) == stable(fresh(client), encode_text)


def test_an_answer_given_while_a_fetch_runs_keeps_what_the_target_kept(
        served: tuple[Simulator, PolarityClient]) -> None:
    from polarity_exporter.servers import _late_answer
    sim, client = served
    serve(sim, "nothing")
    collector = PolarityCollector(client, CollectorConfig())
    collector.scrape(Deadline(5.0))
    kept = collector._reuse.errored
    assert kept is not None
    _late_answer(collector)(1.0)
    assert collector._reuse.errored is kept

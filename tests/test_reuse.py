"""A scrape whose records equal the last scrape's serves the last per-integration families
again (reuse.py); whatever changes between scrapes, /metrics says what a fresh build says.

Served over HTTP by the simulator (test-only body faults rewrite its own dataset between
scrapes) and collected by the real client and collector: one collector that keeps its families
from scrape to scrape, against a new collector (nothing kept) on the same answers.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import simulator_and_client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from polarity_exporter import metrics
from polarity_exporter.client import PolarityClient
from polarity_exporter.collector import PolarityCollector
from polarity_exporter.config import CollectorConfig
from polarity_exporter.deadline import Deadline
from polarity_exporter.events import ErrorEvents
from polarity_exporter.exposition import encode_openmetrics, encode_text
from polarity_exporter.fetchlog import FetchLog
from polarity_exporter.simulator import Simulator
from polarity_exporter.simulator import faults as F
from polarity_exporter.simulator.dataset import DatasetSpec, generate

DATASET = generate(DatasetSpec(integrations=12, errors=40))
# What differs from one scrape to the next with equal records: left out of the comparison.
VOLATILE = ("polarity_scrape_duration_seconds", "polarity_scrape_timeout_seconds")
PER_INTEGRATION = [spec for spec in metrics.CATALOGUE if spec.scope == "integration"]


def _attributes(record: dict[str, Any]) -> dict[str, Any]:
    return record["attributes"]  # type: ignore[no-any-return]


def _set(record: dict[str, Any], key: str, value: Any) -> None:
    _attributes(record)[key] = value


# Changes between two scrapes, each to a fresh copy of the dataset: (listing, errors) -> None.
CHANGES: dict[str, Callable[[list[Any], list[Any]], None]] = {
    "nothing": lambda listing, errors: None,
    "a status": lambda listing, errors: _set(listing[3], "status", "stopped"),
    "a name": lambda listing, errors: _set(listing[0], "name", "renamed"),
    "an error count": lambda listing, errors: _set(
        errors[5], "error-count", _attributes(errors[5])["error-count"] + 1),
    "an occurred-on": lambda listing, errors: _set(errors[7], "occurred-on",
                                                  "2031-01-01T00:00:00.000Z"),
    "a code": lambda listing, errors: _set(errors[2], "code", "NEW_CODE"),
    "an affected user": lambda listing, errors: _set(
        errors[9], "meta", {"affected_users": [{"id": "someone-new"}]}),
    "the order of two records": lambda listing, errors: errors.insert(0, errors.pop(4)),
    "the order of two integrations": lambda listing, errors: listing.insert(0, listing.pop(2)),
    "an integration gone (its errors orphaned)": lambda listing, errors: listing.pop(1),
    "two integrations gone": lambda listing, errors: [listing.pop(1), listing.pop(1)],
    "a record gone": lambda listing, errors: errors.pop(0),
}


def answers(*changes: str) -> tuple[bytes, bytes]:
    listing, errors = copy.deepcopy(DATASET.integrations), copy.deepcopy(DATASET.errors)
    for change in changes:
        CHANGES[change](listing, errors)
    page = {"data": listing, "meta": {"page": {"number": 1, "size": 1000,
                                                "total": len(listing)}}}
    return json.dumps(page).encode(), json.dumps({"data": errors}).encode()


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[Simulator, PolarityClient]]:
    with simulator_and_client() as served:
        yield served


def serve(sim: Simulator, *changes: str, errors_after: float = 0.0) -> None:
    listing, errors = answers(*changes)
    sim.faults = F.chain(F.body(listing, F.on(F.INTEGRATIONS)), F.body(errors, F.on(F.ERRORS)),
                         F.hang(errors_after, F.on(F.ERRORS)))


def stable(families: list[Any], encode: Callable[[list[Any]], bytes]) -> list[str]:
    return [line for line in encode(families).decode().splitlines()
            if not line.startswith(VOLATILE) and not line.startswith(
                tuple(f"# {kind} {name}" for kind in ("HELP", "TYPE", "UNIT")
                      for name in VOLATILE))]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(st.sampled_from(list(CHANGES)), min_size=1, max_size=3),
                min_size=2, max_size=5),
       st.sampled_from([CollectorConfig(), CollectorConfig(max_codes=2, max_orphan_ids=2),
                        CollectorConfig(max_label_length=8)]))
def test_whatever_changes_between_scrapes_metrics_say_what_a_fresh_build_says(
        served: tuple[Simulator, PolarityClient], changes: list[list[str]],
        config: CollectorConfig) -> None:
    sim, client = served
    keeping = PolarityCollector(client, config)
    for change in changes:  # each scrape: the dataset with one to three changes
        serve(sim, *change)
        kept, _ = keeping.scrape(Deadline(5.0))
        fresh, _ = PolarityCollector(client, config).scrape(Deadline(5.0))
        for encode in (encode_text, encode_openmetrics):
            assert stable(kept, encode) == stable(fresh, encode), change


def by_name(families: list[Any]) -> dict[str, Any]:
    return {family.name: family for family in families}


def test_equal_records_serve_the_last_scrapes_families_themselves(
        served: tuple[Simulator, PolarityClient]) -> None:
    sim, client = served
    collector = PolarityCollector(client, CollectorConfig())
    serve(sim, "nothing")
    first, _ = collector.scrape(Deadline(5.0))
    encode_text(first)
    second, _ = collector.scrape(Deadline(5.0))
    for spec in PER_INTEGRATION:
        assert by_name(second)[spec.base] is by_name(first)[spec.base], spec.name
    assert by_name(second)[metrics.SCRAPE_DURATION.base] is not \
        by_name(first)[metrics.SCRAPE_DURATION.base]


@pytest.mark.parametrize(("change", "rebuilt"), [
    ("a status", {"polarity_integration_info", "polarity_integration_status",
                  "polarity_integration_running"}),
    ("an error count", {"polarity_integration_errors", "polarity_integration_error_occurrences",
                        "polarity_integration_error_last_occurrence_timestamp_seconds",
                        "polarity_integration_error_affected_users"}),
])
def test_a_change_rebuilds_only_the_families_its_records_feed(
        served: tuple[Simulator, PolarityClient], change: str, rebuilt: set[str]) -> None:
    sim, client = served
    collector = PolarityCollector(client, CollectorConfig())
    serve(sim, "nothing")
    first, _ = collector.scrape(Deadline(5.0))
    serve(sim, change)
    second, _ = collector.scrape(Deadline(5.0))
    new = {spec.base for spec in PER_INTEGRATION
           if by_name(second)[spec.base] is not by_name(first)[spec.base]}
    assert new == rebuilt


def test_a_reused_family_keeps_counting_the_values_its_reader_could_not_read(
        served: tuple[Simulator, PolarityClient], monkeypatch: pytest.MonkeyPatch) -> None:
    def unreadable(integration: Any) -> Any:
        raise ValueError("a value the reader did not expect")

    spec = metrics.INTEGRATION_RUNNING
    monkeypatch.setattr(metrics, "CATALOGUE", tuple(
        metrics.Family(s.name, s.kind, s.help, s.labels, s.scope, per_integration=unreadable)
        if s is spec else s for s in metrics.CATALOGUE))
    sim, client = served
    collector = PolarityCollector(client, CollectorConfig())
    serve(sim, "nothing")
    for _ in range(2):
        families, _ = collector.scrape(Deadline(5.0))
        fields = {sample.labels["field"]: sample.value
                  for sample in by_name(families)["polarity_scrape_unreadable_fields"].samples}
        assert fields[spec.name] == len(DATASET.integrations)


def test_the_errors_key_tells_a_negative_zero_from_zero() -> None:
    from polarity_exporter.reuse import errors_key
    from polarity_exporter.summary import CodeStats, IntegrationErrors

    def summary(occurrences: float) -> dict[str, IntegrationErrors]:
        return {"vt": IntegrationErrors(1, {"E": CodeStats(occurrences, True, None)})}

    assert errors_key(summary(0.0)) != errors_key(summary(-0.0))
    assert errors_key(summary(3.0)) == errors_key(summary(3.0))


def test_a_build_that_merged_orphans_is_not_kept(
        served: tuple[Simulator, PolarityClient]) -> None:
    # Merged orphans show the union of their users, which the errors key does not hold.
    sim, client = served
    collector = PolarityCollector(client, CollectorConfig(max_orphan_ids=2))
    serve(sim, "two integrations gone")  # three orphan ids, with the dataset's own
    first, _ = collector.scrape(Deadline(5.0))
    assert by_name(first)[metrics.ORPHAN_IDS_FOLDED.base].samples[0].value > 0
    second, _ = collector.scrape(Deadline(5.0))
    errors = metrics.INTEGRATION_ERRORS.base
    assert by_name(second)[errors] is not by_name(first)[errors]


# Two answers in a row that differ only in what one part of the comparison looks at (found by
# removing each part in turn: without it, the second scrape served the first one's text).
def _integration(ident: str) -> dict[str, Any]:
    return {"type": "integrations", "id": ident, "attributes": {"name": ident,
                                                                 "status": "running"}}


def _record(ident: str, code: str, count: Any = 1, occurred: str | None = "2024-01-02T00:00:00Z",
            users: tuple[str, ...] = ()) -> dict[str, Any]:
    attributes: dict[str, Any] = {"integration-id": ident, "code": code}
    if count is not None:
        attributes["error-count"] = count
    if occurred is not None:
        attributes["occurred-on"] = occurred
    if users:
        attributes["meta"] = {"affected_users": [{"id": user} for user in users]}
    return {"type": "integration-errors", "id": "r", "attributes": attributes}


OLDER = "2024-01-01T00:00:00Z"
TWO_ANSWERS = {
    "one more record, adding no count and no newer time": (
        [_record("x", "E")], [_record("x", "E"), _record("x", "E", None, OLDER)]),
    "a count that becomes unreadable": ([_record("x", "E", 0)], [_record("x", "E", "many")]),
    "two codes in the other order": ([_record("x", "A"), _record("x", "B")],
                                     [_record("x", "B"), _record("x", "A")]),
    "two orphan ids in the other order": ([_record("o1", "A"), _record("o2", "A")],
                                          [_record("o2", "A"), _record("o1", "A")]),
    "another user, as many users": ([_record("x", "E", users=("u1",))],
                                    [_record("x", "E", users=("u2",))]),
    "one more user": ([_record("x", "E", users=("u1",))],
                      [_record("x", "E", users=("u1", "u2"))]),
    "a newer occurrence, the same count": ([_record("x", "E", 1, OLDER)], [_record("x", "E")]),
    "codes beyond the summary's limit": (
        [*(_record("x", f"C{i}") for i in range(9)), _record("x", "other"),
         _record("x", "C0", None, None)],
        [*(_record("x", f"C{i}") for i in range(9)), _record("x", "other"),
         _record("x", "Z", None, None)]),
}


@pytest.mark.parametrize("case", list(TWO_ANSWERS))
def test_two_answers_that_differ_in_one_part_of_the_key_are_not_taken_for_equal(
        served: tuple[Simulator, PolarityClient], monkeypatch: pytest.MonkeyPatch,
        case: str) -> None:
    from polarity_exporter import summary
    monkeypatch.setattr(summary, "MAX_SUMMARY_CODES", 10)  # the last case, with fewer codes
    sim, client = served
    keeping = PolarityCollector(client, CollectorConfig(max_codes=50))
    page = json.dumps({"data": [_integration("x")],
                       "meta": {"page": {"number": 1, "size": 1000, "total": 1}}}).encode()
    for records in TWO_ANSWERS[case]:
        sim.faults = F.chain(F.body(page, F.on(F.INTEGRATIONS)),
                             F.body(json.dumps({"data": records}).encode(), F.on(F.ERRORS)))
        kept, _ = keeping.scrape(Deadline(5.0))
        fresh, _ = PolarityCollector(client, CollectorConfig(max_codes=50)).scrape(
            Deadline(5.0))
        assert stable(kept, encode_text) == stable(fresh, encode_text), case


def test_nothing_is_held_for_a_scrape_without_errors_or_listing(
        served: tuple[Simulator, PolarityClient]) -> None:
    sim, client = served
    collector = PolarityCollector(client, CollectorConfig())
    serve(sim, "nothing")
    collector.scrape(Deadline(5.0))
    assert collector._reuse.listed is not None and collector._reuse.errored is not None
    listing, _ = answers("nothing")
    sim.faults = F.chain(F.body(listing, F.on(F.INTEGRATIONS)), F.status(403, F.on(F.ERRORS)))
    collector.scrape(Deadline(5.0))
    assert collector._reuse.errored is None and collector._reuse.listed is not None
    sim.faults = F.status(500, F.on(F.INTEGRATIONS))
    collector.scrape(Deadline(5.0))
    assert collector._reuse.listed is None


def test_an_encoded_family_is_its_text_and_holds_its_samples_no_longer(
        served: tuple[Simulator, PolarityClient]) -> None:
    sim, client = served
    serve(sim, "nothing")
    families, _ = PolarityCollector(client, CollectorConfig()).scrape(Deadline(5.0))
    info = by_name(families)[metrics.INTEGRATION_INFO.base]
    assert len(info.samples) == len(DATASET.integrations)
    text = encode_text(families)
    assert info.samples == [] and info.lines is not None
    assert encode_text(families) == text


# --- an errors body byte for byte the last: not decoded (reuse.SameBody) --------------------

NOT_DECODED = "not decoded"  # what the fetch log says of such a body (client.read_errors)
# The errors answer waits this long, so that the listing (a dozen integrations: milliseconds)
# is done when its body is read: a body is only left undecoded then (SameBody never waits).
LISTING_FIRST = 0.5


def logged_scrape(collector: PolarityCollector, seconds: float = 5.0) -> tuple[list[Any], str]:
    deadline = Deadline(seconds, log=FetchLog())
    families, _ = collector.scrape(deadline)
    assert deadline.log is not None
    return families, deadline.log.text()


def page_of(*idents: str) -> bytes:
    return json.dumps({"data": [_integration(ident) for ident in idents],
                       "meta": {"page": {"number": 1, "size": 1000,
                                         "total": len(idents)}}}).encode()


def serve_bodies(sim: Simulator, page: bytes, errors: bytes, errors_after: float) -> None:
    sim.faults = F.chain(F.body(page, F.on(F.INTEGRATIONS)), F.body(errors, F.on(F.ERRORS)),
                         F.hang(errors_after, F.on(F.ERRORS)))


@pytest.mark.parametrize(("change", "decoded"), [
    ("nothing", False),
    ("a status", False),  # the listing changed, its labels did not
    ("an error count", True),
    ("the order of two records", True),
    ("an integration gone (its errors orphaned)", True),  # the same body, other labels
    ("the order of two integrations", True),
])
def test_an_errors_body_is_decoded_unless_it_and_the_listed_labels_are_the_last_ones(
        served: tuple[Simulator, PolarityClient], change: str, decoded: bool) -> None:
    sim, client = served
    collector = PolarityCollector(client, CollectorConfig())
    serve(sim, "nothing", errors_after=LISTING_FIRST)
    _, first = logged_scrape(collector)
    serve(sim, change, errors_after=LISTING_FIRST)
    second, log = logged_scrape(collector)
    fresh, _ = PolarityCollector(client, CollectorConfig()).scrape(Deadline(5.0))
    assert NOT_DECODED not in first
    assert (NOT_DECODED not in log) is decoded, log
    assert stable(second, encode_text) == stable(fresh, encode_text)


def test_an_undecoded_body_counts_the_fields_it_could_not_read_again(
        served: tuple[Simulator, PolarityClient]) -> None:
    sim, client = served
    records = [_record("x", "E", "many"), _record("x", "F", 2, "yesterday")]
    serve_bodies(sim, page_of("x"), json.dumps({"data": records}).encode(), LISTING_FIRST)
    collector = PolarityCollector(client, CollectorConfig())
    counted = []
    for _ in range(2):
        families, log = logged_scrape(collector)
        counted.append({(s.labels["collector"], s.labels["field"]): s.value
                        for s in by_name(families)[metrics.UNREADABLE_FIELDS.base].samples})
    assert NOT_DECODED in log
    assert counted[1] == counted[0] and len(counted[0]) == 2


def test_the_fields_counted_again_are_those_of_the_body_kept(
        served: tuple[Simulator, PolarityClient]) -> None:
    # The second body folds to the first one's summary (the same errors key, so the families
    # are reused) but has a record it cannot read: each body, met again, counts its own.
    sim, client = served
    one = json.dumps({"data": [_record("x", "E")]}).encode()
    two = json.dumps({"data": [_record("x", "E"), {"attributes": {"code": "E"}}]}).encode()
    keeping = PolarityCollector(client, CollectorConfig())
    undecoded = []
    for body in (one, two, two, one, one):
        serve_bodies(sim, page_of("x"), body, LISTING_FIRST)
        kept, log = logged_scrape(keeping)
        fresh, _ = PolarityCollector(client, CollectorConfig()).scrape(Deadline(5.0))
        assert stable(kept, encode_text) == stable(fresh, encode_text)
        undecoded.append(NOT_DECODED in log)
    assert undecoded == [False, False, True, False, True]


def test_a_body_that_differs_only_near_its_end_is_decoded(
        served: tuple[Simulator, PolarityClient]) -> None:
    sim, client = served
    records = [_record("x", f"E{i % 7}") for i in range(1500)]
    keeping = PolarityCollector(client, CollectorConfig())
    for last in ("E0", "LAST"):
        records[-1] = _record("x", last)
        body = json.dumps({"data": records}).encode()
        assert len(body) > 3 * 65536
        serve_bodies(sim, page_of("x"), body, LISTING_FIRST)
        kept, log = logged_scrape(keeping)
        fresh, _ = PolarityCollector(client, CollectorConfig()).scrape(Deadline(5.0))
        assert NOT_DECODED not in log
        assert stable(kept, encode_text) == stable(fresh, encode_text)


def after_the_dataset(served: tuple[Simulator, PolarityClient],
                      faults: Callable[[bytes, bytes], F.FaultHook]) -> str:
    """The fetch log of a keeping collector's scrape of these answers (faults of the listing's
    and the errors' bodies of the dataset, the errors unchanged) after one of the dataset;
    asserts that the scrape says what a fresh collector's says."""
    sim, client = served
    collector = PolarityCollector(client, CollectorConfig())
    serve(sim, "nothing", errors_after=LISTING_FIRST)
    logged_scrape(collector)
    _, errors = answers("nothing")
    listing, _ = answers("an integration gone (its errors orphaned)")
    sim.faults = faults(listing, errors)
    second, log = logged_scrape(collector)
    fresh, _ = PolarityCollector(client, CollectorConfig()).scrape(Deadline(5.0))
    assert stable(second, encode_text) == stable(fresh, encode_text)
    return log


def test_an_unchanged_body_after_a_failed_listing_is_decoded(
        served: tuple[Simulator, PolarityClient]) -> None:
    log = after_the_dataset(served, lambda listing, errors: F.chain(
        F.status(500, F.on(F.INTEGRATIONS)), F.body(errors, F.on(F.ERRORS)),
        F.hang(LISTING_FIRST, F.on(F.ERRORS))))
    assert NOT_DECODED not in log


def test_an_unchanged_body_is_decoded_at_once_while_the_listing_is_read(
        served: tuple[Simulator, PolarityClient]) -> None:
    # Waiting for the listing, then decoding because it changed, would end the errors part
    # after the listing: late, when the listing takes most of the deadline.
    log = after_the_dataset(served, lambda listing, errors: F.chain(
        F.body(listing, F.on(F.INTEGRATIONS)), F.body(errors, F.on(F.ERRORS)),
        F.hang(LISTING_FIRST, F.on(F.INTEGRATIONS))))
    parts = [line.split("part ", 1)[1] for line in log.splitlines() if "part " in line]
    assert parts == ["authentication: ok", "errors: ok", "integrations: ok"], log


def test_with_error_events_every_body_is_decoded(
        served: tuple[Simulator, PolarityClient]) -> None:
    sim, client = served
    collector = PolarityCollector(client, CollectorConfig(), events=ErrorEvents("t"))
    serve(sim, "nothing", errors_after=LISTING_FIRST)
    logs = [logged_scrape(collector)[1] for _ in range(2)]
    assert all(NOT_DECODED not in log for log in logs)


# --- listing pages byte for byte the last ones: not parsed again (client.KeptPages) ------------

PAGE_SIZE = 4  # DATASET's 12 integrations in 3 pages


@pytest.fixture(scope="module")
def paged() -> Iterator[tuple[Simulator, PolarityClient]]:
    with simulator_and_client(PAGE_SIZE, integrations=12, errors=40) as served:
        yield served


def listed_objects(collector: PolarityCollector) -> list[Any]:
    listed = collector._reuse.listed
    assert listed is not None
    return list(listed.integrations.values())


def scraped_once(paged: tuple[Simulator, PolarityClient],
                 ) -> tuple[Simulator, PolarityClient, PolarityCollector]:
    """A keeping collector that has scraped the paged dataset as the simulator serves it."""
    sim, client = paged
    sim.faults = None
    collector = PolarityCollector(client, CollectorConfig())
    collector.scrape(Deadline(5.0))
    return sim, client, collector


def renamed_first(page: Any, _request: Any) -> Any:
    page["data"][0]["attributes"]["name"] = "renamed"
    return page


def test_a_page_read_again_byte_for_byte_keeps_its_integrations_others_are_read_anew(
        paged: tuple[Simulator, PolarityClient]) -> None:
    sim, client, collector = scraped_once(paged)
    first = listed_objects(collector)
    sim.faults = F.transform_json(renamed_first, F.on(F.INTEGRATIONS, page=2))
    families, _ = collector.scrape(Deadline(5.0))
    second = listed_objects(collector)
    assert len(first) == len(second) == 3 * PAGE_SIZE
    assert [a is b for a, b in zip(first, second, strict=True)] == \
        [True] * PAGE_SIZE + [False] * PAGE_SIZE + [True] * PAGE_SIZE
    fresh, _ = PolarityCollector(client, CollectorConfig()).scrape(Deadline(5.0))
    assert stable(families, encode_text) == stable(fresh, encode_text)


def test_a_page_read_again_counts_the_fields_it_could_not_read_again(
        paged: tuple[Simulator, PolarityClient]) -> None:
    def no_status(page: Any, _request: Any) -> Any:
        page["data"][1]["attributes"]["status"] = {"not": "a status"}
        return page

    sim, client = paged
    sim.faults = F.transform_json(no_status, F.on(F.INTEGRATIONS, page=3))
    collector = PolarityCollector(client, CollectorConfig())
    counted = []
    for _ in range(2):
        families, _ = collector.scrape(Deadline(5.0))
        counted.append({(s.labels["collector"], s.labels["field"]): s.value
                        for s in by_name(families)[metrics.UNREADABLE_FIELDS.base].samples})
    assert counted[0] == counted[1] == {("integrations", "status"): 1.0}


def test_the_pages_kept_are_those_of_the_last_listing(
        paged: tuple[Simulator, PolarityClient]) -> None:
    def two_pages(page: Any, _request: Any) -> Any:
        page["meta"]["page"]["total"] = 2 * PAGE_SIZE
        return page

    sim, _, collector = scraped_once(paged)
    assert sorted(collector._reuse.pages) == [1, 2, 3]
    sim.faults = F.transform_json(two_pages, F.on(F.INTEGRATIONS))
    collector.scrape(Deadline(5.0))
    assert sorted(collector._reuse.pages) == [1, 2]
    sim.faults = F.status(500, F.on(F.INTEGRATIONS))
    collector.scrape(Deadline(5.0))
    assert collector._reuse.pages == {}


def test_a_listing_reads_the_kept_pages_and_never_changes_them(
        paged: tuple[Simulator, PolarityClient]) -> None:
    # A page thread of a listing that gave up may still be writing when the next listing (or
    # a late answer's forget) runs: the kept pages are replaced whole, never changed in place.
    sim, _, collector = scraped_once(paged)
    kept = collector._reuse.pages
    before = dict(kept)
    sim.faults = F.transform_json(renamed_first, F.on(F.INTEGRATIONS, page=2))
    collector.scrape(Deadline(5.0))
    assert kept == before and collector._reuse.pages is not kept
    assert sorted(collector._reuse.pages) == [1, 2, 3]
    assert collector._reuse.pages[2][0] != kept[2][0]
    assert collector._reuse.pages[1] == kept[1] and collector._reuse.pages[3] == kept[3]


def test_an_incomplete_listing_keeps_no_pages(
        paged: tuple[Simulator, PolarityClient]) -> None:
    # A server that answers every page number with the first page: its duplicates are never
    # held between scrapes (a hostile server could make them many).
    sim, client = paged
    sim.faults = None
    first, _ = answers("nothing")
    one = json.loads(first)
    one["data"], one["meta"]["page"]["total"] = one["data"][:PAGE_SIZE], 3 * PAGE_SIZE
    sim.faults = F.body(json.dumps(one).encode(), F.on(F.INTEGRATIONS))
    collector = PolarityCollector(client, CollectorConfig())
    families, _ = collector.scrape(Deadline(5.0))
    assert by_name(families)[metrics.LISTING_COMPLETE.base].samples[0].value == 0.0
    assert collector._reuse.pages == {}

"""Parsing API JSON into records: every documented variant read, nothing dropped silently."""

from __future__ import annotations

import json
import tracemalloc
from collections import Counter
from typing import Any

import pytest
import requests
from conftest import SIM_PASSWORD, SIM_USER
from errorbodies import ABSENT, BASE, DOCUMENTED, PLACES, VALUES, body_of, changed
from hypothesis import given, settings
from hypothesis import strategies as st

from polarity_exporter.client import _count_refs
from polarity_exporter.documented import (
    documented_batch,
    documented_errors,
    documented_integrations,
    documented_page,
    documented_rows,
)
from polarity_exporter.jsondecode import decode_json
from polarity_exporter.models import (
    ErrorRecord,
    Problems,
    parse_error,
    parse_errors,
    parse_integration,
    parse_timestamp,
)
from polarity_exporter.simulator import Simulator

EXPECTED = 1712586007.834943  # 2024-04-08 14:20:07.834943 UTC


@pytest.mark.parametrize("text", [
    "2024-04-08 14:20:07.834943Z",
    "2024-04-08T14:20:07.834943Z",
    "2024-04-08T14:20:07.834943+00:00",
    "2024-04-08T16:20:07.834943+02:00",
    "2024-04-08 14:20:07.834943",
])
def test_occurred_on_variants_parse_to_the_same_instant(text: str) -> None:
    assert parse_timestamp(text) == pytest.approx(EXPECTED, abs=1e-6)


def error(**attributes: Any) -> dict[str, Any]:
    base = {"code": "ETIMEDOUT", "error-count": 3, "integration-id": "vt",
            "occurred-on": "2024-04-08 14:20:07.834943Z", "status": 500}
    base.update(attributes)
    return {"id": "e1", "type": "integration-errors", "attributes": base}


@pytest.mark.parametrize(("status", "read"), [("running", "running"), (3, "3"), (3.0, "3"),
                                               ("3", "3")])
def test_integration_status_may_be_a_string_or_a_number(status: Any, read: str) -> None:
    problems: Counter[str] = Counter()
    item = {"id": "vt", "type": "integrations", "attributes": {"name": "VT", "status": status}}
    integration = parse_integration(item, problems)
    assert integration is not None and integration.status == read
    assert not problems


def test_unreadable_timestamp_still_counts_the_record() -> None:
    problems: Counter[str] = Counter()
    record = parse_error(error(**{"occurred-on": "yesterday"}), problems)
    assert record is not None and record.count == 3 and record.occurred_on is None
    assert problems == {"occurred-on": 1}


@pytest.mark.parametrize("count", [-1, 1.5, "many", None, True, float("inf"), "\u00b2"])
def test_unreadable_error_count_is_counted_as_a_problem(count: Any) -> None:
    problems: Counter[str] = Counter()
    record = parse_error(error(**{"error-count": count}), problems)
    assert record is not None and record.count is None
    assert problems == {"error-count": 1}


def test_integration_id_falls_back_to_the_relationship() -> None:
    item = error()
    del item["attributes"]["integration-id"]
    item["relationships"] = {"integration": {"data": {"id": "vt2", "type": "integrations"}}}
    record = parse_error(item, Counter())
    assert record is not None and record.integration_id == "vt2"


def test_error_without_any_integration_id_is_counted() -> None:
    item = error()
    del item["attributes"]["integration-id"]
    problems: Counter[str] = Counter()
    assert parse_error(item, problems) is None
    assert problems == {"integration-id": 1}


def test_affected_users_are_read_by_id() -> None:
    meta = {"affected_users": [{"id": 1, "username": "a"}, {"id": "2", "username": "b"}]}
    record = parse_error(error(meta=meta), Counter())
    assert record is not None and record.affected_users == ("1", "2")


def test_malformed_affected_users_are_counted() -> None:
    problems: Counter[str] = Counter()
    record = parse_error(error(meta={"affected_users": "alice"}), problems)
    assert record is not None and record.affected_users == ()
    assert problems == {"meta.affected_users": 1}


def test_integration_with_numeric_status_keeps_its_spelling() -> None:
    item = {"id": "vt", "attributes": {"name": "VirusTotal", "status": 1},
            "relationships": {"integration-errors": {"data": [{"id": "e1"}, {"id": "e2"}]}}}
    integration = parse_integration(item, Counter())
    assert integration is not None
    assert integration.status == "1" and integration.error_refs == 2


def test_integration_with_null_attributes_keeps_its_id() -> None:
    problems: Counter[str] = Counter()
    integration = parse_integration({"id": "vt", "attributes": None}, problems)
    assert integration is not None and integration.name == "" and integration.status == ""
    assert problems == {"status": 1}


def test_integration_without_id_is_counted() -> None:
    problems: Counter[str] = Counter()
    assert parse_integration({"attributes": {"name": "x"}}, problems) is None
    assert problems == {"id": 1}


# --- The documented shape, read in C (documented.errors) ------------------------------

def generic(body: bytes) -> tuple[list[ErrorRecord], Problems]:
    """What the exporter reads from a body outside the documented shape."""
    problems: Problems = Counter()
    return list(parse_errors(decode_json(body, "body")["data"], problems)), problems


def folded_rows(body: bytes) -> tuple[list[Any] | None, Problems]:
    """What the summary folds from a body in the documented shape (documented.rows),
    as records: it must be what the record readers read."""
    problems: Problems = Counter()
    batch = documented_batch(body, problems)
    if batch is None:
        return None, problems
    return [ErrorRecord(*row) for row in documented_rows(batch)], problems


def assert_read_alike(body: bytes) -> list[ErrorRecord] | None:
    """Both readers agree on `body` if the documented one accepts it; a body it refuses is read
    again by the other, so it must count nothing. The fold's rows agree with both."""
    rows = folded_rows(body)
    problems: Problems = Counter()
    read = documented_errors(body, problems)
    assert rows == (read, problems)
    if read is None:
        assert not problems
    else:
        assert (read, problems) == generic(body)
    return read


@settings(max_examples=300, deadline=None)
@given(st.lists(DOCUMENTED, max_size=5), st.booleans())
def test_every_body_in_the_documented_shape_is_read_by_the_documented_reader(
        records: list[dict[str, Any]], ascii_only: bool) -> None:
    body = body_of(records, ascii_only)
    problems: Problems = Counter()
    assert (documented_errors(body, problems), problems) == generic(body) == folded_rows(body)


@pytest.mark.parametrize("place", PLACES, ids=lambda place: ".".join(map(str, place)) or "record")
@pytest.mark.parametrize("value", VALUES, ids=lambda value: repr(value)[:24])
def test_the_readers_agree_on_every_deviation_from_the_documented_shape(
        place: tuple[Any, ...], value: Any) -> None:
    record = changed(BASE, place, value)
    if record is not ABSENT:
        assert_read_alike(body_of([BASE, record]))


@settings(max_examples=300, deadline=None)
@given(st.lists(DOCUMENTED, min_size=1, max_size=3), st.data())
def test_the_readers_agree_on_documented_bodies_with_several_deviations(
        records: list[dict[str, Any]], data: st.DataObject) -> None:
    for _ in range(data.draw(st.integers(1, 3))):
        k = data.draw(st.integers(0, len(records) - 1))
        records[k] = changed(records[k], data.draw(st.sampled_from(PLACES)),
                             data.draw(st.sampled_from(VALUES)))
    assert_read_alike(body_of([r for r in records if r is not ABSENT],
                              data.draw(st.booleans())))


def errors_body(sim: Simulator) -> bytes:
    login = requests.post(f"{sim.url}/api/users/login", timeout=10,
                          json={"identification": SIM_USER, "password": SIM_PASSWORD})
    token = login.json()["data"]["token"]
    response = requests.get(f"{sim.url}/api/integrations/errors", timeout=30,
                            headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    return response.content


def test_the_simulators_errors_body_is_read_in_the_documented_shape(simulator: Simulator) -> None:
    body = errors_body(simulator)
    problems: Problems = Counter()
    read = documented_errors(body, problems)
    assert read is not None and len(read) == len(json.loads(body)["data"])
    assert (read, problems) == generic(body)


@pytest.mark.parametrize(("name", "body"), [
    ("nesting past the recursion limit in a skipped field",
     b'{"data":[{"x":' + b"[" * 100_000 + b"]" * 100_000 + b',"attributes":{}}]}'),
    ("an escaped lone surrogate", b'{"data":[{"attributes":{"code":"\\ud800"}}]}'),
    ("invalid UTF-8", b'{"data":[{"attributes":{"code":"\xff"}}]}'),
    ("NaN in a skipped field", b'{"data":[{"x":NaN}]}'),
    ("a count beyond 2**53", b'{"data":[{"attributes":{"integration-id":"vt","code":"c",'
                             b'"error-count":9007199254740993,"occurred-on":"x"}}]}'),
    ("a 5,000-digit count", b'{"data":[{"attributes":{"error-count":' + b"9" * 5000 + b"}}]}"),
    ("data that is not a list", b'{"data":{}}'),
    ("a list at the top", b"[]"),
])
def test_the_documented_reader_refuses_other_bodies_without_raising(name: str,
                                                                     body: bytes) -> None:
    problems: Problems = Counter()
    assert documented_errors(body, problems) is None and not problems


def dense_users(size: int, user: bytes = b'{"id":"%02d"}') -> bytes:
    users = b",".join(user % (k % 100) if b"%" in user else user for k in range(size // 12))
    return (b'{"data":[{"attributes":{"integration-id":"a","code":"c","error-count":1,'
            b'"occurred-on":"x","meta":{"affected_users":[' + users + b"]}}}]}")


def dense_records(size: int) -> bytes:
    record = (b'{"attributes":{"integration-id":"ab","code":"cd","error-count":1,'
              b'"occurred-on":"","meta":{"affected_users":[{"id":"1"}]}}}')
    return b'{"data":[' + b",".join([record] * (size // len(record))) + b"]}"


def dense_wide_users(size: int) -> bytes:
    return dense_users(size, '{"id":"\u0100"}'.encode())  # a two-byte character per id


@pytest.mark.parametrize("dense", [dense_users, dense_wide_users, dense_records])
def test_the_documented_reader_holds_at_most_twelve_times_its_body(dense: Any) -> None:
    # The densest bodies it accepts: the most objects per byte (the generic decoder's worst
    # case, a body of minimal records, reaches about 17 times).
    body = dense(1024 * 1024)
    tracemalloc.start()
    try:
        read = documented_errors(body, Counter())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert read is not None
    assert peak <= 12 * len(body)


# Issue 20, finding 8: a streamed body (ijson, numbers as Decimal) reads numbers as the whole
# body's readers do.
STREAMED_NUMBERS = ["2.50", "1e20", "1e400", "-0.0", "1E+2", "12.5e-1", "1.0000000000000001",
                    "3", "9007199254740993.0", "1e-400"]


@pytest.mark.parametrize("number", STREAMED_NUMBERS)
@pytest.mark.parametrize("field", ["code", "error-count"])
def test_20_8_streamed_numbers_read_as_the_whole_body_reads_them(number: str,
                                                                 field: str) -> None:
    import io

    import ijson

    attributes = {"integration-id": "vt", "code": "c", "error-count": 1,
                  "occurred-on": "2024-04-08 14:20:07Z"}
    text = json.dumps({"data": [{"attributes": attributes}]}).replace(
        json.dumps(attributes[field]) if field == "error-count" else '"c"', number, 1)
    whole: Problems = Counter()
    streamed: Problems = Counter()
    from_whole = list(parse_errors(decode_json(text.encode(), "t")["data"], whole))
    items = ijson.items(io.BytesIO(text.encode()), "data.item", use_float=False)
    from_stream = list(parse_errors(items, streamed))
    assert from_stream == from_whole
    assert streamed == whole


def test_the_remembered_timestamps_are_bounded_and_exact() -> None:
    from polarity_exporter import models
    for second in range(models.TIMESTAMPS_LIMIT + 100):
        text = f"2024-01-01T00:{second // 3600 % 60:02d}:{second % 60:02d}.{second:06d}Z"
        assert parse_timestamp(text) == models._parse_timestamp(text)
    assert len(models.TIMESTAMPS) <= 2 * models.TIMESTAMPS_LIMIT


# --- A listing page in the documented shape, read in C (documented.page) ---------------

PAGE_ITEM: dict[str, Any] = {
    "id": "virustotal_3_1", "type": "integrations",
    "attributes": {"name": "VirusTotal", "acronym": "VT", "version": "3.1.0",
                   "status": "running"},
    "relationships": {"integration-errors": {"data": [
        {"id": "e1", "type": "integration-errors"}, {"id": "e2", "type": "integration-errors"}]}},
}
ITEM_PLACES: list[tuple[str, ...]] = [
    ("id",), ("attributes",), ("attributes", "name"), ("attributes", "acronym"),
    ("attributes", "version"), ("attributes", "status"), ("relationships",),
    ("relationships", "integration-errors"), ("relationships", "integration-errors", "data"),
]
ITEM_VALUES: list[Any] = [ABSENT, None, "", "x" * 5000, 5, -7, 2**70, 1.5, 2.0, True, [],
                          {}, [1, 2], "a\x00b", "\u00e9t\u00e9", {"data": []}]


def page_of(items: list[Any], total: Any = 1) -> bytes:
    return json.dumps({"data": items, "meta": {"page": {"total": total, "number": 1}}}).encode()


def with_value(item: dict[str, Any], place: tuple[str, ...], value: Any) -> dict[str, Any]:
    copy = json.loads(json.dumps(item))
    parent = copy
    for key in place[:-1]:
        if not isinstance(parent.get(key), dict):
            return copy
        parent = parent[key]
    if value is ABSENT:
        parent.pop(place[-1], None)
    else:
        parent[place[-1]] = value
    return copy


def generic_page(raw: bytes) -> tuple[list[Any], Any, Problems]:
    """What the exporter reads from a page outside the documented shape."""
    problems: Problems = Counter()
    body = decode_json(_count_refs(raw), "page")
    parsed = [parse_integration(item, problems, 128) for item in body["data"]]
    return [i for i in parsed if i is not None], body["meta"]["page"]["total"], problems


def assert_pages_alike(raw: bytes) -> bool:
    """Both listing readers agree on a page the documented one accepts."""
    page = documented_page(raw)
    if page is None:
        return False
    problems: Problems = Counter()
    assert (documented_integrations(page, problems, 128), page.total, problems) == \
        generic_page(raw)
    return True


def test_a_documented_page_is_read_by_the_documented_reader() -> None:
    assert assert_pages_alike(page_of([PAGE_ITEM, with_value(PAGE_ITEM, ("id",), "b")], 2))


@pytest.mark.parametrize("place", ITEM_PLACES, ids=lambda place: ".".join(place))
@pytest.mark.parametrize("value", ITEM_VALUES, ids=lambda value: repr(value)[:24])
def test_the_listing_readers_agree_on_every_deviation(place: tuple[str, ...],
                                                       value: Any) -> None:
    assert_pages_alike(page_of([PAGE_ITEM, with_value(PAGE_ITEM, place, value)], 2))


@pytest.mark.parametrize("total", [-1, "2", 2.0, True, None, 2**64])
def test_a_page_whose_total_is_not_a_count_is_left_to_the_generic_reader(total: Any) -> None:
    assert documented_page(page_of([PAGE_ITEM], total)) is None


def test_a_page_too_dense_to_decode_safely_is_left_to_the_generic_reader() -> None:
    refs = [{"id": str(k)} for k in range(20_000)]
    item = with_value(PAGE_ITEM, ("relationships", "integration-errors", "data"), refs)
    raw = page_of([item])
    assert documented_page(raw) is None
    assert generic_page(raw)[0][0].error_refs == len(refs)


def test_an_error_reference_id_with_a_brace_is_counted_exactly() -> None:
    item = with_value(PAGE_ITEM, ("relationships", "integration-errors", "data"),
                      [{"id": "{weird}", "type": "integration-errors"}])
    page = documented_page(page_of([item]))
    assert page is not None
    assert documented_integrations(page, Counter())[0].error_refs == 1


def test_the_simulators_listing_is_read_in_the_documented_shape(simulator: Simulator) -> None:
    login = requests.post(f"{simulator.url}/api/users/login", timeout=10,
                          json={"identification": SIM_USER, "password": SIM_PASSWORD})
    token = login.json()["data"]["token"]
    raw = requests.get(f"{simulator.url}/api/integrations", timeout=30,
                       params={"page[size]": "1000"},
                       headers={"Authorization": f"Bearer {token}"}).content
    assert assert_pages_alike(raw)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10) | st.text("[]{}\"\\,: ab\u00e9", max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.text("[]{}\"\\ab", max_size=4), inner, max_size=3),
    max_leaves=8)


@settings(max_examples=300, deadline=None)
@given(st.lists(JSON_VALUES, max_size=5), st.text("[]{}\"\\ab", max_size=5))
def test_counting_references_keeps_every_page_valid_and_every_count(refs: list[Any],
                                                                    name: str) -> None:
    """Whatever the references hold (brackets and quotes in strings, nesting, other types),
    the page stays valid JSON, the same length of references, and the same everything else."""
    page = {"data": [{"id": "a", "attributes": {"name": name},
                      "relationships": {"integration-errors": {"data": refs}}}]}
    counted = json.loads(_count_refs(json.dumps(page).encode()))
    item = counted["data"][0]
    assert len(item["relationships"]["integration-errors"]["data"]) == len(refs)
    assert item["attributes"]["name"] == name

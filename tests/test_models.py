"""Parsing API JSON into records: every documented variant read, nothing dropped silently."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from polarity_exporter.models import parse_error, parse_integration, parse_timestamp

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

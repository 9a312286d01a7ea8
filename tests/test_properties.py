"""Property tests: for any JSON the API could send, collection never raises, the exposition
parses, and every exported value comes from the input.

Documents are generated from the documented shapes (JSON:API integrations and error records) with
mutations: wrong types, missing and null fields, junk values, control characters, lone
surrogates, huge and negative numbers, broken paging totals. They are served over HTTP by the
simulator (a test-only body fault) and collected by the real client and collector.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import simulator_and_client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families
from reference import clean as clean_controls
from reference import to_unix

from polarity_exporter.collector import PolarityCollector
from polarity_exporter.config import CollectorConfig
from polarity_exporter.deadline import Deadline
from polarity_exporter.exposition import encode_openmetrics, encode_text
from polarity_exporter.simulator import Simulator
from polarity_exporter.simulator import faults as F

# Text with everything a third-party integration might put in a string.
any_text = st.text(st.characters(codec=None, categories=None), max_size=12)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                    st.floats(allow_nan=False, allow_infinity=False), any_text)
junk = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(any_text, inner, max_size=3)), max_leaves=6)
ids = st.one_of(st.sampled_from(["vt_1", "shodan_2", "gn_3", "x\x01y", "\ud800"]),
                st.integers(-5, 5), junk)
timestamps = st.one_of(
    st.datetimes().map(lambda d: d.isoformat(sep=" ") + "Z"),
    st.datetimes().map(lambda d: d.isoformat() + "+02:00"),
    st.datetimes().map(str), junk)
counts = st.one_of(st.integers(-10, 10**6), st.integers(2**53, 2**80), st.floats(-1e300, 1e300),
                   st.sampled_from(["7", " 3 ", "1e3", "-1"]), junk)


def maybe(value: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(value, junk)


integration = st.fixed_dictionaries({"id": ids}, optional={
    "type": maybe(st.just("integrations")),
    "attributes": maybe(st.fixed_dictionaries({}, optional={
        key: maybe(any_text) for key in ("name", "acronym", "version", "status")})),
    "relationships": maybe(st.fixed_dictionaries({"integration-errors": maybe(
        st.fixed_dictionaries({"data": maybe(st.lists(st.fixed_dictionaries(
            {"id": ids, "type": st.just("integration-errors")}), max_size=4))}))})),
})
error = st.fixed_dictionaries({}, optional={
    "id": ids,
    "attributes": maybe(st.fixed_dictionaries({}, optional={
        "integration-id": ids, "code": maybe(any_text), "error-count": counts,
        "occurred-on": timestamps,
        "meta": maybe(st.fixed_dictionaries({}, optional={"affected_users": maybe(
            st.lists(maybe(st.fixed_dictionaries({"id": ids})), max_size=4))})),
    })),
    "relationships": maybe(st.fixed_dictionaries({"integration": maybe(st.fixed_dictionaries(
        {"data": maybe(st.fixed_dictionaries({"id": ids}))}))})),
})


@st.composite
def listings(draw: st.DrawFn) -> Any:
    data = draw(st.lists(maybe(integration), max_size=8))
    total = draw(st.one_of(st.just(len(data)), st.integers(-1, 12), junk))
    document = {"data": data, "meta": {"page": {"number": 1, "size": 1000, "total": total}}}
    return draw(st.one_of(st.just(document), st.just(document), junk,
                          st.just({"data": data})))


@st.composite
def error_documents(draw: st.DrawFn) -> Any:
    data = draw(st.lists(maybe(error), max_size=10))
    return draw(st.one_of(st.just({"data": data, "jsonapi": {"version": "1.0"}}),
                          st.just({"data": data}), junk))


@pytest.fixture(scope="module")
def setup() -> Iterator[tuple[Simulator, PolarityCollector]]:
    with simulator_and_client() as (sim, client):
        yield sim, PolarityCollector(client, CollectorConfig())


def clean(text: str) -> str:
    # Lone surrogates (from "\ud800" escapes) cannot be encoded: they become U+FFFD as well.
    return clean_controls(re.sub("[\ud800-\udfff]", "\ufffd", text))


def text_forms(value: Any) -> set[str]:
    """Every label a raw JSON value could honestly become."""
    if isinstance(value, bool) or value is None:
        return {""}
    if isinstance(value, (int, float)):
        text = str(int(value)) if float(value).is_integer() else str(value)
        return {clean(text), ""}
    if not isinstance(value, str):
        return {""}
    # The streaming parser (ijson's C backend) turns a lone surrogate escape into "?".
    return {clean(value), clean_controls(re.sub("[\ud800-\udfff]", "?", value)), ""}


def all_values(document: Any) -> Iterator[Any]:
    if isinstance(document, dict):
        for value in document.values():
            yield value
            yield from all_values(value)
    elif isinstance(document, list):
        for value in document:
            yield value
            yield from all_values(value)


def valid_listing(document: Any) -> bool:
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        return False
    meta = document.get("meta")
    page = meta.get("page") if isinstance(meta, dict) else None
    total = page.get("total") if isinstance(page, dict) else None
    return isinstance(total, int) and not isinstance(total, bool) and total >= 0


def instants(document: Any) -> set[float]:
    found: set[float] = set()
    for value in all_values(document):
        if isinstance(value, str):
            # The reference parser only: an instant the exporter's own parser invents must not
            # become an allowed answer.
            try:
                found.add(to_unix(value))
            except (ValueError, OverflowError):
                pass
    return found


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(listing=listings(), errors=error_documents())
def test_any_api_answer_is_collected_safely_and_truthfully(
        setup: tuple[Simulator, PolarityCollector], listing: Any, errors: Any) -> None:
    sim, collector = setup
    sim.faults = F.chain(F.body(json.dumps(listing).encode(), F.on(F.INTEGRATIONS)),
                         F.body(json.dumps(errors).encode(), F.on(F.ERRORS)))
    families, _ = collector.scrape(Deadline(5.0))  # must not raise
    text = encode_text(families).decode()  # what /metrics writes
    parse_om(encode_openmetrics(families).decode())  # OpenMetrics parses too
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
    keys = Counter((s.name, frozenset(s.labels.items())) for s in samples)
    assert max(keys.values()) == 1, "duplicate series"
    assert all(math.isfinite(s.value) for s in samples)
    by_name: dict[str, list[Any]] = {}
    for sample in samples:
        by_name.setdefault(sample.name, []).append(sample)

    success = {s.labels["collector"]: s.value
               for s in by_name["polarity_scrape_collector_success"]}
    assert success["integrations"] == (1.0 if valid_listing(listing) else 0.0)
    labels_in_input = set().union(*(text_forms(v) for v in all_values([listing, errors])))
    for name in ("polarity_integration_info", "polarity_integration_status",
                 "polarity_integration_errors", "polarity_integration_error_occurrences_total"):
        for sample in by_name.get(name, []):
            for label, value in sample.labels.items():
                if label != "code" or value != "other":
                    assert value in labels_in_input, (name, label, value)
    numbers_in_input = [v for v in all_values(errors)
                        if isinstance(v, (int, float)) and not isinstance(v, bool)]
    ceiling = sum(abs(float(v)) for v in numbers_in_input) + sum(
        float(v.strip()) for v in all_values(errors)  # "0\x1f": str.strip drops \x1f
        if isinstance(v, str) and v.strip().isascii() and v.strip().isdigit())
    for sample in by_name.get("polarity_integration_error_occurrences_total", []):
        assert 0 <= sample.value <= ceiling
    times = instants(errors)
    for sample in by_name.get("polarity_integration_error_last_occurrence_timestamp_seconds", []):
        assert sample.value in times
    if success["errors"] == 1:
        records = errors["data"]
        for sample in by_name.get("polarity_integration_errors", []):
            assert 0 <= sample.value <= len(records)

"""The exporter's own encoders write exactly what prometheus_client writes, for any families."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from polarity_exporter.exposition import (
    OPENMETRICS_TYPE,
    TEXT_TYPE,
    choose,
    encode_openmetrics,
    encode_text,
)


class Families(Collector):
    def __init__(self, families: list[Any]) -> None:
        self._families = families

    def collect(self) -> Iterator[Any]:
        return iter(self._families)


def same_as_prometheus_client(families: list[Any]) -> None:
    assert encode_text(families) == generate_latest(Families(families))
    assert encode_openmetrics(families) == generate_openmetrics(Families(families))


text = st.text(alphabet=st.characters(codec="utf-8"), max_size=12) | st.sampled_from(
    ['a"b', "back\\slash", "new\nline", "", "\u00e9\u4e2d"])
values = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(
    [0.0, -0.0, 1.0, 1e20, 123456789.0, 1234567.0, 5e-324, 2.0**53])
label_names = st.sampled_from(["integration_id", "code", "a", "_x", "le_1"])


@st.composite
def families(draw: Any) -> list[Any]:
    made: list[Any] = []
    for index in range(draw(st.integers(1, 4))):
        names = draw(st.lists(label_names, unique=True, max_size=3))
        kind = draw(st.sampled_from([GaugeMetricFamily, CounterMetricFamily]))
        family = kind(f"family_{index}", draw(text), labels=names)
        shared: dict[str, str] | None = None
        for _ in range(draw(st.integers(0, 5))):
            labels = {name: draw(text) for name in names}
            if shared is not None and draw(st.booleans()):
                labels = shared  # samples sharing one label dict, as the collector builds them
            shared = labels
            name = family.name + ("_total" if kind is CounterMetricFamily else "")
            family.samples.append(Sample(name, labels, draw(values)))
        made.append(family)
    return made


@settings(max_examples=300, deadline=None)
@given(families())
def test_any_gauges_and_counters_encode_exactly_as_prometheus_client(made: list[Any]) -> None:
    same_as_prometheus_client(made)


def test_process_metrics_encode_exactly_as_prometheus_client() -> None:
    same_as_prometheus_client(list(ProcessCollector(registry=None).collect()))


def test_families_outside_the_simple_shape_are_encoded_by_prometheus_client() -> None:
    timestamped = GaugeMetricFamily("stamped", "with a timestamp")
    timestamped.add_metric([], 1.0, timestamp=1700000000.5)
    info = InfoMetricFamily("build", "build information", value={"version": "1"})
    histogram = HistogramMetricFamily("latency_seconds", "latency",
                                      buckets=[("1.0", 3.0), ("+Inf", 5.0)], sum_value=4.0)
    created = CounterMetricFamily("requests", "with created", value=3.0, created=1700000000.0)
    plain = GaugeMetricFamily("plain", "plain")
    plain.add_metric([], 2.0)
    same_as_prometheus_client([plain, timestamped, info, histogram, created, plain])


@pytest.mark.parametrize("accept", [
    "", "text/plain", "*/*",
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    "application/openmetrics-text; version=0.0.1"])
def test_negotiation_picks_the_format_prometheus_client_picks(accept: str) -> None:
    from prometheus_client.exposition import choose_encoder

    family = GaugeMetricFamily("g", "gauge", labels=["x"])
    family.add_metric(["v"], 1.0)
    encoder, content_type = choose(accept)
    theirs, their_type = choose_encoder(accept)
    assert content_type.split(";")[0] == their_type.split(";")[0]
    assert encoder([family]) == theirs(Families([family]))


@pytest.mark.parametrize("accept", [
    "application/openmetrics-text; version=1.0.0x", "text/plain; version=1.x",
    "application/openmetrics-text; version=2.x\r\n\tX-Injected: yes"])
def test_an_odd_accept_header_gets_a_fixed_content_type_never_an_error(accept: str) -> None:
    _, content_type = choose(accept)
    assert content_type in (TEXT_TYPE, OPENMETRICS_TYPE)

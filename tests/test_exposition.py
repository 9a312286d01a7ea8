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
        unit = draw(st.sampled_from(["", "seconds", "bytes"]))
        family = kind(f"family_{index}", draw(text), labels=names, unit=unit)
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


# The Accept headers Prometheus sends by default, literally: 2.x (2.42, Debian's), and 3.x with
# its default scrape_protocols (OpenMetricsText1.0.0, OpenMetricsText0.0.1,
# PrometheusText1.0.0, PrometheusText0.0.4). No Prometheus 3 runs here: these fix the headers.
PROMETHEUS_2_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
                       "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
PROMETHEUS_3_ACCEPT = ("application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
                       "application/openmetrics-text;version=0.0.1;q=0.5,"
                       "text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,"
                       "text/plain;version=0.0.4;q=0.3,*/*;q=0.2")


@pytest.mark.parametrize("accept", [
    "", "text/plain", "*/*", PROMETHEUS_2_ACCEPT, PROMETHEUS_3_ACCEPT,
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


@pytest.mark.parametrize("accept", [PROMETHEUS_2_ACCEPT, PROMETHEUS_3_ACCEPT],
                         ids=["prometheus-2", "prometheus-3"])
def test_prometheus_gets_openmetrics_1_0_with_a_content_type_it_accepts(accept: str) -> None:
    encoder, content_type = choose(accept)
    media, *params = [part.strip() for part in content_type.split(";")]
    assert media == "application/openmetrics-text"
    assert "version=1.0.0" in params and "charset=utf-8" in params
    # Prometheus 3 asked for allow-utf-8 escaping; names here are all legacy names, so the
    # answer says underscores, which every Prometheus reads.
    assert "escaping=underscores" in params
    assert encoder is encode_openmetrics


def test_the_exporters_seconds_families_carry_a_unit_line_as_prometheus_client_writes() -> None:
    from polarity_exporter import metrics

    made = []
    for spec in metrics.CATALOGUE:
        family = spec.new() if "{" not in spec.help else spec.new(ttl="5")
        family.samples.append(Sample(spec.name, {}, 1.0)) if not spec.labels else None
        made.append(family)
    same_as_prometheus_client(made)
    text = encode_openmetrics(made).decode()
    seconds = [spec.base for spec in metrics.CATALOGUE if spec.base.endswith("_seconds")]
    assert seconds
    for name in seconds:
        assert f"# UNIT {name} seconds\n" in text
    assert text.count("# UNIT ") == len(seconds)


@pytest.mark.parametrize("value, written", [(1e10, "1e+10"), (1.5e16, "1.5e+16"),
                                            (123456789.0, "1.23456789e+08"), (0.5, "0.5")])
def test_large_numbers_are_written_as_go_writes_them(value: float, written: str) -> None:
    family = GaugeMetricFamily("g", "gauge", value=value)
    assert f"g {written}\n".encode() in encode_text([family])
    same_as_prometheus_client([family])


def test_remembered_float_texts_keep_negative_zero_and_nan_apart() -> None:
    from polarity_exporter.exposition import go_float
    for _ in range(2):  # the second round reads the remembered texts
        assert [go_float(v) for v in (0.0, -0.0, float("nan"), 5.0, 1724351234.123)] == [
            "0.0", "-0.0", "NaN", "5.0", "1.724351234123e+09"]


def test_the_remembered_float_texts_are_bounded() -> None:
    from polarity_exporter import exposition
    for value in range(1, exposition.FLOAT_TEXTS_LIMIT + 100):
        assert exposition.go_float(value + 0.5) == repr(value + 0.5)
    assert len(exposition._FLOAT_TEXTS) <= 2 * exposition.FLOAT_TEXTS_LIMIT

"""The metric catalogue (polarity_exporter/metrics.py) is the one definition of every family:
a real scrape writes exactly its families, with its types, HELP and label names, and the
README's metrics table is generated from it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import REPO, SIM_PASSWORD, SIM_USER
from inproc import Running, password, running_exporter
from prometheus_client.parser import text_string_to_metric_families
from reference import parse

from polarity_exporter import metrics
from polarity_exporter.simulator import Simulator, SimulatorConfig
from polarity_exporter.simulator import faults as F

README = (REPO / "README.md").read_text(encoding="utf-8")
TTL = 30.0
# What /metrics serves for one server; the fleet's own families: tests/test_fleet.py.
SINGLE = [family for family in metrics.CATALOGUE if family.scope != "fleet"]


@pytest.fixture(scope="module")
def cached() -> Iterator[Running]:
    """An exporter with --cache.ttl, and one unreadable field, so that every family of the
    catalogue is served."""
    def spoil(document: Any, _request: Any) -> Any:
        document["data"][0]["attributes"]["occurred-on"] = "yesterday"
        return document

    with Simulator(SimulatorConfig(seed=3, integrations=12, errors=60,
                                   users={SIM_USER: SIM_PASSWORD})) as sim, \
            running_exporter(sim.url, password(SIM_USER, SIM_PASSWORD), cache_ttl=TTL) as exp:
        sim.faults = F.transform_json(spoil, F.on(F.ERRORS))
        yield exp


@pytest.fixture(scope="module")
def served(cached: Running) -> dict[str, tuple[str, str, set[frozenset[str]]]]:
    """Family name as a query uses it -> (type, HELP, label-name sets of its samples)."""
    text = cached.scrape().response.text
    families: dict[str, tuple[str, str, set[frozenset[str]]]] = {}
    for family in text_string_to_metric_families(text):
        name = family.name + "_total" if family.type == "counter" else family.name
        families[name] = (family.type, family.documentation,
                          {frozenset(sample.labels) for sample in family.samples})
    return families


def test_a_scrape_serves_every_family_of_the_catalogue(served: dict[str, object]) -> None:
    assert {family.name for family in SINGLE} <= set(served)


def test_a_scrape_serves_no_polarity_family_outside_the_catalogue(
        served: dict[str, object]) -> None:
    assert {name for name in served if name.startswith("polarity_")} \
        == {family.name for family in SINGLE}


@pytest.mark.parametrize("family", SINGLE, ids=lambda f: f.name)
def test_each_family_has_the_catalogue_type_and_labels(
        family: metrics.Family,
        served: dict[str, tuple[str, str, set[frozenset[str]]]]) -> None:
    kind, _, label_sets = served[family.name]
    assert kind == family.kind
    assert label_sets, f"{family.name}: no sample in a scrape of a healthy server"
    assert label_sets == {frozenset(family.labels)}


def test_with_a_cache_the_up_help_says_how_old_results_may_be(
        served: dict[str, tuple[str, str, set[frozenset[str]]]]) -> None:
    assert served["polarity_up"][1] == metrics.UP_CACHED.help.format(ttl="30")
    assert "30s" in served["polarity_scrape_result_age_seconds"][1]


def test_the_occurrences_counter_has_no_created_sample(cached: Running) -> None:
    text = cached.scrape(headers={"Accept": "application/openmetrics-text"}).response.text
    assert "# TYPE polarity_integration_error_occurrences counter" in text
    assert "polarity_integration_error_occurrences_created" not in text
    assert re.search(r"^polarity_integration_error_occurrences_total\{", text, re.MULTILINE)


def test_counters_and_only_counters_end_in_total() -> None:
    for family in metrics.CATALOGUE:
        assert family.name.endswith("_total") == (family.kind == "counter"), family.name


def test_describe_lists_the_catalogue_without_samples() -> None:
    described = metrics.describe()
    assert [f.name for f in described] == [f.base for f in metrics.CATALOGUE]
    assert not any(f.samples for f in described)


def test_the_readme_metrics_table_is_generated_from_the_catalogue() -> None:
    match = re.search(r"<!-- metrics-table:start -->\n(.*?)<!-- metrics-table:end -->", README,
                      re.DOTALL)
    assert match, "the README lost its metrics-table markers"
    assert match.group(1) == metrics.markdown_table(), (
        "README metrics table is stale: paste `python -m polarity_exporter.metrics` between "
        "the markers")


# --- a catalogue entry is all a per-integration metric needs --------------------------------------

def _build_with(extra: list[metrics.Family], monkeypatch: pytest.MonkeyPatch) -> str:
    """The text exposition of a scrape of two listed integrations, with `extra` catalogued."""
    from polarity_exporter.collector import ScrapeResult, build_families
    from polarity_exporter.config import CollectorConfig
    from polarity_exporter.exposition import encode_text
    from polarity_exporter.models import Integration

    monkeypatch.setattr(metrics, "CATALOGUE", (*metrics.CATALOGUE, *extra))
    result = ScrapeResult(authenticated=True, integrations={
        i: Integration(i, f"name {i}", "A", version, "running", None)
        for i, version in (("a", "1.2"), ("b", "beta"))})
    return encode_text(build_families(result, CollectorConfig())).decode()


def test_a_new_per_integration_counter_needs_only_its_catalogue_entry(
        monkeypatch: pytest.MonkeyPatch) -> None:
    restarts = metrics.Family(
        "polarity_integration_test_restarts_total", "counter", "Restarts.", ("integration_id",),
        "integration", per_integration=lambda i: ({}, 3.0))
    text = _build_with([restarts], monkeypatch)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = families["polarity_integration_test_restarts"].samples
    assert {(s.name, s.labels["integration_id"], s.value) for s in samples} == {
        ("polarity_integration_test_restarts_total", "a", 3.0),
        ("polarity_integration_test_restarts_total", "b", 3.0)}


def test_a_reader_failing_on_one_record_costs_that_sample_only(
        monkeypatch: pytest.MonkeyPatch) -> None:
    major = metrics.Family(
        "polarity_integration_test_major", "gauge", "Major version.", ("integration_id",),
        "integration", per_integration=lambda i: ({}, float(i.version.split(".")[0])))
    samples = parse(_build_with([major], monkeypatch))
    assert samples["polarity_integration_test_major"] == {frozenset({("integration_id", "a")}): 1}
    assert samples["polarity_scrape_unreadable_fields"][frozenset(
        {("collector", "integrations"), ("field", "polarity_integration_test_major")})] == 1
    assert len(samples["polarity_integration_info"]) == 2


def test_a_reader_cannot_replace_the_integration_id(monkeypatch: pytest.MonkeyPatch) -> None:
    sneaky = metrics.Family(
        "polarity_integration_test_sneaky", "gauge", "Sneaky.", ("integration_id",),
        "integration", per_integration=lambda i: ({"integration_id": "x"}, 1.0))
    samples = parse(_build_with([sneaky], monkeypatch))
    assert "polarity_integration_test_sneaky" not in samples

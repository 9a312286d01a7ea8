"""Every exported metric, value by value, against the simulator's own dataset."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import PASSWORD_ENV, SIM_PASSWORD, SIM_USER, ExporterProcess
from reference import Samples, by_label, clean, expected_errors, labels, scrape

from polarity_exporter.simulator import Simulator, SimulatorConfig


@pytest.fixture(scope="module")
def samples(module_exporter: ExporterProcess) -> Samples:
    """One scrape of one exporter serves every test that reads the same dataset."""
    return scrape(f"{module_exporter.url}/metrics")


def attrs(item: dict[str, Any]) -> dict[str, Any]:
    return item["attributes"]


def test_up_is_one_when_polarity_answers(samples: Samples) -> None:
    assert samples["polarity_up"][labels()] == 1


def test_both_collectors_succeed(samples: Samples) -> None:
    assert by_label(samples, "polarity_scrape_collector_success", "collector") == {
        "integrations": 1, "errors": 1}


def test_scrape_duration_is_measured(samples: Samples) -> None:
    assert 0 < samples["polarity_scrape_duration_seconds"][labels()] < 10


def test_info_carries_name_acronym_and_version(module_simulator: Simulator,
                                               samples: Samples) -> None:
    expected = {
        labels(integration_id=item["id"], name=clean(attrs(item).get("name", "")),
               acronym=clean(attrs(item).get("acronym", "")),
               version=clean(attrs(item).get("version") or "")): 1.0
        for item in module_simulator.dataset.integrations
    }
    assert samples["polarity_integration_info"] == expected


def test_an_integration_without_version_gets_an_empty_label(module_simulator: Simulator,
                                                            samples: Samples) -> None:
    missing = [i["id"] for i in module_simulator.dataset.integrations if "version" not in attrs(i)]
    assert missing, "the dataset should have integrations without a version"
    exported = {dict(k)["integration_id"]: dict(k)["version"]
                for k in samples["polarity_integration_info"]}
    assert all(exported[i] == "" for i in missing)


def test_status_is_the_raw_string(module_simulator: Simulator, samples: Samples) -> None:
    expected = {labels(integration_id=i["id"], status=str(attrs(i)["status"])): 1.0
                for i in module_simulator.dataset.integrations}
    assert samples["polarity_integration_status"] == expected


def test_running_flag_follows_status(module_simulator: Simulator, samples: Samples) -> None:
    expected = {i["id"]: float(attrs(i)["status"] == "running")
                for i in module_simulator.dataset.integrations}
    assert by_label(samples, "polarity_integration_running", "integration_id") == expected
    assert 0 < sum(expected.values()) < len(expected), "dataset should mix statuses"


def test_error_record_counts_include_zeros_and_orphans(module_simulator: Simulator,
                                                       samples: Samples) -> None:
    records = expected_errors(module_simulator.dataset.errors)["records"]
    expected = {i: float(records.get(i, 0)) for i in module_simulator.dataset.integration_ids}
    expected.update({i: float(records[i]) for i in module_simulator.dataset.orphan_integration_ids})
    assert by_label(samples, "polarity_integration_errors", "integration_id") == expected
    assert 0.0 in expected.values()


def test_orphan_errors_are_reported_under_their_id(module_simulator: Simulator,
                                                   samples: Samples) -> None:
    orphans = module_simulator.dataset.orphan_integration_ids
    assert orphans, "the dataset should have errors of unlisted integrations"
    exported = {dict(k)["integration_id"]
                for k in samples["polarity_integration_error_occurrences_total"]}
    assert orphans <= exported


def test_occurrences_sum_error_count_per_code(module_simulator: Simulator,
                                              samples: Samples) -> None:
    codes = expected_errors(module_simulator.dataset.errors)["codes"]
    expected = {labels(integration_id=i, code=c): v[0]
                for i, per_code in codes.items() for c, v in per_code.items()}
    assert samples["polarity_integration_error_occurrences_total"] == expected


def test_last_occurrence_is_the_newest_occurred_on(module_simulator: Simulator,
                                                   samples: Samples) -> None:
    codes = expected_errors(module_simulator.dataset.errors)["codes"]
    expected = {labels(integration_id=i, code=c): v[1]
                for i, per_code in codes.items() for c, v in per_code.items()}
    exported = samples["polarity_integration_error_last_occurrence_timestamp_seconds"]
    assert exported.keys() == expected.keys()
    for key, value in expected.items():
        assert exported[key] == pytest.approx(value, abs=1e-3)


def test_codes_beyond_the_cap_fold_into_other(module_simulator: Simulator,
                                              samples: Samples) -> None:
    per_integration: dict[str, set[str]] = {}
    for key in samples["polarity_integration_error_occurrences_total"]:
        per_integration.setdefault(dict(key)["integration_id"], set()).add(dict(key)["code"])
    assert max(len(codes) for codes in per_integration.values()) <= 20
    assert any("other" in codes for codes in per_integration.values()), \
        "the dataset should have an integration with more than 20 codes"


def test_affected_users_are_distinct_ids(module_simulator: Simulator, samples: Samples) -> None:
    users = expected_errors(module_simulator.dataset.errors)["users"]
    exported = by_label(samples, "polarity_integration_error_affected_users", "integration_id")
    for integration_id in module_simulator.dataset.integration_ids:
        assert exported[integration_id] == users.get(integration_id, 0)
    assert any(v > 0 for v in exported.values())


def test_build_info_names_the_version(samples: Samples) -> None:
    from polarity_exporter import __version__

    assert samples["polarity_exporter_build_info"] == {labels(version=__version__): 1.0}


def test_no_sample_carries_a_timestamp(module_exporter: ExporterProcess) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    samples = [s for f in text_string_to_metric_families(module_exporter.metrics().text)
               for s in f.samples]
    assert samples
    assert [s for s in samples if s.timestamp is not None] == []


def test_listing_pages_through_small_pages(simulator: Simulator, start_exporter: Any) -> None:
    exp = start_exporter(f"--polarity.url={simulator.url}", "--polarity.page-size=4",
                         env=PASSWORD_ENV)
    samples = scrape(f"{exp.url}/metrics")
    assert len(samples["polarity_integration_info"]) == len(simulator.dataset.integrations)
    pages = -(-len(simulator.dataset.integrations) // 4)
    assert simulator.counts[("GET", "/api/integrations")] == pages
    assert samples["polarity_scrape_listing_complete"][labels()] == 1


def test_errors_forbidden_falls_back_to_relationships(start_exporter: Any) -> None:
    config = SimulatorConfig(seed=3, integrations=12, errors=40, errors_forbidden=True,
                             users={SIM_USER: SIM_PASSWORD})
    with Simulator(config) as sim:
        exp = start_exporter(f"--polarity.url={sim.url}", env=PASSWORD_ENV)
        samples = scrape(f"{exp.url}/metrics")
        log = exp.log()
    assert samples["polarity_up"][labels()] == 1
    assert by_label(samples, "polarity_scrape_collector_success", "collector") == {
        "integrations": 1, "errors": 0}
    expected = {i["id"]: float(len(i["relationships"]["integration-errors"]["data"]))
                for i in sim.dataset.integrations}
    assert by_label(samples, "polarity_integration_errors", "integration_id") == expected
    assert "polarity_integration_error_occurrences_total" not in samples
    assert "polarity_integration_error_affected_users" not in samples
    assert "HTTP 403" in log


def test_api_key_authenticates_as_bearer(start_exporter: Any, tmp_path: Any) -> None:
    import time

    config = SimulatorConfig(seed=5, integrations=6, errors=10, users={},
                             api_keys={"k-123-secret": time.time() + 3600})
    key_file = tmp_path / "key"
    key_file.write_text("k-123-secret\n")
    with Simulator(config) as sim:
        exp = start_exporter(f"--polarity.url={sim.url}", f"--polarity.api-key-file={key_file}")
        samples = scrape(f"{exp.url}/metrics")
        assert sim.counts[("POST", "/api/users/login")] == 0
    assert samples["polarity_up"][labels()] == 1
    assert len(samples["polarity_integration_info"]) == 6


def test_code_cap_is_configurable_and_sums_the_rest(simulator: Simulator,
                                                    start_exporter: Any) -> None:
    exp = start_exporter(f"--polarity.url={simulator.url}", "--collector.max-codes=3",
                         env=PASSWORD_ENV)
    samples = scrape(f"{exp.url}/metrics")
    codes = expected_errors(simulator.dataset.errors, max_codes=3)["codes"]
    expected = {labels(integration_id=i, code=c): v[0]
                for i, per_code in codes.items() for c, v in per_code.items()}
    assert samples["polarity_integration_error_occurrences_total"] == expected
    assert samples["polarity_scrape_error_codes_folded"][labels()] > 0


def test_label_values_are_cut_to_the_configured_length(simulator: Simulator,
                                                       start_exporter: Any) -> None:
    exp = start_exporter(f"--polarity.url={simulator.url}", "--collector.max-label-length=12",
                         env=PASSWORD_ENV)
    samples = scrape(f"{exp.url}/metrics")
    values = [v for name, series in samples.items() if name.startswith("polarity_integration")
              for key in series for _, v in key]
    assert values and max(len(v) for v in values) == 12
    assert any(v.endswith("\u2026") for v in values)

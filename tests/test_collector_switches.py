"""Collector switches: `--no-collector.errors` and a target's `collectors:` (issue 21). With the
errors part off, no errors request is made, and the metrics that need it are absent, not zero.
(The dashboards and alerts with such a target: tests/test_fleet_e2e.py, on a real Prometheus.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import CREDS, PASSWORD_ENV, SIM_PASSWORD, SIM_USER
from inproc import running_exporter

from polarity_exporter.config import CollectorConfig
from polarity_exporter.simulator import Simulator
from polarity_exporter.targets import parse_targets

ERRORS_REQUEST = ("GET", "/api/integrations/errors")
# The families that only the errors endpoint gives.
NEED_ERRORS = ("polarity_integration_error_occurrences_total",
               "polarity_integration_error_last_occurrence_timestamp_seconds",
               "polarity_integration_error_affected_users", "polarity_scrape_error_codes_folded",
               "polarity_scrape_orphan_ids_folded")


def test_no_collector_errors_makes_no_errors_request_and_leaves_its_metrics_out(
        sim: Simulator) -> None:
    with running_exporter(sim.url, CREDS, collector=CollectorConfig(errors=False)) as running:
        scrape = running.scrape()
    assert scrape.up == 1.0
    assert sim.counts[ERRORS_REQUEST] == 0
    assert scrape.success("integrations") == 1.0 and scrape.success("errors") is None
    for name in NEED_ERRORS:
        assert not scrape.series(name), name
    # Still read from the listing's error references, as when the endpoint answers 403.
    listed = {item["id"]: len(item["relationships"]["integration-errors"]["data"])
              for item in sim.dataset.integrations}
    assert {dict(k)["integration_id"]: v
            for k, v in scrape.series("polarity_integration_errors").items()} == \
        {i: float(n) for i, n in listed.items()}


def test_with_the_errors_collector_on_the_same_families_are_there(sim: Simulator) -> None:
    with running_exporter(sim.url, CREDS) as running:
        scrape = running.scrape()
    assert sim.counts[ERRORS_REQUEST] == 1 and scrape.success("errors") == 1.0
    assert all(name in scrape.samples for name in NEED_ERRORS)


def test_a_targets_collectors_override_the_flag(sim: Simulator, tmp_path: Path) -> None:
    targets = tmp_path / "targets.yml"
    base = {"url": sim.url, "username": SIM_USER, "password": SIM_PASSWORD}
    targets.write_text(json.dumps({"targets": {
        "status": {**base, "collectors": ["integrations"]},
        "both": {**base, "collectors": ["integrations", "errors"]},
        "default": base}}))
    with running_exporter(None, None, targets_file=str(targets),
                          collector=CollectorConfig(errors=False)) as running:
        status, both, default = (running.probe(name) for name in ("status", "both", "default"))
    assert status.success("errors") is None and default.success("errors") is None
    assert both.success("errors") == 1.0
    assert sim.counts[ERRORS_REQUEST] == 1  # only "both" asked


@pytest.mark.parametrize("given, errors", [(None, None), (["integrations"], False),
                                           (["errors", "integrations"], True)])
def test_collectors_key_is_read_as_the_errors_switch(given: Any, errors: bool | None) -> None:
    body: dict[str, Any] = {"url": "https://p.example", "api_key": "k"}
    if given is not None:
        body["collectors"] = given
    assert parse_targets({"targets": {"t": body}}, "t.yml")["t"].errors is errors


def test_the_flag_switches_the_errors_collector_off(start_exporter: Any,
                                                    simulator: Simulator) -> None:
    exp = start_exporter(f"--polarity.url={simulator.url}", "--no-collector.errors",
                         env=PASSWORD_ENV)
    text = exp.metrics().text
    assert "polarity_up 1.0" in text and 'collector="errors"' not in text
    assert simulator.counts[ERRORS_REQUEST] == 0

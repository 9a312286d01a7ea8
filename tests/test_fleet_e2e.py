"""End to end, several servers: three simulators -> one exporter with --config.file -> a real
Prometheus scraping /probe with the README's scrape config and relabelling, verbatim but for the
exporter's address and the intervals. The shipped dashboards' panels and the alert rules must
work per target unchanged: `instance` is the target name, and each target's panels match that
simulator's own dataset."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
import yaml
from conftest import (
    PASSWORD_ENV,
    REPO,
    SIM_PASSWORD,
    SIM_USER,
    clean_env,
    free_port,
    require_tool,
    stop_process,
    wait_until_ready,
)
from reference import parse
from test_prometheus_e2e import (
    CHECKS,
    RATE_INTERVAL_S,
    SCRAPE_INTERVAL_S,
    SCRAPE_TIMEOUT_S,
    TIMEOUT_OFFSET_S,
    Ctx,
    Stack,
    _fast_rules_copy,
    _wait_for,
    all_variables,
    expected_for,
    grafana_regex,
    interpolate,
    load_dashboard,
    run_target,
    targets,
)

from polarity_exporter.simulator import Simulator, SimulatorConfig

NAMES = {"prod": 11, "lab": 12, "emea": 13}  # target name -> simulator seed
STATUS_ONLY = "emea"  # configured with `collectors: [integrations]`: no errors request


def docs_scrape_config(exporter_address: str) -> dict[str, Any]:
    """The docs' `prometheus.yml` for several servers, pointed at this exporter."""
    text = (REPO / "docs" / "several-servers.md").read_text(encoding="utf-8")
    section = text.split("# Several Polarity servers", 1)[1]
    block = re.search(r"```yaml\n(# prometheus\.yml\n.*?)```", section, re.DOTALL)
    assert block, "the docs lost their prometheus.yml for several servers"
    job: dict[str, Any] = yaml.safe_load(block.group(1))["scrape_configs"][0]
    address_rules = [r for r in job["relabel_configs"] if r.get("target_label") == "__address__"]
    assert len(address_rules) == 1
    address_rules[0]["replacement"] = exporter_address
    job["static_configs"] = [{"targets": list(NAMES)}]
    job["scrape_interval"] = f"{SCRAPE_INTERVAL_S}s"
    job["scrape_timeout"] = f"{SCRAPE_TIMEOUT_S}s"
    return job


@dataclass
class Fleet:
    prom_url: str
    sims: dict[str, Simulator]
    job: str
    exporter_url: str

    def view(self, name: str) -> Stack:
        """The single-server helpers' view of one target: its instance is its name."""
        return Stack(sim=self.sims[name], prom_url=self.prom_url, exporter_address=name)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    prometheus = require_tool("prometheus")
    tmp = tmp_path_factory.mktemp("fleet")
    sims = {name: Simulator(SimulatorConfig(seed=seed, integrations=6 + seed % 5, errors=30,
                                            users={SIM_USER: SIM_PASSWORD}))
            for name, seed in NAMES.items()}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for sim in sims.values():
            sim.start()
        (tmp / "targets.yml").write_text(yaml.safe_dump({"targets": {
            name: {"url": sim.url, "username": SIM_USER, "password": SIM_PASSWORD,
                   **({"collectors": ["integrations"]} if name == STATUS_ONLY else {})}
            for name, sim in sims.items()}}))
        exporter_address = f"127.0.0.1:{free_port()}"
        exporter = subprocess.Popen(
            [sys.executable, "-m", "polarity_exporter", f"--config.file={tmp / 'targets.yml'}",
             f"--web.listen-address={exporter_address}",
             f"--web.timeout-offset={TIMEOUT_OFFSET_S}"],
            stdout=(tmp / "exporter.log").open("wb"), stderr=subprocess.STDOUT,
            env=clean_env(PASSWORD_ENV))
        procs.append(exporter)
        wait_until_ready(f"http://{exporter_address}/-/ready", exporter)  # type: ignore[arg-type]
        _fast_rules_copy(tmp / "rules.yml")
        job = docs_scrape_config(exporter_address)
        (tmp / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"evaluation_interval": "1s"}, "rule_files": [str(tmp / "rules.yml")],
            "scrape_configs": [job]}))
        prom_url = f"http://127.0.0.1:{free_port()}"
        prom = subprocess.Popen(
            [prometheus, f"--config.file={tmp / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp / 'data'}",
             f"--web.listen-address={prom_url.removeprefix('http://')}", "--log.level=warn"],
            stdout=(tmp / "prometheus.log").open("wb"), stderr=subprocess.STDOUT)
        procs.append(prom)
        wait_until_ready(f"{prom_url}/-/ready", prom, timeout=30)  # type: ignore[arg-type]
        result = Fleet(prom_url, sims, job["job_name"], f"http://{exporter_address}")
        view = result.view("prod")

        def every_target_has_enough_samples() -> bool:
            up = view.instant(f"count_over_time(polarity_up[1m]) >= "
                              f"{RATE_INTERVAL_S // SCRAPE_INTERVAL_S + 1} and polarity_up == 1")
            return {series["metric"]["instance"] for series in up} == set(NAMES)

        _wait_for("samples of every target", every_target_has_enough_samples)
        yield result
    finally:
        for proc in reversed(procs):
            stop_process(proc)
        for sim in sims.values():
            sim.stop()


def test_the_instance_variable_lists_the_target_names(fleet: Fleet) -> None:
    query = all_variables(load_dashboard("polarity-overview.json"))["instance"]["query"]
    match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
    assert match
    values = fleet.view("prod").api(f"label/{match.group(2)}/values",
                                    **{"match[]": interpolate(match.group(1), {"job": ".+"})})
    assert sorted(values) == sorted(NAMES)


@pytest.mark.parametrize("name", list(NAMES))
def test_overview_panels_match_each_targets_dataset(fleet: Fleet, name: str) -> None:
    board = load_dashboard("polarity-overview.json")
    view = fleet.view(name)
    variables = {"job": grafana_regex(fleet.job), "instance": grafana_regex(name),
                 "integration": ".+"}
    ctx = Ctx(stack=view, exp=expected_for(view.sim, errors_read=name != STATUS_ONLY))
    for title, panel, target in targets(board):
        CHECKS[(board["uid"], title, target["refId"])](
            run_target(view, panel, target, variables), ctx)


@pytest.mark.parametrize("name", list(NAMES))
def test_integration_panels_match_each_targets_dataset(fleet: Fleet, name: str) -> None:
    board = load_dashboard("polarity-integration.json")
    view = fleet.view(name)
    expected = expected_for(view.sim, errors_read=name != STATUS_ONLY)
    for integration_id in expected.names:
        variables = {"job": grafana_regex(fleet.job), "instance": grafana_regex(name),
                     "integration": grafana_regex(integration_id)}
        ctx = Ctx(stack=view, exp=expected, integration=integration_id)
        for title, panel, target in targets(board):
            CHECKS[(board["uid"], title, target["refId"])](
                run_target(view, panel, target, variables), ctx)


def test_the_not_running_alert_fires_per_target(fleet: Fleet) -> None:
    wanted = {(name, integration_id) for name in NAMES
              for integration_id in expected_for(fleet.sims[name]).not_running}
    assert {name for name, _ in wanted} == set(NAMES), "each dataset has a stopped integration"
    view = fleet.view("prod")

    def active() -> set[tuple[str, str]]:
        return {(a["labels"]["instance"], a["labels"]["integration_id"])
                for a in view.api("alerts")["alerts"]
                if a["labels"]["alertname"] == "PolarityIntegrationNotRunning"
                and a["state"] in ("pending", "firing")}

    _wait_for("PolarityIntegrationNotRunning alerts of every target", lambda: active() == wanted)


def test_a_status_only_target_makes_no_errors_request_and_raises_no_errors_alert(
        fleet: Fleet) -> None:
    assert fleet.sims[STATUS_ONLY].counts[("GET", "/api/integrations/errors")] == 0
    assert all(sim.counts[("GET", "/api/integrations/errors")] > 0
               for name, sim in fleet.sims.items() if name != STATUS_ONLY)
    view = fleet.view("prod")
    errors_part = view.instant('polarity_scrape_collector_success{collector="errors"}')
    assert {s["metric"]["instance"] for s in errors_part} == set(NAMES) - {STATUS_ONLY}
    # Every alert rule's expression that reads an error metric sees nothing of it: the error
    # metrics are absent for it, not zero.
    rules = [rule for group in view.api("rules")["groups"] for rule in group["rules"]
             if rule.get("type") == "alerting" and "error" in rule["query"]]
    assert rules
    for rule in rules:
        fired = view.instant(rule["query"])
        assert STATUS_ONLY not in {s["metric"].get("instance") for s in fired}, rule["name"]


def test_the_exporters_metrics_count_the_probes_of_every_target(fleet: Fleet) -> None:
    samples = parse(requests.get(f"{fleet.exporter_url}/metrics", timeout=10).text)
    probes = {dict(key)["target"]: value
              for key, value in samples["polarity_exporter_probes_total"].items()}
    assert set(probes) == set(NAMES)
    assert min(probes.values()) >= RATE_INTERVAL_S // SCRAPE_INTERVAL_S + 1


def test_the_readme_config_is_used_verbatim_but_for_address_and_intervals() -> None:
    job = docs_scrape_config("exporter:1")
    assert job["metrics_path"] == "/probe"
    rules = job["relabel_configs"]
    assert rules[0] == {"source_labels": ["__address__"], "target_label": "__param_target"}
    assert rules[1] == {"source_labels": ["__param_target"], "target_label": "instance"}


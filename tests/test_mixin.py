"""The monitoring mixin (mixin/, issue 22 item 3), evaluated with PyPI's jsonnet: its
grafanaDashboards, prometheusAlerts and prometheusRules equal the shipped files with the default
`_config`, follow a changed `_config`, and the README's kube-prometheus snippet evaluates."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import _jsonnet
import pytest
import yaml
from conftest import REPO, require_tool
from test_alert_rules import mixin_lint

MIXIN = REPO / "mixin"
ALERTS = REPO / "prometheus" / "polarity-alerts.yml"
SLO = REPO / "prometheus" / "polarity-slo.yml"
DASHBOARDS = REPO / "grafana" / "dashboards"


def evaluate(snippet: str, jpath: list[Path] | None = None) -> Any:
    return json.loads(_jsonnet.evaluate_snippet("snippet", snippet,
                                                jpathdir=[str(p) for p in jpath or [MIXIN]]))


def mixin(config: str = "") -> dict[str, Any]:
    extra = f" + {{ _config+:: {{ {config} }} }}" if config else ""
    return dict(evaluate(f"""
        local m = (import 'mixin.libsonnet'){extra};
        {{alerts: m.prometheusAlerts, rules: m.prometheusRules,
          dashboards: m.grafanaDashboards}}"""))


def shipped(kind: str) -> list[dict[str, Any]]:
    """The shipped groups holding only rules of `kind` ("alert" or "record")."""
    groups = []
    for path in (ALERTS, SLO):
        for group in yaml.safe_load(path.read_text())["groups"]:
            rules = [rule for rule in group["rules"] if kind in rule]
            if rules:
                groups.append({**group, "rules": rules})
    return groups


def test_the_mixins_copies_equal_the_shipped_files() -> None:
    pairs = [(ALERTS, MIXIN / "rules" / ALERTS.name), (SLO, MIXIN / "rules" / SLO.name)]
    pairs += [(path, MIXIN / "dashboards" / path.name) for path in DASHBOARDS.glob("*.json")]
    for source, copy in pairs:
        assert copy.exists() and copy.read_bytes() == source.read_bytes(), \
            f"{copy} differs: run helm/sync-chart-files.sh"


def test_with_the_default_config_the_mixin_is_the_shipped_rules_and_dashboards() -> None:
    out = mixin()
    assert out["alerts"]["groups"] == shipped("alert")
    assert out["rules"]["groups"] == shipped("record")
    assert out["dashboards"] == {path.name: json.loads(path.read_text())
                                 for path in DASHBOARDS.glob("*.json")}


CUSTOM = ("exporterSelector: 'job=\"polarity\"', apiAvailabilityObjective: 0.999, "
          "integrationAvailabilityObjective: 0.95, "
          "runbookURLPrefix: 'https://wiki.example.com/runbooks/polarity#'")


def test_the_config_sets_the_selector_objectives_and_runbook_links() -> None:
    out = mixin(CUSTOM)
    alerts = {rule["alert"]: rule for group in out["alerts"]["groups"]
              for rule in group["rules"]}
    assert alerts["PolarityExporterDown"]["expr"] == 'up{job="polarity"} == 0'
    api = alerts["PolarityAPIErrorBudgetBurning"]
    assert "(14.4 * (1 - 0.999))" in api["expr"] and "0.995" not in api["expr"]
    assert "99.9% objective" in api["annotations"]["description"]
    integration = alerts["PolarityIntegrationErrorBudgetBurningSlowly"]
    assert "(3 * (1 - 0.95))" in integration["expr"] and "(1 - 0.99)" not in integration["expr"]
    assert "95% objective" in integration["annotations"]["description"]
    for name, rule in alerts.items():
        assert rule["annotations"]["runbook_url"] == \
            "https://wiki.example.com/runbooks/polarity#" + name.lower()
        assert mixin_lint(rule) == []


def test_a_configured_mixin_is_valid_for_promtool(tmp_path: Path) -> None:
    out = mixin(CUSTOM)
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": out["rules"]["groups"] +
                                    out["alerts"]["groups"]}))
    proc = subprocess.run([require_tool("promtool"), "check", "rules", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def docs_snippet() -> str:
    text = (REPO / "docs" / "dashboards-and-alerts.md").read_text()
    block = re.search(r"```jsonnet\n(// kube-prometheus.*?)```", text, re.DOTALL)
    assert block, "the docs lost their kube-prometheus jsonnet example"
    return block.group(1)


def test_the_readmes_kube_prometheus_example_evaluates(tmp_path: Path) -> None:
    # As jsonnet-bundler vendors it: vendor/github.com/<owner>/<repo>/mixin.
    vendored = tmp_path / "vendor" / "github.com" / "polarity-exporter" / "polarity-exporter"
    vendored.mkdir(parents=True)
    (vendored / "mixin").symlink_to(MIXIN)
    out = evaluate(docs_snippet(), [tmp_path / "vendor"])
    rule = out["polarity-exporter-rules"]
    assert rule["kind"] == "PrometheusRule"
    names = [r.get("alert") or r.get("record") for g in rule["spec"]["groups"]
             for r in g["rules"]]
    assert "PolarityAPIDown" in names and "job_instance:polarity_up_errors:ratio_avg1h" in names
    assert set(out["grafana-dashboards"]) == {p.name for p in DASHBOARDS.glob("*.json")}


@pytest.mark.parametrize("field", ["grafanaDashboards", "prometheusAlerts", "prometheusRules"])
def test_the_mixin_has_the_standard_fields_hidden(field: str) -> None:
    # Hidden (::) as every mixin's are, so that rendering the object whole shows nothing.
    assert evaluate(f"std.objectHas((import 'mixin.libsonnet'), '{field}')") is False
    assert evaluate(f"std.objectHasAll((import 'mixin.libsonnet'), '{field}')") is True

"""The shipped Prometheus rules: promtool-clean, unit-tested, documented, and linked to the
runbook. Their behaviour against a live Prometheus is in test_prometheus_e2e.py."""

from __future__ import annotations

import re
import subprocess
from typing import Any

import pytest
import yaml
from conftest import REPO, require_tool

RULES = REPO / "prometheus" / "polarity-alerts.yml"
RULE_TESTS = REPO / "prometheus" / "polarity-alerts.test.yml"
RUNBOOK = REPO / "docs" / "runbook.md"
RUNBOOK_URL = "https://github.com/polarity-exporter/polarity-exporter/blob/main/docs/runbook.md#"
SEVERITIES = {"critical", "warning", "info"}


def alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"]]


def alert_ids() -> list[str]:
    return [rule["alert"] for rule in alerts()]


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def runbook_sections() -> dict[str, str]:
    """Anchor -> section text, for every `##`/`###` heading of the runbook."""
    text = RUNBOOK.read_text(encoding="utf-8")
    parts = re.split(r"^#{2,3} (.+)$", text, flags=re.M)
    return {github_anchor(parts[i]): parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=60, cwd=REPO)


def test_promtool_check_rules_is_clean() -> None:
    proc = run(require_tool("promtool"), "check", "rules", str(RULES))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in proc.stdout
    assert "WARNING" not in proc.stdout + proc.stderr


def test_promtool_unit_tests_pass() -> None:
    proc = run(require_tool("promtool"), "test", "rules", str(RULE_TESTS))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_the_required_alerts_exist() -> None:
    assert set(alert_ids()) == {
        "PolarityExporterDown", "PolarityAPIDown", "PolarityErrorsEndpointUnreadable",
        "PolarityIntegrationNotRunning", "PolarityIntegrationErrorsIncreasing",
        "PolarityIntegrationErrorsAffectingUsers", "PolarityScrapeNearTimeout",
    }


@pytest.mark.parametrize("name", alert_ids())
def test_unit_tests_cover_firing_and_silence(name: str) -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))["tests"]
    cases = [case for test in tests for case in test.get("alert_rule_test", [])
             if case["alertname"] == name]
    firing = [case for case in cases if case.get("exp_alerts")]
    assert firing, f"{name} never expected to fire"
    assert any(not case.get("exp_alerts") for case in cases), f"{name} never expected silent"
    for case in firing:
        for alert in case["exp_alerts"]:
            # Full labels and annotations, so a changed template fails the unit test.
            assert "severity" in alert["exp_labels"]
            assert set(alert["exp_annotations"]) == {"summary", "description", "runbook_url"}


@pytest.mark.parametrize("rule", alerts(), ids=alert_ids())
def test_alert_has_severity_summary_description_and_runbook(rule: dict[str, Any]) -> None:
    assert rule["labels"]["severity"] in SEVERITIES
    assert set(rule["annotations"]) == {"summary", "description", "runbook_url"}
    assert rule["annotations"]["summary"].strip() and rule["annotations"]["description"].strip()
    assert rule["annotations"]["runbook_url"] == RUNBOOK_URL + rule["alert"].lower()
    assert re.fullmatch(r"\d+m", rule["for"]), "a deliberate for: duration"


@pytest.mark.parametrize("rule", alerts(), ids=alert_ids())
def test_runbook_has_the_linked_section_with_threshold_and_for(rule: dict[str, Any]) -> None:
    anchor = rule["annotations"]["runbook_url"].split("#", 1)[1]
    sections = runbook_sections()
    assert anchor in sections, f"docs/runbook.md has no heading for #{anchor}"
    assert f"`for: {rule['for']}`" in sections[anchor], "the runbook explains the for: duration"
    assert rule["labels"]["severity"] in sections[anchor]


@pytest.mark.parametrize("rule", [r for r in alerts() if "integration_id" in r["expr"]
                                  or "polarity_integration_" in r["expr"]],
                         ids=lambda r: r["alert"])
def test_integration_alerts_name_the_integration(rule: dict[str, Any]) -> None:
    assert "polarity_integration_info" in rule["expr"]
    assert "group_left(name, acronym" in rule["expr"]
    assert "{{ $labels.name }}" in rule["annotations"]["description"]


def test_the_docs_alert_table_lists_every_alert_with_severity() -> None:
    page = (REPO / "docs" / "dashboards-and-alerts.md").read_text(encoding="utf-8")
    section = page.split("## Alert rules", 1)[1].split("\n## ", 1)[0]
    for rule in alerts():
        row = next((line for line in section.splitlines()
                    if line.startswith(f"| `{rule['alert']}`")), None)
        assert row is not None, f"the docs' table lacks {rule['alert']}"
        assert rule["labels"]["severity"] in row and rule["for"] in row


# mixtool's lint of alerts (pkg/mixer/lint.go, lintPrometheusAlertsGuidelines), ported: the
# monitoring-mixin guidelines for alert names, labels and annotations. mixtool is Go and not
# installable here; its regular expressions are copied as they are.
CAMEL_CASE = re.compile(r"^([A-Z]+[a-z0-9]+)+$")
GO_TEMPLATE = re.compile(r"\{\{.+}\}")
SENTENCE = re.compile(r"^[A-Z].+\.$")


def mixin_lint(rule: dict[str, Any]) -> list[str]:
    """mixtool's findings for one alerting rule (Go's regexp: `.` stops at a newline)."""
    name, annotations = rule["alert"], rule.get("annotations", {})
    found = []
    if not CAMEL_CASE.match(name):
        found.append("alert-name-camelcase")
    if rule.get("labels", {}).get("severity") not in ("warning", "critical", "info"):
        found.append("alert-severity-rule")
    if "description" not in annotations:
        found.append("alert-description-missing-rule")
    elif not GO_TEMPLATE.search(annotations["description"]):
        found.append("alert-description-templating")
    if "summary" not in annotations:
        found.append("alert-summary-missing-rule")
    else:
        if GO_TEMPLATE.search(annotations["summary"]):
            found.append("alert-summary-templating")
        if not SENTENCE.match(annotations["summary"]):
            found.append("alert-summary-style")
    return found


@pytest.mark.parametrize("rule", alerts(), ids=lambda r: r["alert"])
def test_alert_passes_the_monitoring_mixin_lint(rule: dict[str, Any]) -> None:
    assert mixin_lint(rule) == []


@pytest.mark.parametrize("broken, finding", [
    ({"alert": "polarity_down"}, "alert-name-camelcase"),
    ({"labels": {"severity": "page"}}, "alert-severity-rule"),
    ({"annotations": {"summary": "A sentence.", "description": "static"}},
     "alert-description-templating"),
    ({"annotations": {"summary": "Down on {{ $labels.instance }}.", "description": "{{ $value }}"}},
     "alert-summary-templating"),
    ({"annotations": {"summary": "no capital, no full stop", "description": "{{ $value }}"}},
     "alert-summary-style"),
    ({"annotations": {"description": "{{ $value }}"}}, "alert-summary-missing-rule"),
])
def test_the_ported_mixin_lint_finds_what_mixtool_finds(broken: dict[str, Any],
                                                       finding: str) -> None:
    good = {"alert": "PolarityAPIDown", "labels": {"severity": "critical"},
            "annotations": {"summary": "The API is down.", "description": "{{ $labels.job }}"}}
    assert mixin_lint(good) == []
    assert finding in mixin_lint({**good, **broken})

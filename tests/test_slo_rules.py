"""The SLO rules (prometheus/polarity-slo.yml, issue 22 item 4): promtool-clean, mixin-lint
clean, documented in the runbook, and each burn-rate alert shown to fire, and not to fire, by
promtool unit tests on synthetic series generated here."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO, require_tool
from test_alert_rules import RUNBOOK_URL, github_anchor, mixin_lint, runbook_sections

SLO = REPO / "prometheus" / "polarity-slo.yml"
API_OBJECTIVE, INTEGRATION_OBJECTIVE = 0.995, 0.99


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(SLO.read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"]]


def alerts() -> list[dict[str, Any]]:
    return [rule for rule in rules() if "alert" in rule]


def test_promtool_check_rules_is_clean() -> None:
    proc = subprocess.run([require_tool("promtool"), "check", "rules", str(SLO)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(rules())} rules found" in proc.stdout


@pytest.mark.parametrize("rule", alerts(), ids=lambda r: r["alert"])
def test_slo_alert_passes_the_monitoring_mixin_lint(rule: dict[str, Any]) -> None:
    assert mixin_lint(rule) == []


@pytest.mark.parametrize("rule", alerts(), ids=lambda r: r["alert"])
def test_slo_alert_links_its_runbook_section(rule: dict[str, Any]) -> None:
    anchor = github_anchor(rule["alert"])
    assert rule["annotations"]["runbook_url"] == RUNBOOK_URL + anchor
    section = runbook_sections()[anchor]
    assert f"`for: {rule['for']}`" in section and rule["labels"]["severity"] in section


def test_every_standard_window_is_recorded_for_both_objectives() -> None:
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    for window in ("5m", "30m", "1h", "2h", "6h", "1d", "3d"):
        assert f"job_instance:polarity_up_errors:ratio_avg{window}" in recorded
        assert f"polarity_integration:slo_unavailable:ratio_avg{window}" in recorded


def test_the_burn_rates_are_the_workbooks() -> None:
    text = SLO.read_text()
    for factor, objective in ((14.4, API_OBJECTIVE), (6, API_OBJECTIVE), (3, API_OBJECTIVE),
                              (1, API_OBJECTIVE), (14.4, INTEGRATION_OBJECTIVE),
                              (6, INTEGRATION_OBJECTIVE), (3, INTEGRATION_OBJECTIVE),
                              (1, INTEGRATION_OBJECTIVE)):
        assert f"({factor:g} * (1 - {objective:g}))" in text


# --- synthetic series --------------------------------------------------------------------------
#
# Rules are evaluated every STEP (5 minutes) over 26 hours: enough for every window but the 3-day
# one, which then averages what there is, and about 300 evaluations per test. Series have a
# sample a minute (increase() over 5 minutes needs several); an indicator holds its value for
# the whole step, so each step is exactly good or bad.

STEP = 5  # minutes
STEPS = 26 * 60 // STEP
EVAL_TIME = f"{(STEPS - 1) * STEP}m"


def pattern(bad_every: int | None, tail_bad: int = 0) -> list[bool]:
    """Per step, whether it is bad: one step in every `bad_every`, then `tail_bad` steps at the
    end."""
    steps = [bool(bad_every) and i % bad_every == bad_every - 1 for i in range(STEPS - tail_bad)]
    return steps + [True] * tail_bad


def per_minute(values: list[str]) -> str:
    return " ".join(value for value in values for _ in range(STEP))


# name -> (bad steps, the alerts expected firing at the end). Budgets: the API objective leaves
# 0.5% bad, the integration one 1%.
SCENARIOS = {
    "healthy": (pattern(None), set()),
    # One bad step in the whole day: under every threshold that needs a long window too.
    "within-budget": (pattern(250), set()),
    # A steady 2.5% bad (one step in 40): over 1x the budget over the 3-day and 6-hour windows,
    # so a ticket; far under 6x over 6h (3% for the API, 6% for integrations): never a page.
    "slow-burn": (pattern(40), {"ErrorBudgetBurningSlowly"}),
    # Healthy, then a full outage for the last hour: the page, and the ticket too (an hour of
    # the day bad is over 3x the budget over 1d and 2h).
    "outage": (pattern(None, tail_bad=60 // STEP),
               {"ErrorBudgetBurning", "ErrorBudgetBurningSlowly"}),
}
SEVERITY = {"ErrorBudgetBurning": "critical", "ErrorBudgetBurningSlowly": "warning"}


def promtool_test(tmp_path: Path, name: str, series: list[dict[str, str]],
                  expected: list[str]) -> None:
    test = {
        "rule_files": [str(SLO)],
        "evaluation_interval": f"{STEP}m",
        "tests": [{
            "name": name,
            "interval": "1m",
            "input_series": series,
            "promql_expr_test": [{
                "expr": 'ALERTS{alertstate="firing"}',
                "eval_time": EVAL_TIME,
                "exp_samples": [{"labels": labels, "value": 1} for labels in expected],
            }],
        }],
    }
    path = tmp_path / f"{name}.test.yml"
    path.write_text(yaml.safe_dump(test, width=10**9))
    proc = subprocess.run([require_tool("promtool"), "test", "rules", str(path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_api_burn_rate_alerts_fire_as_the_budget_says(tmp_path: Path, scenario: str) -> None:
    bad, firing = SCENARIOS[scenario]
    series = [{"series": 'polarity_up{job="polarity-exporter", instance="exp:10119"}',
               "values": per_minute(["0" if b else "1" for b in bad])}]
    expected = [f'ALERTS{{alertname="PolarityAPI{kind}", alertstate="firing", '
                f'job="polarity-exporter", instance="exp:10119", severity="{SEVERITY[kind]}"}}'
                for kind in sorted(firing)]
    promtool_test(tmp_path, f"api-{scenario}", series, expected)


def integration_series(bad: list[bool], how: str) -> list[dict[str, str]]:
    """An integration whose bad steps are either `stopped` (running 0) or `failing` (one new
    error occurrence in the step)."""
    labels = 'job="polarity-exporter", instance="exp:10119", integration_id="vt"'
    ones = per_minute(["1"] * STEPS)
    if how == "stopped":
        running, occurrences = per_minute(["0" if b else "1" for b in bad]), ones
    else:
        running, minutes, total = ones, [], 5
        for step_bad in bad:
            # The occurrence lands in the step's last minute: inside the 5-minute increase()
            # the step's evaluation sees, and outside the next step's.
            minutes += [str(total)] * (STEP - 1) + [str(total + step_bad)]
            total += step_bad
        occurrences = " ".join(minutes)
    return [
        {"series": f"polarity_integration_running{{{labels}}}", "values": running},
        {"series": f'polarity_integration_error_occurrences_total{{{labels}, code="ETIMEDOUT"}}',
         "values": occurrences},
        {"series": f'polarity_integration_info{{{labels}, name="VirusTotal", acronym="VT", '
                   'version="3.1"}', "values": ones},
    ]


@pytest.mark.parametrize("how", ["stopped", "failing"])
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_integration_burn_rate_alerts_fire_as_the_budget_says(tmp_path: Path, scenario: str,
                                                               how: str) -> None:
    bad, firing = SCENARIOS[scenario]
    expected = [f'ALERTS{{alertname="PolarityIntegration{kind}", alertstate="firing", '
                f'job="polarity-exporter", instance="exp:10119", integration_id="vt", '
                f'name="VirusTotal", acronym="VT", severity="{SEVERITY[kind]}"}}'
                for kind in sorted(firing)]
    promtool_test(tmp_path, f"integration-{how}-{scenario}", integration_series(bad, how),
                  expected)


def test_an_orphan_integration_is_alerted_under_its_id(tmp_path: Path) -> None:
    labels = 'job="polarity-exporter", instance="exp:10119", integration_id="ghost"'
    counts = " ".join(str(5 + i) for i in range(STEPS * STEP))  # a new error every minute
    series = [{"series": f'polarity_integration_error_occurrences_total{{{labels}, code="E"}}',
               "values": counts}]
    expected = [f'ALERTS{{alertname="PolarityIntegration{kind}", alertstate="firing", '
                f'job="polarity-exporter", instance="exp:10119", integration_id="ghost", '
                f'name="ghost", severity="{severity}"}}' for kind, severity in SEVERITY.items()]
    promtool_test(tmp_path, "orphan", series, expected)


# --- the Pyrra and Sloth examples --------------------------------------------------------------

PYRRA = REPO / "prometheus" / "slo" / "pyrra.yml"
SLOTH = REPO / "prometheus" / "slo" / "sloth.yml"


def objectives() -> dict[str, float]:
    """The objectives of polarity-slo.yml, read from its burn-rate thresholds."""
    import re
    text = SLO.read_text()
    found = {float(x) for x in re.findall(r"\(1 - (0\.\d+)\)", text)}
    assert found == {API_OBJECTIVE, INTEGRATION_OBJECTIVE}
    return {"api": API_OBJECTIVE * 100, "integration": INTEGRATION_OBJECTIVE * 100}


def promql_is_valid(tmp_path: Path, exprs: list[str]) -> None:
    rules = {"groups": [{"name": "check", "rules": [
        {"record": f"check:expr{i}", "expr": expr} for i, expr in enumerate(exprs)]}]}
    path = tmp_path / "exprs.yml"
    path.write_text(yaml.safe_dump(rules))
    proc = subprocess.run([require_tool("promtool"), "check", "rules", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_pyrra_objectives_match_the_shipped_rules(tmp_path: Path) -> None:
    docs = list(yaml.safe_load_all(PYRRA.read_text()))
    assert [d["kind"] for d in docs] == ["ServiceLevelObjective"] * 2
    assert all(d["apiVersion"] == "pyrra.dev/v1alpha1" and d["spec"]["window"] == "30d"
               for d in docs)
    targets = [float(d["spec"]["target"]) for d in docs]
    assert targets == [objectives()["api"], objectives()["integration"]]
    metrics = [d["spec"]["indicator"]["bool_gauge"]["metric"] for d in docs]
    assert metrics[0].startswith("polarity_up{")
    recorded = {rule.get("record") for rule in rules()}
    assert metrics[1].split("{")[0] in recorded  # the good-is-1 indicator polarity-slo records
    promql_is_valid(tmp_path, metrics)


def test_sloth_objectives_match_the_shipped_rules_and_its_queries_are_promql(
        tmp_path: Path) -> None:
    spec = yaml.safe_load(SLOTH.read_text())
    assert spec["version"] == "prometheus/v1"
    slos = {slo["name"]: slo for slo in spec["slos"]}
    assert slos["api-availability"]["objective"] == objectives()["api"]
    assert slos["integration-availability"]["objective"] == objectives()["integration"]
    exprs = [slo["sli"]["events"][kind].replace("{{.window}}", window)
             for slo in slos.values() for kind in ("error_query", "total_query")
             for window in ("5m", "30d")]
    promql_is_valid(tmp_path, exprs)
    for slo in slos.values():  # Sloth's alerts follow the mixin rules too
        alerting = slo["alerting"]
        assert mixin_lint({"alert": alerting["name"],
                           "labels": alerting["page_alert"]["labels"],
                           "annotations": {**alerting["annotations"],
                                           "description": "{{ $labels.instance }}"}}) == []

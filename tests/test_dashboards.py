"""The committed Grafana dashboards: generated from code, and following the dashboard linter's
conventions (grafana/dashboard-linter rules named in each test). No Grafana server can run here:
the queries themselves are proven against a real Prometheus in test_prometheus_e2e.py.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from conftest import REPO, require_tool

GRAFANA = REPO / "grafana"
FILES = ("polarity-overview.json", "polarity-integration.json")
OVERVIEW, INTEGRATION = FILES
# Units used by these dashboards, all in the linter's list of valid Grafana units.
VALID_UNITS = {"none", "short", "string", "s", "cpm", "dateTimeFromNow"}
JOB_MATCHER = 'job=~"$job"'
INSTANCE_MATCHER = 'instance=~"$instance"'
INTEGRATION_MATCHER = 'integration_id=~"$integration"'
SELECTOR = re.compile(r"\b([a-z_]+)\{([^}]*)\}")
METRIC = re.compile(r"\b(polarity_[a-z_]+|scrape_[a-z_]+|up)\b(?!\s*\()")


def load(filename: str) -> dict[str, Any]:
    return dict(json.loads((GRAFANA / "dashboards" / filename).read_text(encoding="utf-8")))


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("polarity_grafana_generate",
                                                  GRAFANA / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        if panel["type"] != "row":
            yield panel


def targets(board: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for panel in panels(board):
        for target in panel["targets"]:
            yield panel, target


def variables(board: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in board["templating"]["list"]}


@pytest.fixture(params=FILES)
def board(request: pytest.FixtureRequest) -> dict[str, Any]:
    return load(request.param)


def test_committed_json_equals_what_the_generator_writes() -> None:
    rendered = generator().render()
    assert sorted(rendered) == sorted(FILES)
    for filename, text in rendered.items():
        committed = (GRAFANA / "dashboards" / filename).read_text(encoding="utf-8")
        assert committed == text, f"{filename} is stale: run python grafana/generate.py"


def test_generator_check_mode_passes_on_the_committed_files() -> None:
    assert generator().main(["--check"]) == 0


def test_imports_as_is_without_inputs_or_fixed_datasource(board: dict[str, Any]) -> None:
    text = json.dumps(board)
    assert "__inputs" not in board and "__requires" not in board
    assert "${DS_" not in text
    uids = {m for m in re.findall(r'"uid": "([^"]*)"', text)} - {board["uid"]}
    assert uids == {"${datasource}"}


def test_one_datasource_variable_named_datasource(board: dict[str, Any]) -> None:
    # template-datasource-rule
    sources = [v for v in board["templating"]["list"] if v["type"] == "datasource"]
    assert [(v["name"], v["label"], v["query"]) for v in sources] == [
        ("datasource", "Data source", "prometheus")]


@pytest.mark.parametrize("name", ["job", "instance"])
def test_job_and_instance_variables_are_multi_select_queries(board: dict[str, Any],
                                                              name: str) -> None:
    # template-job-rule, template-instance-rule
    var = variables(board)[name]
    assert var["type"] == "query"
    assert var["label"] == name.capitalize()
    assert var["datasource"]["uid"] == "${datasource}"
    assert var["multi"] is True and var["includeAll"] is True
    assert var["allValue"] == ".+"
    assert var["query"].startswith("label_values(polarity_up")


def test_query_variables_refresh_on_time_range_change(board: dict[str, Any]) -> None:
    # template-on-time-change-reload
    assert {v["name"]: v["refresh"] for v in board["templating"]["list"] if v["type"] == "query"
            } == dict.fromkeys(("job", "instance", "integration"), 2)


def test_integration_variable_lists_names_with_ids_as_values(board: dict[str, Any]) -> None:
    var = variables(board)["integration"]
    assert "polarity_integration_info" in var["query"]
    assert "(?<value>" in var["regex"] and "(?<text>" in var["regex"]
    assert JOB_MATCHER in var["query"] and INSTANCE_MATCHER in var["query"]


def test_overview_selects_many_integrations_and_drilldown_one() -> None:
    overview = variables(load(OVERVIEW))["integration"]
    drilldown = variables(load(INTEGRATION))["integration"]
    # ".+" keeps errors of integrations that Polarity does not list (they have no info series).
    assert (overview["multi"], overview["includeAll"], overview["allValue"]) == (True, True, ".+")
    assert (drilldown["multi"], drilldown["includeAll"]) == (False, False)


def test_every_panel_and_target_uses_the_datasource_variable(board: dict[str, Any]) -> None:
    # panel-datasource-rule
    for panel, target in targets(board):
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert target["datasource"] == panel["datasource"], panel["title"]


def test_every_selector_filters_by_job_and_instance(board: dict[str, Any]) -> None:
    # target-job-rule, target-instance-rule, and target-required-matchers-rule configured with
    # the matchers job=~"$job" and instance=~"$instance" (as the mixins' .lint files do): no
    # bare metric name, every selector has both, with exactly that type and value.
    for panel, target in targets(board):
        expr = target["expr"]
        metrics = METRIC.findall(expr)
        selectors = SELECTOR.findall(expr)
        assert metrics and len(metrics) == len(selectors), (panel["title"], expr)
        for metric, matchers in selectors:
            assert JOB_MATCHER in matchers and INSTANCE_MATCHER in matchers, (panel["title"],
                                                                              metric)


def test_every_integration_selector_filters_by_integration(board: dict[str, Any]) -> None:
    for panel, target in targets(board):
        for metric, matchers in SELECTOR.findall(target["expr"]):
            if metric.startswith("polarity_integration_"):
                assert INTEGRATION_MATCHER in matchers, (panel["title"], metric)


def test_every_range_uses_rate_interval(board: dict[str, Any]) -> None:
    # target-rate-interval-rule, stricter: every range, not only those of rate().
    ranges = [r for _, t in targets(board) for r in re.findall(r"\[([^\]]+)\]", t["expr"])]
    assert ranges, "no range at all: the rate panels are missing"
    assert set(ranges) == {"$__rate_interval"}


def test_every_panel_has_title_description_and_unit(board: dict[str, Any]) -> None:
    # panel-title-description-rule, panel-units-rule
    for panel in panels(board):
        assert panel["title"].strip(), panel
        assert len(panel["description"]) > 20, panel["title"]
        assert panel["fieldConfig"]["defaults"]["unit"] in VALID_UNITS, panel["title"]
        assert panel["targets"], panel["title"]


def test_panel_titles_are_unique(board: dict[str, Any]) -> None:
    titles = [p["title"] for p in panels(board)]
    assert len(titles) == len(set(titles))


def test_stable_uid_tags_refresh_time_range_and_read_only() -> None:
    # uneditable-dashboard-rule (the "template-uneditable" of the mixin docs),
    # panel-refresh-interval-rule, panel-time-refresh-rule
    boards = {f: load(f) for f in FILES}
    assert {f: b["uid"] for f, b in boards.items()} == {
        OVERVIEW: "polarity-overview", INTEGRATION: "polarity-integration"}
    for board in boards.values():
        assert "polarity" in board["tags"]
        assert board["refresh"] == "5m"
        assert board["time"] == {"from": "now-1h", "to": "now"}
        assert board["editable"] is False
        ids = [p["id"] for p in board["panels"]]
        assert ids == list(range(1, len(ids) + 1))


def test_overview_links_to_the_integration_dashboard_with_it_preselected() -> None:
    overview = load(OVERVIEW)
    uid = load(INTEGRATION)["uid"]
    linked = {}
    for panel in panels(overview):
        for link in panel["fieldConfig"]["defaults"].get("links", []):
            linked[panel["title"]] = link["url"]
    assert {"Integrations not running", "Top failing integrations",
            "Affected users per integration"} <= set(linked)
    for title, url in linked.items():
        assert url.startswith(f"/d/{uid}/"), title
        assert re.search(r"var-integration=\$\{__(field\.labels|data\.fields)\.integration_id\}",
                         url), title
        for kept in ("${datasource:queryparam}", "${job:queryparam}", "${__url_time_range}"):
            assert kept in url, (title, kept)


def test_per_integration_overview_panels_show_names_from_info() -> None:
    for panel, target in targets(load(OVERVIEW)):
        expr = target["expr"]
        aggregated = expr.startswith(("sum(", "count by (status)"))
        if "polarity_integration_" in expr and not aggregated:
            assert re.search(r"group_left\(name, acronym", expr), panel["title"]
            assert "polarity_integration_info" in expr, panel["title"]


def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    # target-promql-rule, checked offline: promtool parses each query as a recording rule.
    promtool = require_tool("promtool")
    rules = []
    for filename in FILES:
        for panel, target in targets(load(filename)):
            expr = target["expr"].replace("$__rate_interval", "1m")
            for name in ("job", "instance", "integration"):
                expr = expr.replace(f"${name}", ".+")
            assert "$" not in expr.replace('"$1"', ""), (filename, panel["title"])
            rules.append({"record": f"check:{len(rules)}", "expr": expr})
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "q", "rules": rules}]}), encoding="utf-8")
    proc = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr

"""End to end: simulator -> real exporter -> real Prometheus, with the shipped rules loaded.

Every query of every panel of both committed dashboards runs through Prometheus' HTTP API with
the template variables substituted the way Grafana would, and its answer is checked against the
simulator's own dataset. The rules must load and evaluate cleanly, and "integration not running"
must fire for exactly the simulator's non-running integrations. No Grafana server can run here,
so Grafana's part (variable substitution, query_result regex) is reproduced in this file.

One Prometheus serves the whole module (starting it is the slow part); every process started
here is stopped at the end.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import promql
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

from polarity_exporter.scrapecache import encode_reserve
from polarity_exporter.simulator import Simulator, SimulatorConfig

# Its module-scoped fixtures are set up once: all of its tests run on one xdist worker.
pytestmark = pytest.mark.xdist_group("test_prometheus_e2e")

DASHBOARDS = REPO / "grafana" / "dashboards"
RULES = REPO / "prometheus" / "polarity-alerts.yml"
JOB = "polarity-exporter"
SCRAPE_INTERVAL_S = 1
SCRAPE_TIMEOUT_S = SCRAPE_INTERVAL_S  # Prometheus' scrape_timeout for the job
TIMEOUT_OFFSET_S = 0.1  # the exporter's --web.timeout-offset
# What polarity_scrape_timeout_seconds must say: Prometheus' timeout (the header) less the offset,
# less the time the exporter keeps to encode its answer, less the moment the request waited for
# an HTTP worker (QUEUED_S at the most here).
DEADLINE_S = (SCRAPE_TIMEOUT_S - TIMEOUT_OFFSET_S) \
    - encode_reserve(SCRAPE_TIMEOUT_S - TIMEOUT_OFFSET_S)
QUEUED_S = 0.05
# Grafana: $__rate_interval = max($__interval + scrape interval, 4 * scrape interval).
INTERVAL_S = 1
RATE_INTERVAL_S = max(INTERVAL_S + SCRAPE_INTERVAL_S, 4 * SCRAPE_INTERVAL_S)
RANGE_S = 10
MAX_CODES = 20  # the exporter's default --collector.max-codes
Result = list[dict[str, Any]]


# --------------------------------------------------------------------------- the stack ----------


@dataclass
class Stack:
    sim: Simulator
    prom_url: str
    exporter_address: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def api(self, path: str, **params: Any) -> Any:
        response = requests.get(f"{self.prom_url}/api/v1/{path}", params=params, timeout=10)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", (path, params, body)
        return body["data"]

    def instant(self, expr: str, at: float | None = None) -> Result:
        params = {"query": expr} if at is None else {"query": expr, "time": at}
        data = self.api("query", **params)
        assert data["resultType"] == "vector", data
        return list(data["result"])

    def range(self, expr: str) -> Result:
        end = time.time()
        data = self.api("query_range", query=expr, start=end - RANGE_S, end=end, step=INTERVAL_S)
        assert data["resultType"] == "matrix", data
        return list(data["result"])


def _fast_rules_copy(path: Path) -> None:
    """The shipped rules with every `for:` shortened, so alerts go pending within seconds.

    Only `for:` changes: the expressions, labels and annotations are the shipped ones.
    """
    rules = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "1s"
    path.write_text(yaml.safe_dump(rules, sort_keys=False), encoding="utf-8")


def _wait_for(what: str, check: Callable[[], bool], timeout: float = 30) -> None:
    """Poll Prometheus' API until check() holds (readiness, not a guess at timing)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise TimeoutError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prometheus = require_tool("prometheus")
    tmp = tmp_path_factory.mktemp("prometheus")
    sim = Simulator(
        SimulatorConfig(seed=7, integrations=25, errors=80, users={SIM_USER: SIM_PASSWORD})
    )
    sim.start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        exporter_port = free_port()
        exporter_address = f"127.0.0.1:{exporter_port}"
        env = clean_env(PASSWORD_ENV)
        exporter_log = (tmp / "exporter.log").open("wb")
        exporter = subprocess.Popen(
            [sys.executable, "-m", "polarity_exporter", f"--web.listen-address={exporter_address}",
             f"--polarity.url={sim.url}", f"--web.timeout-offset={TIMEOUT_OFFSET_S}"],
            stdout=exporter_log, stderr=subprocess.STDOUT, env=env)
        procs.append(exporter)
        wait_until_ready(f"http://{exporter_address}/-/ready", exporter)  # type: ignore[arg-type]

        _fast_rules_copy(tmp / "rules.yml")
        config = {
            "global": {"scrape_interval": f"{SCRAPE_INTERVAL_S}s",
                       "scrape_timeout": f"{SCRAPE_TIMEOUT_S}s",
                       "evaluation_interval": "1s"},
            "rule_files": [str(tmp / "rules.yml")],
            "scrape_configs": [{"job_name": JOB,
                                "static_configs": [{"targets": [exporter_address]}]}],
        }
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
        prom_port = free_port()
        prom_log = (tmp / "prometheus.log").open("wb")
        prom = subprocess.Popen(
            [prometheus, f"--config.file={tmp / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address=127.0.0.1:{prom_port}",
             "--log.level=warn"],
            stdout=prom_log, stderr=subprocess.STDOUT)
        procs.append(prom)
        prom_url = f"http://127.0.0.1:{prom_port}"
        wait_until_ready(f"{prom_url}/-/ready", prom, timeout=30)  # type: ignore[arg-type]
        st = Stack(sim=sim, prom_url=prom_url, exporter_address=exporter_address, procs=procs)

        def enough_samples() -> bool:
            # Enough successful scrapes for every $__rate_interval window to hold two samples.
            result = st.instant(f'count_over_time(polarity_up{{job="{JOB}"}}[1m]) >= '
                                f"{RATE_INTERVAL_S // SCRAPE_INTERVAL_S + 1} and polarity_up == 1")
            return len(result) == 1

        _wait_for("samples from the exporter", enough_samples)
        yield st
    finally:
        for proc in reversed(procs):
            stop_process(proc)
        sim.stop()


# --------------------------------------------------------------------------- expectations -------


@dataclass
class Expected:
    """What the dashboards must show, computed from the simulator's dataset."""

    names: dict[str, str]  # listed id -> name
    acronyms: dict[str, str]
    versions: dict[str, str]
    statuses: dict[str, str]
    records: Counter[str]  # id (listed or orphan) -> error records
    occurrences: dict[str, dict[str, float]]  # id -> code -> sum of error-count
    last: dict[str, dict[str, float]]  # id -> code -> newest occurred-on
    users: dict[str, set[str]]
    # False for a target whose errors collector is off (`collectors: [integrations]`): what
    # needs the errors endpoint is absent, and the error records come from the listing.
    errors_read: bool = True

    @property
    def not_running(self) -> set[str]:
        return {i for i, status in self.statuses.items() if status != "running"}

    def display_name(self, integration_id: str) -> str:
        # Dashboards show unlisted ("orphan") integrations by id.
        return self.names.get(integration_id, integration_id)

    def total(self, integration_id: str) -> float:
        return sum(self.occurrences[integration_id].values())


def _timestamp(text: str) -> float:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


@pytest.fixture(scope="module")
def expected(stack: Stack) -> Expected:
    return expected_for(stack.sim)


def expected_for(sim: Simulator, errors_read: bool = True) -> Expected:
    """What the dashboards must show for this simulator's dataset (with its errors collector
    on, or off)."""
    data = sim.dataset
    if not errors_read:
        listed = {item["id"]: item for item in data.integrations}
        whole = expected_for(sim)
        return Expected(
            names=whole.names, acronyms=whole.acronyms, versions=whole.versions,
            statuses=whole.statuses,
            records=Counter({i: len(item["relationships"]["integration-errors"]["data"])
                             for i, item in listed.items()}),
            occurrences={}, last={}, users={}, errors_read=False)
    attrs = {item["id"]: item["attributes"] for item in data.integrations}
    occurrences: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    last: dict[str, dict[str, float]] = defaultdict(dict)
    users: dict[str, set[str]] = defaultdict(set)
    records: Counter[str] = Counter()
    for err in data.errors:
        a = err["attributes"]
        owner, code = a["integration-id"], a["code"]
        records[owner] += 1
        occurrences[owner][code] += float(a["error-count"])
        ts = _timestamp(a["occurred-on"])
        last[owner][code] = max(ts, last[owner].get(code, ts))
        users[owner].update(str(u["id"]) for u in a["meta"].get("affected_users", []))
    return Expected(
        names={i: str(a.get("name", "")) for i, a in attrs.items()},
        acronyms={i: str(a.get("acronym", "")) for i, a in attrs.items()},
        versions={i: str(a.get("version", "")) for i, a in attrs.items()},
        statuses={i: str(a["status"]) for i, a in attrs.items()},
        records=records, occurrences=occurrences, last=last, users=users,
    )


def _value(series: dict[str, Any]) -> float:
    """Instant vector sample, or the newest point of a range series."""
    point = series["value"] if "value" in series else series["values"][-1]
    return float(point[1])


def _by_id(result: Result) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for series in result:
        grouped[series["metric"]["integration_id"]].append(series)
    return grouped


def _assert_names(result: Result, exp: Expected) -> None:
    for series in result:
        labels = series["metric"]
        assert labels.get("name", "") == exp.display_name(labels["integration_id"]), labels
        if labels["integration_id"] in exp.names:
            assert labels.get("acronym", "") == exp.acronyms[labels["integration_id"]], labels


def _assert_per_code(result: Result, exp: Expected, table: dict[str, dict[str, float]],
                     combine: Callable[[list[float]], float], scale: float = 1.0,
                     named: bool = True) -> None:
    """One series per (integration, code) with the code's value; compared without the code
    label, which the exporter may sanitise, and per integration when codes were folded."""
    grouped = _by_id(result)
    assert set(grouped) == {i for i, codes in table.items() if codes}
    for integration_id, series in grouped.items():
        got = sorted(_value(s) / scale for s in series)
        want = sorted(table[integration_id].values())
        if len(want) > MAX_CODES:  # folded into code="other": totals and the cap still hold
            assert len(got) == MAX_CODES
            assert combine(got) == pytest.approx(combine(want), rel=1e-9)
        else:
            assert got == pytest.approx(want, rel=1e-9), integration_id
    if named:
        _assert_names(result, exp)


# --------------------------------------------------------------------------- panel checks -------


@dataclass
class Ctx:
    stack: Stack
    exp: Expected
    integration: str | None = None  # the integration dashboard's selected id


Check = Callable[[Result, Ctx], None]


def check_up(result: Result, ctx: Ctx) -> None:
    assert [(s["metric"]["instance"], _value(s)) for s in result] == [
        (ctx.stack.exporter_address, 1.0)]


def check_errors_readable(result: Result, ctx: Ctx) -> None:
    want = [("errors", 1.0)] if ctx.exp.errors_read else []  # absent when switched off
    assert [(s["metric"]["collector"], _value(s)) for s in result] == want


def check_running_count(result: Result, ctx: Ctx) -> None:
    assert [_value(s) for s in result] == [len(ctx.exp.statuses) - len(ctx.exp.not_running)]


def check_not_running_count(result: Result, ctx: Ctx) -> None:
    assert [_value(s) for s in result] == [len(ctx.exp.not_running)]


def check_scrape_duration(result: Result, ctx: Ctx) -> None:
    # Within the exporter's deadline: the scrapes against the simulator succeed.
    assert [s["metric"]["instance"] for s in result] == [ctx.stack.exporter_address]
    assert 0 < _value(result[0]) < DEADLINE_S


def check_prom_scrape_duration(result: Result, ctx: Ctx) -> None:
    assert [s["metric"]["instance"] for s in result] == [ctx.stack.exporter_address]
    assert 0 < _value(result[0]) < SCRAPE_TIMEOUT_S


def check_scrape_timeout(result: Result, ctx: Ctx) -> None:
    # The exporter's deadline, from the header Prometheus really sent, less the offset and the
    # encode reserve.
    assert [s["metric"]["instance"] for s in result] == [ctx.stack.exporter_address]
    assert all(float(v) == pytest.approx(DEADLINE_S, abs=QUEUED_S)
               for _, v in result[0]["values"])


def check_by_status(result: Result, ctx: Ctx) -> None:
    got = {s["metric"]["status"]: _value(s) for s in result}
    assert got == dict(Counter(ctx.exp.statuses.values()))


def check_not_running_table(result: Result, ctx: Ctx) -> None:
    exp = ctx.exp
    got = {(m["integration_id"], m.get("name", ""), m.get("acronym", ""), m.get("version", ""),
            m["status"]) for m in (s["metric"] for s in result)}
    assert got == {(i, exp.names[i], exp.acronyms[i], exp.versions[i], exp.statuses[i])
                   for i in exp.not_running}
    assert len(result) == len(exp.not_running)


def check_occurrences(result: Result, ctx: Ctx) -> None:
    table = ctx.exp.occurrences
    if ctx.integration is not None:
        table = {ctx.integration: table.get(ctx.integration, {})}
    _assert_per_code(result, ctx.exp, table, sum, named=ctx.integration is None)


def check_last_occurrence_ms(result: Result, ctx: Ctx) -> None:
    table = ctx.exp.last
    if ctx.integration is not None:
        table = {ctx.integration: table.get(ctx.integration, {})}
    _assert_per_code(result, ctx.exp, table, max, scale=1000.0, named=ctx.integration is None)


def check_error_rate(result: Result, ctx: Ctx) -> None:
    # The dataset is static: every integration with errors has a series, and none grows.
    ids = {s["metric"]["integration_id"] for s in result}
    if ctx.integration is None:
        assert ids == set(ctx.exp.occurrences)
        assert len(result) == len(ids)
    else:
        assert ids == ({ctx.integration} if ctx.exp.occurrences.get(ctx.integration) else set())
    assert all(float(v) == 0.0 for s in result for _, v in s["values"])
    if ctx.integration is None:
        _assert_names(result, ctx.exp)


def check_top_failing(result: Result, ctx: Ctx) -> None:
    exp = ctx.exp
    totals = sorted((exp.total(i) for i in exp.occurrences), reverse=True)[:10]
    assert sorted((_value(s) for s in result), reverse=True) == pytest.approx(totals)
    for series in result:
        assert _value(series) == pytest.approx(exp.total(series["metric"]["integration_id"]))
    _assert_names(result, exp)


def check_affected_users(result: Result, ctx: Ctx) -> None:
    got = {s["metric"]["integration_id"]: _value(s) for s in result}
    assert got == {i: float(len(u)) for i, u in ctx.exp.users.items() if u}
    _assert_names(result, ctx.exp)


def check_info(result: Result, ctx: Ctx) -> None:
    i, exp = ctx.integration, ctx.exp
    assert i is not None
    assert [(m.get("name", ""), m.get("acronym", ""), m.get("version", ""))
            for m in (s["metric"] for s in result)] == [(exp.names[i], exp.acronyms[i],
                                                        exp.versions[i])]


def check_status(result: Result, ctx: Ctx) -> None:
    assert ctx.integration is not None
    assert {s["metric"]["status"] for s in result} == {ctx.exp.statuses[ctx.integration]}
    assert len(result) == 1


def check_running_history(result: Result, ctx: Ctx) -> None:
    assert ctx.integration is not None
    want = 0.0 if ctx.integration in ctx.exp.not_running else 1.0
    assert len(result) == 1
    assert {float(v) for _, v in result[0]["values"]} == {want}


def check_error_records(result: Result, ctx: Ctx) -> None:
    assert ctx.integration is not None
    assert [_value(s) for s in result] == [float(ctx.exp.records[ctx.integration])]


def check_integration_users(result: Result, ctx: Ctx) -> None:
    assert ctx.integration is not None
    want = [float(len(ctx.exp.users.get(ctx.integration, ())))] if ctx.exp.errors_read else []
    assert [_value(s) for s in result] == want


# (dashboard uid, panel title, refId) -> check. Every target of both dashboards must be here.
CHECKS: dict[tuple[str, str, str], Check] = {
    ("polarity-overview", "Polarity API up", "A"): check_up,
    ("polarity-overview", "Errors endpoint readable", "A"): check_errors_readable,
    ("polarity-overview", "Integrations running / not running", "A"): check_running_count,
    ("polarity-overview", "Integrations running / not running", "B"): check_not_running_count,
    ("polarity-overview", "Scrape duration against the scrape timeout", "A"):
        check_scrape_duration,
    ("polarity-overview", "Scrape duration against the scrape timeout", "B"):
        check_prom_scrape_duration,
    ("polarity-overview", "Scrape duration against the scrape timeout", "C"):
        check_scrape_timeout,
    ("polarity-overview", "Integrations by status", "A"): check_by_status,
    ("polarity-overview", "Integrations not running", "A"): check_not_running_table,
    ("polarity-overview", "Error occurrences by integration and code", "A"): check_occurrences,
    ("polarity-overview", "New error occurrences per minute", "A"): check_error_rate,
    ("polarity-overview", "Top failing integrations", "A"): check_top_failing,
    ("polarity-overview", "Affected users per integration", "A"): check_affected_users,
    ("polarity-overview", "Time since each error's last occurrence", "A"):
        check_last_occurrence_ms,
    ("polarity-integration", "Integration", "A"): check_info,
    ("polarity-integration", "Status", "A"): check_status,
    ("polarity-integration", "Error records", "A"): check_error_records,
    ("polarity-integration", "Affected users", "A"): check_integration_users,
    ("polarity-integration", "Status history", "A"): check_running_history,
    ("polarity-integration", "Status history", "B"): check_status,
    ("polarity-integration", "Error codes", "A"): check_occurrences,
    ("polarity-integration", "Error codes", "B"): check_last_occurrence_ms,
    ("polarity-integration", "Error occurrences by code", "A"): check_occurrences,
    ("polarity-integration", "New error occurrences per minute", "A"): check_error_rate,
}


# --------------------------------------------------------------------------- Grafana's part -----


def load_dashboard(filename: str) -> dict[str, Any]:
    return dict(json.loads((DASHBOARDS / filename).read_text(encoding="utf-8")))


def targets(board: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], panel, target


def interpolate(expr: str, variables: dict[str, str]) -> str:
    """Grafana's substitution for a Prometheus query: regex-escaped values joined with `|`."""
    values = {
        "__rate_interval": f"{RATE_INTERVAL_S}s", "__interval": f"{INTERVAL_S}s",
        "__range": f"{RANGE_S}s", "__range_s": str(RANGE_S), **variables,
    }

    def sub(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name.isdigit():  # label_replace's "$1": not a variable, Grafana leaves it alone
            return match.group(0)
        assert name in values, f"unknown variable ${name} in {expr}"
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", sub, expr)


def grafana_regex(value: str) -> str:
    """A single value as Grafana writes it into a regex matcher."""
    return re.sub(r"([\\^$.|?*+()\[\]{}])", r"\\\\\1", value)


def run_target(stack: Stack, panel: dict[str, Any], target: dict[str, Any],
               variables: dict[str, str]) -> Result:
    expr = interpolate(target["expr"], variables)
    return stack.instant(expr) if target.get("instant") else stack.range(expr)


def all_variables(board: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in board["templating"]["list"]}


# --------------------------------------------------------------------------- tests --------------


def test_every_target_has_a_check() -> None:
    found = {(load_dashboard(f)["uid"], title, t["refId"])
             for f in ("polarity-overview.json", "polarity-integration.json")
             for title, _, t in targets(load_dashboard(f))}
    assert found == set(CHECKS)


def test_overview_panels_match_the_dataset(stack: Stack, expected: Expected) -> None:
    board = load_dashboard("polarity-overview.json")
    variables = {name: var.get("allValue") or "" for name, var in all_variables(board).items()
                 if var["type"] == "query"}  # every multi-select on "All"
    ctx = Ctx(stack=stack, exp=expected)
    for title, panel, target in targets(board):
        result = run_target(stack, panel, target, variables)
        CHECKS[(board["uid"], title, target["refId"])](result, ctx)


@pytest.mark.parametrize("job, instance", [("no-such-job", ".+"), (".+", "no-such-instance")])
def test_every_panel_query_is_filtered_by_job_and_instance(stack: Stack, job: str,
                                                           instance: str) -> None:
    for filename in ("polarity-overview.json", "polarity-integration.json"):
        variables = {"job": job, "instance": instance, "integration": ".+"}
        for title, panel, target in targets(load_dashboard(filename)):
            assert run_target(stack, panel, target, variables) == [], (filename, title)


def test_integration_panels_match_the_dataset_for_every_integration(
        stack: Stack, expected: Expected) -> None:
    board = load_dashboard("polarity-integration.json")
    for integration_id in expected.names:
        variables = {"job": grafana_regex(JOB),
                     "instance": grafana_regex(stack.exporter_address),
                     "integration": grafana_regex(integration_id)}
        ctx = Ctx(stack=stack, exp=expected, integration=integration_id)
        for title, panel, target in targets(board):
            result = run_target(stack, panel, target, variables)
            CHECKS[(board["uid"], title, target["refId"])](result, ctx)


def _label_values(stack: Stack, query: str, variables: dict[str, str]) -> list[str]:
    match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
    assert match, query
    data = stack.api(f"label/{match.group(2)}/values",
                     **{"match[]": interpolate(match.group(1), variables)})
    return list(data)


def test_job_and_instance_variables_list_the_exporter(stack: Stack) -> None:
    variables = all_variables(load_dashboard("polarity-overview.json"))
    assert _label_values(stack, variables["job"]["query"], {}) == [JOB]
    assert _label_values(stack, variables["instance"]["query"], {"job": ".+"}) == [
        stack.exporter_address]


def test_integration_variable_shows_names_and_keeps_ids(stack: Stack, expected: Expected) -> None:
    for filename in ("polarity-overview.json", "polarity-integration.json"):
        var = all_variables(load_dashboard(filename))["integration"]
        inner = re.fullmatch(r"query_result\((.+)\)", var["query"], re.S)
        assert inner, var["query"]
        result = stack.instant(interpolate(inner.group(1), {"job": ".+", "instance": ".+"}))
        # Grafana's text for each series: `name{label="value",...} value timestamp`.
        texts = ["{" + ",".join(f'{k}="{v}"' for k, v in sorted(s["metric"].items())) + "} "
                 f"{s['value'][1]} {int(s['value'][0] * 1000)}" for s in result]
        pattern = re.compile(var["regex"].strip("/").replace("(?<", "(?P<"))
        options = {}
        for text in texts:
            match = pattern.search(text)
            assert match, text
            value = match.group("value")
            options[value] = match.group("text") or value
        assert options == {i: name or i for i, name in expected.names.items()}


def test_rules_load_and_evaluate_without_error(stack: Stack) -> None:
    shipped = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    names = {r["alert"] for g in shipped["groups"] for r in g["rules"]}

    def rules() -> list[dict[str, Any]]:
        return [r for g in stack.api("rules")["groups"] for r in g["rules"]]

    _wait_for("a first evaluation of every rule",
              lambda: all(r["health"] != "unknown" for r in rules()))
    loaded = rules()
    assert {r["name"] for r in loaded} == names
    assert [(r["name"], r["health"], r.get("lastError", "")) for r in loaded] == [
        (r["name"], "ok", "") for r in loaded]


def test_not_running_alert_is_active_for_exactly_the_non_running_integrations(
        stack: Stack, expected: Expected) -> None:
    def active() -> list[dict[str, Any]]:
        return [a for a in stack.api("alerts")["alerts"]
                if a["labels"]["alertname"] == "PolarityIntegrationNotRunning"
                and a["state"] in ("pending", "firing")]

    _wait_for("PolarityIntegrationNotRunning alerts",
              lambda: {a["labels"]["integration_id"] for a in active()} == expected.not_running)
    alerts = active()
    assert len(alerts) == len(expected.not_running)
    for alert in alerts:
        labels = alert["labels"]
        integration_id = labels["integration_id"]
        assert labels.get("name", "") == expected.names[integration_id]
        assert "status" not in labels  # a status flip must not start a new alert
        assert f'(status "{expected.statuses[integration_id]}")' in \
            alert["annotations"]["description"]
        assert labels["severity"] == "warning"
        assert expected.names[integration_id] in alert["annotations"]["description"]


def test_scrape_near_timeout_alert_divides_the_duration_by_the_exporters_deadline(
        stack: Stack) -> None:
    rule = next(r for g in yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
                for r in g["rules"] if r["alert"] == "PolarityScrapeNearTimeout")
    ratio, threshold = rule["expr"].rsplit(" > ", 1)
    # Three queries at one instant must see the same samples: a scrape begun before it but
    # stored after the first query would change the later ones. Every scrape begun by this
    # instant has been stored (a scrape lasts at most its timeout).
    at = time.time() - SCRAPE_TIMEOUT_S - 1.0
    got = {s["metric"]["instance"]: _value(s) for s in stack.instant(ratio, at)}
    selector = f'{{job="{JOB}", instance="{stack.exporter_address}"}}'
    (duration,) = stack.instant(f"polarity_scrape_duration_seconds{selector}", at)
    (deadline,) = stack.instant(f"polarity_scrape_timeout_seconds{selector}", at)
    assert _value(deadline) == pytest.approx(DEADLINE_S, abs=QUEUED_S)
    assert got == {stack.exporter_address: pytest.approx(_value(duration) / _value(deadline))}
    # Fast scrapes against the simulator: well under the threshold, so the alert stays silent.
    assert got[stack.exporter_address] < float(threshold)
    assert stack.instant(rule["expr"], at) == []


# ------------------------------------------------------------- counter functions on counters ----

CHART_FILES = REPO / "helm" / "polarity-exporter" / "files"
QUERY_SOURCES = [*sorted(DASHBOARDS.glob("*.json")), RULES,
                 *sorted((CHART_FILES / "dashboards").glob("*.json")),
                 CHART_FILES / "polarity-alerts.yml"]


def docs_examples() -> list[tuple[str, str]]:
    """The docs' "Example PromQL" block, one query per non-comment line."""
    text = (REPO / "docs" / "dashboards-and-alerts.md").read_text(encoding="utf-8")
    block = text.split("## Example PromQL", 1)[1].split("```promql", 1)[1].split("```", 1)[0]
    lines = [line for line in block.splitlines() if line.strip() and not line.startswith("#")]
    queries: list[str] = []
    for line in lines:  # a line starting with a space continues the previous query
        if line[0].isspace() and queries:
            queries[-1] += " " + line.strip()
        else:
            queries.append(line)
    return [("docs/dashboards-and-alerts.md: Example PromQL", query) for query in queries]


def every_query() -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = docs_examples()
    for path in QUERY_SOURCES:
        read = promql.rule_queries if path.suffix == ".yml" else promql.dashboard_queries
        found += [(f"{path.relative_to(REPO)}: {where}", promql.label_values_inner(expr))
                  for where, expr in read(path)]
    return found


def scraped_types(stack: Stack) -> dict[str, str]:
    """Metric name as queried -> type, as Prometheus learnt it from the exporter's scrapes."""
    types: dict[str, str] = {}
    for name, entries in stack.api("metadata").items():
        kind = entries[0]["type"]
        types[name] = kind
        if kind == "counter":  # OpenMetrics names the family without _total
            types[name.removesuffix("_total") + "_total"] = kind
    return types


def test_the_query_reader_finds_the_arguments_of_counter_functions() -> None:
    # The checker below is only as good as this reader: a query with a gauge inside a rate()
    # must be reported, including through sums, label matchers and Grafana variables.
    calls = list(promql.counter_function_arguments(
        'sum by (job, code) (rate(polarity_up{job=~"$job", a="rate(x)"}[$__rate_interval]))'
        " / on (job) group_left (name) increase(foo_total[5m] offset 1m)"))
    assert calls == [("rate", ["polarity_up"]), ("increase", ["foo_total"])]


@pytest.mark.parametrize(("expr", "names"), [
    ('rate({__name__="polarity_up"}[5m])', ["polarity_up"]),
    ('increase({__name__=~"polarity_up|foo_total"}[1h])', ["polarity_up", "foo_total"]),
    ("rate((1-polarity_up)[5m:1m])", ["polarity_up"]),
    ("rate($metric[5m])", ["$metric"]),
    ("rate(start[5m] @ end())", ["start"]),
    ("resets(max by (job) (polarity_up)[1h:])", ["polarity_up"]),
])
def test_the_query_reader_does_not_miss_a_metric_name(expr: str, names: list[str]) -> None:
    (call,) = promql.counter_function_arguments(expr)
    assert call[1] == names


def test_a_counter_function_of_nothing_readable_is_an_error() -> None:
    with pytest.raises(ValueError, match="no metric name"):
        list(promql.counter_function_arguments("rate(1e3[5m])"))


def test_the_queries_are_all_read() -> None:
    queries = every_query()
    assert len(queries) > 30  # both dashboards' panels and variables, and every rule, twice
    assert any("rate(" in expr for _, expr in queries)


def test_counter_functions_apply_only_to_counters_of_a_real_scrape(stack: Stack) -> None:
    types = scraped_types(stack)
    wrong = []
    for where, expr in every_query():
        for function, names in promql.counter_function_arguments(expr):
            for name in names:
                kind = types.get(name, "not in the scrape")
                if kind != "counter":
                    wrong.append(f"{where}: {function}({name}) but {name} is {kind}")
    assert not wrong, "\n".join(wrong)


def test_gauge_functions_apply_only_to_gauges_of_a_real_scrape(stack: Stack) -> None:
    # The reverse mistake: delta() or deriv() of a counter ignores its resets.
    types = scraped_types(stack)
    wrong = [f"{where}: {function}({name}) but {name} is {types.get(name, 'not scraped')}"
             for where, expr in every_query()
             for function, names in promql.function_arguments(expr, promql.GAUGE_FUNCTIONS)
             for name in names if types.get(name) != "gauge"]
    assert not wrong, "\n".join(wrong)


# --------------------------------------------------------------------------- the README's picture


def test_the_readme_picture_draws_every_overview_panel_from_prometheus(
        stack: Stack, tmp_path: Path) -> None:
    """docs/render_overview.py draws the overview's panel queries as this Prometheus answers
    them; every panel has data. POLARITY_RENDER_OVERVIEW=docs/img/overview.png writes the
    README's copy from this run."""
    import os
    sys.path.insert(0, str(REPO / "docs"))
    from render_overview import Panel, Query, render

    board = load_dashboard("polarity-overview.json")
    variables = {name: var.get("allValue") or "" for name, var in all_variables(board).items()
                 if var["type"] == "query"}
    end = time.time()
    panels = []
    for panel in board["panels"]:
        queries = []
        for target in panel.get("targets", []):
            expr = interpolate(target["expr"], variables)
            if target.get("instant"):
                result = stack.instant(expr)
            else:  # the whole run so far, not the checks' 10 s window
                result = stack.api("query_range", query=expr, start=end - 120, end=end,
                                   step=1)["result"]
            queries.append(Query(target.get("legendFormat", ""), bool(target.get("instant")),
                                 result))
        if queries:
            panels.append(Panel(panel["type"], panel["title"], queries))
    out = Path(os.environ.get("POLARITY_RENDER_OVERVIEW") or tmp_path / "overview.png")
    render(panels, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(panels) == sum(1 for p in board["panels"] if p.get("targets"))

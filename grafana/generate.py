"""Generate the Grafana dashboards of polarity-exporter from code.

Run `python grafana/generate.py` after editing this file: it rewrites grafana/dashboards/*.json.
`python grafana/generate.py --check` exits 1 when the committed JSON is out of date (a test does
the same comparison).

The dashboards follow the rules of Grafana's dashboard linter: one `datasource` variable used by
every panel and query, multi-select `job` and `instance` variables (allValue `.+`) that filter every
selector, `$__rate_interval` for every range, a title, a description and a unit on every panel,
refresh of query variables on time-range change, a stable uid, tags, and a not-editable model
(provisioned dashboards are code; edits belong here).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import (
    bargauge,
    common,
    dashboard,
    piechart,
    prometheus,
    stat,
    statetimeline,
    table,
    timeseries,
)
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as common_models
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import prometheus as prom_models

OUT_DIR = Path(__file__).resolve().parent / "dashboards"
OVERVIEW_UID = "polarity-overview"
INTEGRATION_UID = "polarity-integration"
TAGS = ["polarity", "polarity-exporter"]
DATASOURCE = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")

# Every selector carries these matchers (linter rules target-job-rule / target-instance-rule).
JOB_INSTANCE = 'job=~"$job", instance=~"$instance"'
INTEGRATION = 'integration_id=~"$integration"'
JOIN_KEYS = "job, instance, integration_id"


def sel(metric: str, *matchers: str) -> str:
    """A selector filtered by the job and instance variables, plus extra matchers."""
    return f"{metric}{{{', '.join((JOB_INSTANCE, *matchers))}}}"


def integ(metric: str, *matchers: str) -> str:
    """A selector of an integration-level metric, also filtered by the integration variable."""
    return sel(metric, INTEGRATION, *matchers)


INFO = integ("polarity_integration_info")


def with_names(expr: str) -> str:
    """Add the `name` and `acronym` labels of polarity_integration_info to every series of expr.

    Errors may belong to integrations that Polarity does not list ("orphans"). They have no info
    series, so a plain join would hide them; the `or` branch keeps them and shows their id as name.
    """
    return (
        f"({expr})\n* on({JOIN_KEYS}) group_left(name, acronym)\n{INFO}\n"
        f"or on({JOIN_KEYS})\n"
        f'label_replace({expr}, "name", "$1", "integration_id", "(.+)")'
    )


# ---------------------------------------------------------------- queries ----------------------
# Each constant is one panel target, so the end-to-end test and the JSON share the exact text.

Q_UP = sel("polarity_up")
Q_ERRORS_READABLE = sel("polarity_scrape_collector_success", 'collector="errors"')
Q_SCRAPE_DURATION = sel("polarity_scrape_duration_seconds")
Q_PROM_SCRAPE_DURATION = sel("scrape_duration_seconds")
# How long the exporter may talk to Polarity (Prometheus' timeout less --web.timeout-offset, less
# the time kept to encode the answer): exported with every scrape, so no Prometheus feature flag
# or assumed default is needed. Same line as the alert's.
Q_SCRAPE_TIMEOUT = sel("polarity_scrape_timeout_seconds")
Q_RUNNING_COUNT = f"sum(max by ({JOIN_KEYS}) ({integ('polarity_integration_running')}))"
Q_NOT_RUNNING_COUNT = f"sum(max by ({JOIN_KEYS}) (1 - {integ('polarity_integration_running')}))"
Q_BY_STATUS = f"count by (status) ({integ('polarity_integration_status')})"
Q_NOT_RUNNING_TABLE = (
    f"({integ('polarity_integration_running')} == 0)\n"
    f"* on({JOIN_KEYS}) group_left(name, acronym, version)\n{INFO}\n"
    f"* on({JOIN_KEYS}) group_left(status)\n{integ('polarity_integration_status')}"
)
OCCURRENCES_BY_CODE = (
    f"sum by ({JOIN_KEYS}, code) ({integ('polarity_integration_error_occurrences_total')})"
)
Q_OCCURRENCES_BY_CODE = with_names(OCCURRENCES_BY_CODE)
Q_ERROR_RATE = with_names(
    f"sum by ({JOIN_KEYS}) "
    f"(rate({integ('polarity_integration_error_occurrences_total')}[$__rate_interval])) * 60"
)
Q_TOP_FAILING = with_names(
    f"topk(10, sum by ({JOIN_KEYS}) ({integ('polarity_integration_error_occurrences_total')}))"
)
# Grafana's dateTimeFromNow unit takes milliseconds since the epoch.
LAST_OCCURRENCE_MS = (
    f"max by ({JOIN_KEYS}, code) "
    f"({integ('polarity_integration_error_last_occurrence_timestamp_seconds')}) * 1000"
)
Q_LAST_OCCURRENCE = with_names(LAST_OCCURRENCE_MS)
Q_AFFECTED_USERS = with_names(f"{integ('polarity_integration_error_affected_users')} > 0")

# Integration dashboard: the integration variable is single-select there.
Q_I_INFO = INFO
Q_I_STATUS = integ("polarity_integration_status")
Q_I_RUNNING = integ("polarity_integration_running")
Q_I_ERROR_RECORDS = integ("polarity_integration_errors")
Q_I_AFFECTED_USERS = integ("polarity_integration_error_affected_users")
Q_I_OCCURRENCES = OCCURRENCES_BY_CODE
Q_I_LAST_OCCURRENCE = LAST_OCCURRENCE_MS
Q_I_ERROR_RATE = (
    f"sum by ({JOIN_KEYS}, code) "
    f"(rate({integ('polarity_integration_error_occurrences_total')}[$__rate_interval])) * 60"
)

# ---------------------------------------------------------------- variables --------------------


def datasource_variable() -> dashboard.DatasourceVariable:
    return (
        dashboard.DatasourceVariable("datasource")
        .label("Data source")
        .type("prometheus")
        .description("Prometheus that scrapes polarity-exporter.")
    )


def multi_query_variable(name: str, query: str, description: str) -> dashboard.QueryVariable:
    return (
        dashboard.QueryVariable(name)
        .label(name.capitalize())
        .description(description)
        .datasource(DATASOURCE)
        .query(query)
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_CASE_INSENSITIVE_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".+")
        .current(dm.VariableOption(selected=True, text=["All"], value=["$__all"]))
    )


def job_variable() -> dashboard.QueryVariable:
    return multi_query_variable(
        "job", "label_values(polarity_up, job)", "Prometheus job(s) scraping polarity-exporter."
    )


def instance_variable() -> dashboard.QueryVariable:
    return multi_query_variable(
        "instance",
        'label_values(polarity_up{job=~"$job"}, instance)',
        "polarity-exporter instance(s), one per Polarity server.",
    )


# Options show the integration's name and keep its id as value. Grafana formats each result as
# `{integration_id="…",name="…"} 1 <ts>`; `name` sorts last, so a greedy match keeps names that
# contain quotes whole. An integration without a name falls back to showing its id.
INTEGRATION_VARIABLE_QUERY = (
    f"query_result(max by (integration_id, name) ({sel('polarity_integration_info')}))"
)
INTEGRATION_VARIABLE_REGEX = '/integration_id="(?<value>[^"]*)"(,name="(?<text>.*)")?}/'


def integration_variable(multi: bool) -> dashboard.QueryVariable:
    var = (
        dashboard.QueryVariable("integration")
        .label("Integration")
        .description("Polarity integration(s), shown by name.")
        .datasource(DATASOURCE)
        .query(INTEGRATION_VARIABLE_QUERY)
        .regex(INTEGRATION_VARIABLE_REGEX)
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_CASE_INSENSITIVE_ASC)
    )
    if multi:
        # `.+` rather than the list of listed ids, so that errors of unlisted ids still show.
        var = (
            var.multi(True)
            .include_all(True)
            .all_value(".+")
            .current(dm.VariableOption(selected=True, text=["All"], value=["$__all"]))
        )
    else:
        var = var.multi(False).include_all(False)
    return var


# ---------------------------------------------------------------- panels -----------------------


def target(expr: str, legend: str = "__auto", ref: str = "A", instant: bool = False,
           table_format: bool = False) -> prometheus.Dataquery:
    query = (
        prometheus.Dataquery()
        .expr(expr)
        .legend_format(legend)
        .ref_id(ref)
        .datasource(DATASOURCE)
    )
    query = query.instant() if instant else query.range()
    if table_format:
        query = query.format(prom_models.PromQueryFormat.TABLE)
    return query


def drilldown_link(value: str) -> dashboard.DashboardLink:
    """Open the integration dashboard for one integration, keeping data source, job and time."""
    return (
        dashboard.DashboardLink("Open integration ${__field.labels.name}")
        .url(
            f"/d/{INTEGRATION_UID}/polarity-integration?${{datasource:queryparam}}"
            f"&${{job:queryparam}}&${{instance:queryparam}}&var-integration={value}"
            "&${__url_time_range}"
        )
    )


FIELD_LINK = drilldown_link("${__field.labels.integration_id}")
ROW_LINK = drilldown_link("${__data.fields.integration_id}").title("Open integration")

UP_MAPPINGS: list[dm.ValueMapping] = [
    dm.ValueMap(options={
        "0": dm.ValueMappingResult(text="DOWN", color="red", index=0),
        "1": dm.ValueMappingResult(text="UP", color="green", index=1),
    })
]


def organize(exclude: list[str], rename: dict[str, str],
             order: list[str]) -> dm.DataTransformerConfig:
    return dm.DataTransformerConfig(
        id_val="organize",
        options={
            "excludeByName": dict.fromkeys(exclude, True),
            "renameByName": rename,
            "indexByName": {name: i for i, name in enumerate(order)},
        },
    )


def last_value() -> common.ReduceDataOptions:
    return common.ReduceDataOptions().calcs(["lastNotNull"]).values(False)


def stat_panel(title: str, description: str, unit: str) -> stat.Panel:
    """A stat panel showing the last value, with what every panel needs."""
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .reduce_options(last_value())
    )


def overview() -> dashboard.Dashboard:
    api_up = (
        stat_panel(
            "Polarity API up",
            "polarity_up per exporter: UP when the last scrape authenticated with Polarity and "
            "listed every integration, DOWN otherwise (see the exporter log for the cause).",
            "none",
        )
        .with_target(target(Q_UP, "{{instance}}", instant=True))
        .mappings(UP_MAPPINGS)
        .color_mode(common_models.BigValueColorMode.BACKGROUND)
        .span(8).height(4)
    )
    errors_readable = (
        stat_panel(
            "Errors endpoint readable",
            "Whether the exporter could read /api/integrations/errors. Unreadable (often a 403: "
            "the account is neither admin nor integration manager) leaves the error panels empty.",
            "none",
        )
        .with_target(target(Q_ERRORS_READABLE, "{{instance}}", instant=True))
        .mappings([dm.ValueMap(options={
            "0": dm.ValueMappingResult(text="UNREADABLE", color="orange", index=0),
            "1": dm.ValueMappingResult(text="READABLE", color="green", index=1),
        })])
        .color_mode(common_models.BigValueColorMode.BACKGROUND)
        .span(8).height(4)
    )
    counts = (
        stat_panel("Integrations running / not running",
                   "How many listed integrations have status \"running\", and how many not.",
                   "short")
        .with_target(target(Q_RUNNING_COUNT, "running", "A", instant=True))
        .with_target(target(Q_NOT_RUNNING_COUNT, "not running", "B", instant=True))
        .text_mode(common_models.BigValueTextMode.VALUE_AND_NAME)
        .span(8).height(4)
    )
    scrape = (
        timeseries.Panel()
        .title("Scrape duration against the scrape timeout")
        .description(
            "Time each scrape spent talking to Polarity, the whole scrape as Prometheus saw it, "
            "and the exporter's deadline (polarity_scrape_timeout_seconds: how long it may talk "
            "to Polarity, i.e. Prometheus' scrape timeout less --web.timeout-offset, less the "
            "time kept to encode the answer). At it the exporter stops talking to Polarity and "
            "reports polarity_up 0; the whole scrape may exceed it by the offset and that "
            "reserve. Above 80% of it, PolarityScrapeNearTimeout warns."
        )
        .datasource(DATASOURCE)
        .with_target(target(Q_SCRAPE_DURATION, "{{instance}} Polarity API calls", "A"))
        .with_target(target(Q_PROM_SCRAPE_DURATION, "{{instance}} whole scrape", "B"))
        .with_target(target(Q_SCRAPE_TIMEOUT, "{{instance}} exporter deadline", "C"))
        .unit("s")
        .min(0)
        .span(12).height(8)
    )
    by_status = (
        piechart.Panel()
        .title("Integrations by status")
        .description("Number of integrations per raw Polarity status (an open set of strings).")
        .datasource(DATASOURCE)
        .with_target(target(Q_BY_STATUS, "{{status}}", instant=True))
        .unit("short")
        .reduce_options(last_value())
        .span(12).height(8)
    )
    not_running = (
        table.Panel()
        .title("Integrations not running")
        .description(
            "Every integration whose status is not \"running\", with its name, acronym, version "
            "and raw status. Click a row to open the integration dashboard."
        )
        .datasource(DATASOURCE)
        .with_target(target(Q_NOT_RUNNING_TABLE, "", instant=True, table_format=True))
        .unit("string")
        .data_links([ROW_LINK])
        .with_transformation(organize(
            ["Time", "Value", "__name__"],
            {"name": "Name", "acronym": "Acronym", "version": "Version", "status": "Status",
             "integration_id": "ID", "instance": "Instance", "job": "Job"},
            ["name", "acronym", "version", "status", "integration_id", "instance", "job"],
        ))
        .span(24).height(8)
    )
    occurrences = (
        timeseries.Panel()
        .title("Error occurrences by integration and code")
        .description(
            "Sum of Polarity's error-count per integration and error code: how many times each "
            "error has occurred, as Polarity counts it. A rising line is a failing integration."
        )
        .datasource(DATASOURCE)
        .with_target(target(Q_OCCURRENCES_BY_CODE, "{{name}}: {{code}}"))
        .unit("short")
        .min(0)
        .data_links([FIELD_LINK])
        .span(12).height(9)
    )
    error_rate = (
        timeseries.Panel()
        .title("New error occurrences per minute")
        .description(
            "Rate at which error occurrences grow, per integration. A drop of the count (errors "
            "removed in Polarity) counts as a reset, not as negative errors."
        )
        .datasource(DATASOURCE)
        .with_target(target(Q_ERROR_RATE, "{{name}}"))
        .unit("cpm")
        .min(0)
        .data_links([FIELD_LINK])
        .span(12).height(9)
    )
    top_failing = (
        bargauge.Panel()
        .title("Top failing integrations")
        .description("The ten integrations with the most error occurrences, all codes together.")
        .datasource(DATASOURCE)
        .with_target(target(Q_TOP_FAILING, "{{name}}", instant=True))
        .unit("short")
        .min(0)
        .reduce_options(last_value())
        .orientation(common_models.VizOrientation.HORIZONTAL)
        .data_links([FIELD_LINK])
        .span(12).height(9)
    )
    affected = (
        bargauge.Panel()
        .title("Affected users per integration")
        .description(
            "Distinct users who triggered an error of each integration (meta.affected_users), "
            "for integrations with at least one affected user."
        )
        .datasource(DATASOURCE)
        .with_target(target(Q_AFFECTED_USERS, "{{name}}", instant=True))
        .unit("short")
        .min(0)
        .reduce_options(last_value())
        .orientation(common_models.VizOrientation.HORIZONTAL)
        .data_links([FIELD_LINK])
        .span(12).height(9)
    )
    last_seen = (
        table.Panel()
        .title("Time since each error's last occurrence")
        .description(
            "Per integration and error code, when the error last occurred (occurred-on), "
            "relative to now. Click a row to open the integration dashboard."
        )
        .datasource(DATASOURCE)
        .with_target(target(Q_LAST_OCCURRENCE, "", instant=True, table_format=True))
        .unit("dateTimeFromNow")
        .data_links([ROW_LINK])
        .with_transformation(organize(
            ["Time", "__name__"],
            {"name": "Name", "acronym": "Acronym", "code": "Code", "Value": "Last occurrence",
             "integration_id": "ID", "instance": "Instance", "job": "Job"},
            ["name", "acronym", "code", "Value", "integration_id", "instance", "job"],
        ))
        .sort_by([common.TableSortByFieldState().display_name("Last occurrence").desc(True)])
        .span(24).height(10)
    )
    return (
        dashboard.Dashboard("Polarity / Overview")
        .uid(OVERVIEW_UID)
        .description("Is every Polarity integration running, which fail, since when, and who "
                     "is affected. Data from polarity-exporter.")
        .tags(TAGS)
        .readonly()
        .refresh("5m")
        .time("now-1h", "now")
        .timezone("browser")
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .with_variable(datasource_variable())
        .with_variable(job_variable())
        .with_variable(instance_variable())
        .with_variable(integration_variable(multi=True))
        .link(
            dashboard.DashboardLink("Polarity integration")
            .type(dm.DashboardLinkType.DASHBOARDS)
            .tags(["polarity-integration"])
            .include_vars(False)
            .keep_time(True)
            .as_dropdown(False)
        )
        .with_row(dashboard.Row("Health"))
        .with_panel(api_up)
        .with_panel(errors_readable)
        .with_panel(counts)
        .with_panel(scrape)
        .with_panel(by_status)
        .with_row(dashboard.Row("Integrations"))
        .with_panel(not_running)
        .with_row(dashboard.Row("Errors"))
        .with_panel(occurrences)
        .with_panel(error_rate)
        .with_panel(top_failing)
        .with_panel(affected)
        .with_panel(last_seen)
    )


def integration() -> dashboard.Dashboard:
    info = (
        table.Panel()
        .title("Integration")
        .description("Name, acronym, version and id of the selected integration, as listed.")
        .datasource(DATASOURCE)
        .with_target(target(Q_I_INFO, "", instant=True, table_format=True))
        .unit("string")
        .with_transformation(organize(
            ["Time", "Value", "__name__"],
            {"name": "Name", "acronym": "Acronym", "version": "Version",
             "integration_id": "ID", "instance": "Instance", "job": "Job"},
            ["name", "acronym", "version", "integration_id", "instance", "job"],
        ))
        .span(12).height(4)
    )
    status_now = (
        stat_panel("Status", "The integration's raw status as Polarity reports it now.", "none")
        .with_target(target(Q_I_STATUS, "{{status}}", instant=True))
        .text_mode(common_models.BigValueTextMode.NAME)
        .span(4).height(4)
    )
    records = (
        stat_panel("Error records",
                   "Number of error records Polarity keeps for this integration.", "short")
        .with_target(target(Q_I_ERROR_RECORDS, "{{instance}}", instant=True))
        .span(4).height(4)
    )
    users = (
        stat_panel("Affected users", "Distinct users who triggered this integration's errors.",
                   "short")
        .with_target(target(Q_I_AFFECTED_USERS, "{{instance}}", instant=True))
        .span(4).height(4)
    )
    history = (
        statetimeline.Panel()
        .title("Status history")
        .description(
            "Running or not over time (top row), and which raw status the integration had "
            "(one row per status seen in the time range)."
        )
        .datasource(DATASOURCE)
        .with_target(target(Q_I_RUNNING, "running", "A"))
        .with_target(target(Q_I_STATUS, "status {{status}}", "B"))
        .unit("none")
        .mappings([dm.ValueMap(options={
            "0": dm.ValueMappingResult(text="not running", color="red", index=0),
            "1": dm.ValueMappingResult(text="yes", color="green", index=1),
        })])
        .span(24).height(7)
    )
    codes = (
        table.Panel()
        .title("Error codes")
        .description(
            "Each error code of the integration with its occurrences (sum of error-count) and "
            "the time since its last occurrence."
        )
        .datasource(DATASOURCE)
        .with_target(target(Q_I_OCCURRENCES, "", "A", instant=True, table_format=True))
        .with_target(target(Q_I_LAST_OCCURRENCE, "", "B", instant=True, table_format=True))
        .unit("short")
        .with_transformation(dm.DataTransformerConfig(id_val="merge", options={}))
        .with_transformation(organize(
            ["Time", "integration_id", "instance", "job"],
            {"code": "Code", "Value #A": "Occurrences", "Value #B": "Last occurrence"},
            ["code", "Value #A", "Value #B"],
        ))
        .override_by_name("Last occurrence", [dm.DynamicConfigValue("unit", "dateTimeFromNow")])
        .sort_by([common.TableSortByFieldState().display_name("Occurrences").desc(True)])
        .span(24).height(9)
    )
    occurrences = (
        timeseries.Panel()
        .title("Error occurrences by code")
        .description("Sum of error-count per code over time; a rising line is a failing code.")
        .datasource(DATASOURCE)
        .with_target(target(Q_I_OCCURRENCES, "{{code}}"))
        .unit("short")
        .min(0)
        .span(12).height(8)
    )
    rate = (
        timeseries.Panel()
        .title("New error occurrences per minute")
        .description("Rate at which occurrences grow, per code; removed records count as a reset.")
        .datasource(DATASOURCE)
        .with_target(target(Q_I_ERROR_RATE, "{{code}}"))
        .unit("cpm")
        .min(0)
        .span(12).height(8)
    )
    return (
        dashboard.Dashboard("Polarity / Integration")
        .uid(INTEGRATION_UID)
        .description("One Polarity integration: status history, error codes with counts and "
                     "last occurrence, affected users. Data from polarity-exporter.")
        .tags([*TAGS, "polarity-integration"])
        .readonly()
        .refresh("5m")
        .time("now-1h", "now")
        .timezone("browser")
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .with_variable(datasource_variable())
        .with_variable(job_variable())
        .with_variable(instance_variable())
        .with_variable(integration_variable(multi=False))
        .link(
            dashboard.DashboardLink("Polarity overview")
            .type(dm.DashboardLinkType.LINK)
            .url(f"/d/{OVERVIEW_UID}/polarity-overview?${{datasource:queryparam}}"
                 "&${job:queryparam}&${instance:queryparam}")
            .keep_time(True)
            .icon("dashboard")
        )
        .with_panel(info)
        .with_panel(status_now)
        .with_panel(records)
        .with_panel(users)
        .with_panel(history)
        .with_panel(codes)
        .with_panel(occurrences)
        .with_panel(rate)
    )


DASHBOARDS = {
    "polarity-overview.json": overview,
    "polarity-integration.json": integration,
}


def render() -> dict[str, str]:
    """File name -> JSON text, exactly as committed."""
    rendered = {}
    for filename, build in DASHBOARDS.items():
        model = build().build()
        # Stable panel ids, in layout order: links and "view panel" URLs use them.
        for panel_id, panel in enumerate(model.panels or [], start=1):
            panel.id_val = panel_id
        document = json.loads(json.dumps(model, cls=JSONEncoder))
        rendered[filename] = json.dumps(grafana_13(document), indent=2, sort_keys=True) + "\n"
    return rendered


# Fields of an interval variable that the SDK writes on every variable; Grafana's own types
# (@grafana/schema's VariableModel, checked by tsc in tests/test_dashboards.py) define them on
# none but the interval kind.
INTERVAL_ONLY = ("auto", "auto_count", "auto_min")


def grafana_13(document: dict[str, Any]) -> dict[str, Any]:
    """The SDK's model as Grafana 12-13's classic schema types it: no interval fields on other
    variables. (The SDK's newest target is Grafana 11.6, schemaVersion 41; no later target is
    published on PyPI.)"""
    for variable in document.get("templating", {}).get("list", []):
        if variable.get("type") != "interval":
            for key in INTERVAL_ONLY:
                variable.pop(key, None)
    return document


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for filename, text in render().items():
        path = OUT_DIR / filename
        if check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(filename)
            continue
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    if stale:
        print(f"out of date, run python grafana/generate.py: {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

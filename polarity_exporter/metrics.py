"""The metric catalogue: every family the exporter writes, declared once.

Name, type, HELP and label names of each family live here and nowhere else. The collector,
the shared scrape (cache age) and the web layer build their families from these entries;
`describe()` lists them; the README's metrics table and the tests' expectations are checked
against them (tests/test_catalogue.py). Adding a metric is one entry here, the value where it
is known, and a test (README, "Adding a metric").

Names follow the Prometheus naming guidelines: base units (seconds), `_total` only on
counters, `_timestamp_seconds` for Unix times, `_info` for metadata with value 1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from prometheus_client.core import Metric

from polarity_exporter.models import Integration

Kind = Literal["gauge", "counter"]
Scope = Literal["scrape", "integration", "exporter", "fleet"]
# One integration's sample of a family read straight off the listing: (its labels besides
# integration_id, raw: the collector cleans them; value), or None for no sample.
PerIntegration = Callable[[Integration], tuple[dict[str, str], float] | None]


@dataclass(frozen=True)
class Family:
    """One metric family as exposed. `name` is the name a query uses (a counter's ends in
    `_total`); `help` may hold `{placeholders}` filled by `new(**values)`."""

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    scope: Scope = "scrape"
    when: str = ""  # when it is exported, if not on every scrape (README)
    doc: str = ""  # the README's longer explanation, when HELP is not enough
    # For families of scope "integration" whose value comes from the listing alone: the
    # collector adds one sample per listed integration, nothing else needs to change.
    per_integration: PerIntegration | None = None

    @property
    def base(self) -> str:
        """The family's name in prometheus_client, which appends `_total` to counters."""
        return self.name.removesuffix("_total") if self.kind == "counter" else self.name

    def new(self, **values: object) -> Metric:
        """An empty family to append samples to (named `self.name`)."""
        return Metric(self.base, *self._texts(values))

    def built(self) -> Built:
        """An empty family that is complete once its builder returns (see Built)."""
        return Built(self.base, *self._texts({}))

    def _texts(self, values: dict[str, object]) -> tuple[str, Kind, str]:
        text = self.help.format(**values) if values else self.help
        # OpenMetrics' `# UNIT` line, as prometheus_client writes it for a family with a unit:
        # every `_seconds` family here is in seconds.
        unit = "seconds" if self.base.endswith("_seconds") else ""
        return text, self.kind, unit


class Built(Metric):
    """A family that nothing changes once its builder has returned: the per-integration
    families, which the collector reuses whole on a later scrape whose records are equal. So
    the exposition keeps its sample lines on it (`lines`), written once for every scrape that
    serves it, and lets its samples go: from then on, the family is its text."""

    lines: bytes | None = None
    deflated: bytes | None = None  # gzipped.py: the lines compressed, once


OTHER = "other"  # the label value that folded codes and orphan ids share

UP = Family(
    "polarity_up", "gauge",
    "1 if this scrape authenticated with Polarity and listed all its integrations, else 0.",
    doc="1 if this scrape authenticated and listed all integrations, else 0. With "
        "`--cache.ttl`, its HELP says that results may be that old")
# polarity_up's HELP when --cache.ttl may serve a result again (the Prometheus guidelines ask
# that a cached result says so).
UP_CACHED = Family(UP.name, UP.kind, UP.help + " Results may be up to {ttl}s old (--cache.ttl).")
SCRAPE_DURATION = Family(
    "polarity_scrape_duration_seconds", "gauge",
    "Time this scrape spent talking to Polarity.")
SCRAPE_TIMEOUT = Family(
    "polarity_scrape_timeout_seconds", "gauge",
    "Time the fetch behind this answer could talk to Polarity: the scrape's deadline less the "
    "time kept to encode the answer.",
    doc="how long the fetch this answer comes from could talk to Polarity: the scrape's "
        "deadline (Prometheus' scrape timeout, `X-Prometheus-Scrape-Timeout-Seconds`, less "
        "`--web.timeout-offset`, within [0.5 s, `--polarity.timeout`]; `--polarity.timeout` "
        "without the header) less the time kept to encode the answer (a fifth, at most 1 s). "
        "When scrapes shared the fetch, the latest of theirs. "
        "`polarity_scrape_duration_seconds` reaching it means Polarity was cut off")
COLLECTOR_SUCCESS = Family(
    "polarity_scrape_collector_success", "gauge",
    "1 if this part of the scrape succeeded, else 0.", ("collector",),
    doc="1 or 0 for each part of the scrape: `collector` = `integrations`, `errors`")
LISTING_COMPLETE = Family(
    "polarity_scrape_listing_complete", "gauge",
    "1 if the paged integration listing added up to the total Polarity announced.",
    when="when the listing was read",
    doc="1 if the paged listing added up to the `meta.page.total` Polarity announced (no "
        "duplicate, empty or missing page). 0 also makes `polarity_up` 0")
UNREADABLE_FIELDS = Family(
    "polarity_scrape_unreadable_fields", "gauge",
    "Fields of Polarity records that could not be read in this scrape.",
    ("collector", "field"), when="for fields that were unreadable",
    doc="fields of Polarity records that could not be read in this scrape (e.g. "
        "`field=\"occurred-on\"`); the record still counts where it can. `field=\"id\"` also "
        "counts integrations dropped because their id maps to the same label as an earlier "
        "one. Logged once per scrape")
RESULT_AGE = Family(
    "polarity_scrape_result_age_seconds", "gauge",
    "Seconds since this result was fetched from Polarity (reused for up to {ttl}s, "
    "--cache.ttl).", when="with `--cache.ttl`",
    doc="seconds since the served result was fetched from Polarity")
ORPHAN_IDS_FOLDED = Family(
    "polarity_scrape_orphan_ids_folded", "gauge",
    "Integration ids named only by error records (not in the listing) that were folded into "
    f'integration_id="{OTHER}" in this scrape (--collector.max-orphan-ids).',
    when="when the errors were read")
ERROR_CODES_FOLDED = Family(
    "polarity_scrape_error_codes_folded", "gauge",
    f'Distinct error codes folded into code="{OTHER}" in this scrape, because an integration '
    "had more than --collector.max-codes.", when="when the errors were read")

INTEGRATION_INFO = Family(
    "polarity_integration_info", "gauge", "Polarity integration metadata; always 1.",
    ("integration_id", "name", "acronym", "version"), "integration",
    doc="1 (a missing attribute becomes an empty label)",
    per_integration=lambda i: ({"name": i.name, "acronym": i.acronym, "version": i.version},
                               1.0))
INTEGRATION_STATUS = Family(
    "polarity_integration_status", "gauge",
    "Raw status of the integration, as reported by Polarity; always 1.",
    ("integration_id", "status"), "integration",
    doc="1, with `status` the raw status string (an open set, not an enum)",
    per_integration=lambda i: ({"status": i.status}, 1.0))
INTEGRATION_RUNNING = Family(
    "polarity_integration_running", "gauge",
    "1 if the integration's status is running, else 0.", ("integration_id",), "integration",
    per_integration=lambda i: ({}, 1.0 if i.status == "running" else 0.0))
INTEGRATION_ERRORS = Family(
    "polarity_integration_errors", "gauge",
    "Number of error records the integration has now.", ("integration_id",), "integration",
    doc="number of error records now (records come and go: a gauge): 0 for an integration "
        "without errors. When the errors endpoint cannot be read, the length of "
        "`relationships.integration-errors.data`")
ERROR_OCCURRENCES = Family(
    "polarity_integration_error_occurrences_total", "counter",
    "How often the integration's errors with this code occurred: the sum of error-count over "
    "its error records. Clearing records in Polarity resets it.",
    ("integration_id", "code"), "integration",
    when="when the errors were read, for codes with a readable error-count",
    doc="sum of `error-count` over the records with that code. Polarity counts up, so this is "
        "a counter: use `rate()`/`increase()`. Removing records makes it drop, which "
        "Prometheus reads as a reset (a partial removal then counts the rest as new; see the "
        "runbook); so can a change in what `code=\"other\"` folds")
ERROR_LAST_OCCURRENCE = Family(
    "polarity_integration_error_last_occurrence_timestamp_seconds", "gauge",
    "Newest occurred-on of the integration's errors with this code, as Unix time.",
    ("integration_id", "code"), "integration",
    when="when the errors were read, for codes with a readable occurred-on",
    doc="newest `occurred-on`, as Unix seconds")
ERROR_AFFECTED_USERS = Family(
    "polarity_integration_error_affected_users", "gauge",
    "Distinct users affected by the integration's errors.", ("integration_id",), "integration",
    when="when the errors were read",
    doc="distinct `meta.affected_users` ids over the integration's records (0 for an "
        "integration without errors)")

BUILD_INFO = Family(
    "polarity_exporter_build_info", "gauge", "The exporter's version; always 1.", ("version",),
    "exporter")

# The exporter's own, on /metrics with --config.file (several servers, /probe).
CONFIG_RELOAD_SUCCESSFUL = Family(
    "polarity_exporter_config_last_reload_successful", "gauge",
    "1 if the last reload of --config.file succeeded, else 0.", (), "fleet",
    doc="1 if the last reload of `--config.file` succeeded (0: the last good targets are "
        "still served)")
CONFIG_RELOAD_TIMESTAMP = Family(
    "polarity_exporter_config_last_reload_success_timestamp_seconds", "gauge",
    "Unix time of the last successful load of --config.file.", (), "fleet")
PROBES = Family(
    "polarity_exporter_probes_total", "counter", "Probes of this target answered.",
    ("target",), "fleet", doc="probes of this target answered, since the exporter started; "
                              "a target removed by a reload loses its series")
PROBE_FAILURES = Family(
    "polarity_exporter_probe_failures_total", "counter",
    "Probes of this target that answered polarity_up 0.", ("target",), "fleet")

# In the order the families are exposed; UP_CACHED is a variant of UP, not a family.
CATALOGUE: tuple[Family, ...] = (
    UP, SCRAPE_DURATION, SCRAPE_TIMEOUT, COLLECTOR_SUCCESS, LISTING_COMPLETE, UNREADABLE_FIELDS,
    RESULT_AGE, ORPHAN_IDS_FOLDED, ERROR_CODES_FOLDED,
    INTEGRATION_INFO, INTEGRATION_STATUS, INTEGRATION_RUNNING, INTEGRATION_ERRORS,
    ERROR_OCCURRENCES, ERROR_LAST_OCCURRENCE, ERROR_AFFECTED_USERS,
    BUILD_INFO,
    CONFIG_RELOAD_SUCCESSFUL, CONFIG_RELOAD_TIMESTAMP, PROBES, PROBE_FAILURES,
)


def describe() -> list[Metric]:
    """Every family, empty: what a registry's describe() would list."""
    return [family.new(ttl="N") if "{ttl}" in family.help else family.new()
            for family in CATALOGUE]


def by_name() -> dict[str, Family]:
    return {family.name: family for family in CATALOGUE}


def markdown_table() -> str:
    """The README's metrics table, from the catalogue (tests/test_catalogue.py keeps the README
    equal to it; `python -m polarity_exporter.metrics` prints it)."""
    rows = ["| metric | type | labels | exported | value |", "|---|---|---|---|---|"]
    for family in CATALOGUE:
        labels = ", ".join(f"`{label}`" for label in family.labels) or "—"
        text = family.doc or family.help.format(ttl="N").rstrip(".")
        when = family.when or ("with `--config.file`" if family.scope == "fleet" else "always")
        rows.append(f"| `{family.name}` | {family.kind} | {labels} | {when} | {text} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")

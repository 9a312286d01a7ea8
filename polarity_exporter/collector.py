"""Records -> metric families, built fresh on every scrape.

Nothing labelled is kept between scrapes: an integration that disappears from Polarity
disappears from /metrics on the next scrape, as the Prometheus guidelines for exporters ask.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from polarity_exporter import __version__
from polarity_exporter.client import Deadline, Listing, PolarityClient, PolarityError
from polarity_exporter.config import CollectorConfig
from polarity_exporter.models import (
    ErrorRecord,
    Integration,
    Problems,
    parse_error,
    parse_integration,
)

log = logging.getLogger(__name__)

OTHER_CODE = "other"
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class LabelCleaner:
    """Make free text safe as a label value: no control characters, bounded length.

    Results are memoised: codes repeat across thousands of records.
    """

    def __init__(self, max_length: int) -> None:
        self._max = max_length
        self._cache: dict[str, str] = {}

    def __call__(self, value: str) -> str:
        cleaned = self._cache.get(value)
        if cleaned is None:
            cleaned = _CONTROL.sub("\ufffd", value)
            if len(cleaned) > self._max:
                cleaned = cleaned[: self._max - 1] + "\u2026"
            if len(self._cache) < 100_000:
                self._cache[value] = cleaned
        return cleaned


@dataclass(slots=True)
class CodeStats:
    occurrences: float = 0.0
    has_count: bool = False  # False: no record with this code had a readable error-count
    last_seen: float | None = None

    def add(self, count: float | None, occurred_on: float | None) -> None:
        if count is not None:
            self.occurrences += count
            self.has_count = True
        if occurred_on is not None and (self.last_seen is None or occurred_on > self.last_seen):
            self.last_seen = occurred_on

    def merge(self, other: CodeStats) -> None:
        self.occurrences += other.occurrences
        self.has_count = self.has_count or other.has_count
        self.add(None, other.last_seen)


@dataclass(slots=True)
class IntegrationErrors:
    records: int = 0
    codes: dict[str, CodeStats] = field(default_factory=dict)
    users: set[str] = field(default_factory=set)


class ErrorSummary:
    """Error records folded per integration as they stream in: memory grows with the number of
    distinct (integration, code) pairs and users, not with the number of records."""

    def __init__(self, clean: LabelCleaner) -> None:
        self._clean = clean
        self.integrations: dict[str, IntegrationErrors] = {}

    def add(self, record: ErrorRecord) -> None:
        entry = self.integrations.get(record.integration_id)
        if entry is None:
            entry = self.integrations[record.integration_id] = IntegrationErrors()
        entry.records += 1
        code = self._clean(record.code)
        stats = entry.codes.get(code)
        if stats is None:
            stats = entry.codes[code] = CodeStats()
        stats.add(record.count, record.occurred_on)
        entry.users.update(record.affected_users)

    def capped_codes(self, integration_id: str, limit: int) -> tuple[dict[str, CodeStats], int]:
        """At most `limit` code series: the most frequent codes, the rest folded into "other".

        Returns the codes and how many distinct codes were folded.
        """
        codes = self.integrations[integration_id].codes
        if len(codes) <= limit:
            return codes, 0
        ranked = sorted(codes.items(), key=lambda item: (-item[1].occurrences, item[0]))
        kept = dict(ranked[: limit - 1])
        rest = ranked[limit - 1:]
        merged = CodeStats()
        for _, stats in rest:
            merged.merge(stats)
        if OTHER_CODE in kept:  # a real code named "other" joins the folded ones
            merged.merge(kept.pop(OTHER_CODE))
        kept[OTHER_CODE] = merged
        return kept, len(rest)


@dataclass
class ScrapeResult:
    """Everything one scrape learnt, before it becomes metric families."""

    authenticated: bool = False
    integrations: list[Integration] | None = None
    listing: Listing | None = None
    errors: ErrorSummary | None = None
    problems: dict[str, Problems] = field(
        default_factory=lambda: {"integrations": Counter(), "errors": Counter()})
    duration: float = 0.0

    @property
    def up(self) -> bool:
        return self.authenticated and self.listing is not None and self.listing.complete


def _gauge(name: str, documentation: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=list(labels))


class PolarityCollector(Collector):
    """A prometheus_client collector that asks Polarity on every collect()."""

    def __init__(self, client: PolarityClient, config: CollectorConfig,
                 default_timeout: float) -> None:
        self._client = client
        self._config = config
        self._default_timeout = default_timeout
        self._clean = LabelCleaner(config.max_label_length)
        # The errors download runs beside the integrations listing, not after it.
        self._errors_pool = ThreadPoolExecutor(2, thread_name_prefix="polarity-errors")

    def describe(self) -> Iterator[Metric]:
        # Registering the collector must not call Polarity: describe the families, empty.
        return iter(_Families(self._config.max_codes).all())

    def collect(self) -> Iterator[Metric]:
        return iter(self.scrape(self._default_timeout))

    def close(self) -> None:
        self._errors_pool.shutdown(wait=True, cancel_futures=True)

    # --- talking to Polarity ------------------------------------------------------------------

    def scrape(self, timeout: float) -> list[Metric]:
        result = self.fetch(Deadline(timeout))
        return self.build(result)

    def fetch(self, deadline: Deadline) -> ScrapeResult:
        result = ScrapeResult()
        started = time.perf_counter()
        try:
            self._client.authenticate(deadline)
            result.authenticated = True
        except PolarityError as exc:
            log.error("cannot authenticate with Polarity", extra={"err": str(exc)})
        if result.authenticated:
            errors = self._errors_pool.submit(self._fetch_errors, deadline,
                                              result.problems["errors"])
            self._fetch_integrations(deadline, result)
            result.errors = errors.result()
        result.duration = time.perf_counter() - started
        self._log_problems(result)
        return result

    def _fetch_integrations(self, deadline: Deadline, result: ScrapeResult) -> None:
        try:
            listing = self._client.list_integrations(deadline)
        except PolarityError as exc:
            log.error("cannot list integrations", extra={"err": str(exc)})
            return
        if not listing.complete:
            log.warning("integration listing is incomplete",
                        extra={"server": self._client.base_url, "err": "; ".join(listing.notes)})
        problems = result.problems["integrations"]
        parsed = (parse_integration(item, problems) for item in listing.items)
        result.listing = listing
        result.integrations = [integration for integration in parsed if integration is not None]

    def _fetch_errors(self, deadline: Deadline, problems: Problems) -> ErrorSummary | None:
        summary = ErrorSummary(self._clean)
        try:
            for item in self._client.iter_errors(deadline):
                record = parse_error(item, problems)
                if record is not None:
                    summary.add(record)
        except PolarityError as exc:
            log.warning("cannot read integration errors", extra={"err": str(exc)})
            return None
        return summary

    @staticmethod
    def _log_problems(result: ScrapeResult) -> None:
        # Once per scrape, not once per record: a bad integration can write thousands.
        for collector, problems in result.problems.items():
            if problems:
                fields = ", ".join(f"{name}={count}" for name, count in sorted(problems.items()))
                log.warning("unreadable fields in Polarity records",
                            extra={"collector": collector, "fields": fields})

    # --- building families --------------------------------------------------------------------

    def build(self, result: ScrapeResult) -> list[Metric]:
        families = _Families(self._config.max_codes)
        families.up.add_metric([], 1.0 if result.up else 0.0)
        families.duration.add_metric([], result.duration)
        families.success.add_metric(["integrations"], 1.0 if result.listing is not None else 0.0)
        families.success.add_metric(["errors"], 1.0 if result.errors is not None else 0.0)
        if result.listing is not None:
            families.listing_complete.add_metric([], 1.0 if result.listing.complete else 0.0)
        for collector, problems in result.problems.items():
            for name, count in sorted(problems.items()):
                families.unreadable.add_metric([collector, name], float(count))
        listed = self._add_integrations(families, result.integrations or [])
        if result.errors is not None:
            self._add_errors(families, result.errors, listed)
        elif result.integrations is not None:
            # The errors endpoint failed (403 for ordinary accounts): fall back to the error ids
            # each integration carries in its relationships.
            for integration in result.integrations:
                if integration.error_refs is not None:
                    families.errors.add_metric([self._clean(integration.id)],
                                               float(integration.error_refs))
        return families.all()

    def _add_integrations(self, families: _Families, integrations: list[Integration]) -> list[str]:
        clean = self._clean
        ids = []
        for integration in integrations:
            label = clean(integration.id)
            ids.append(integration.id)
            families.info.add_metric([label, clean(integration.name), clean(integration.acronym),
                                      clean(integration.version)], 1.0)
            families.status.add_metric([label, clean(integration.status)], 1.0)
            families.running.add_metric([label], 1.0 if integration.status == "running" else 0.0)
        return ids

    def _add_errors(self, families: _Families, summary: ErrorSummary, listed: list[str]) -> None:
        clean = self._clean
        # Listed integrations first, then ids that only the errors endpoint knows (orphans):
        # their errors are real and must not vanish because the listing lacks them.
        known = set(listed)
        orphans = [i for i in summary.integrations if i not in known]
        folded_total = 0
        for integration_id in dict.fromkeys([*listed, *orphans]):
            label = clean(integration_id)
            entry = summary.integrations.get(integration_id)
            if entry is None:
                families.errors.add_metric([label], 0.0)
                families.affected_users.add_metric([label], 0.0)
                continue
            families.errors.add_metric([label], float(entry.records))
            families.affected_users.add_metric([label], float(len(entry.users)))
            codes, folded = summary.capped_codes(integration_id, self._config.max_codes)
            folded_total += folded
            for code, stats in codes.items():
                if stats.has_count:
                    families.occurrences.add_metric([label, code], stats.occurrences)
                if stats.last_seen is not None:
                    families.last_occurrence.add_metric([label, code], stats.last_seen)
        families.folded.add_metric([], float(folded_total))


class _Families:
    """The families of one scrape; their names, help and labels are the public interface."""

    def __init__(self, max_codes: int) -> None:
        self.up = _gauge("polarity_up", "1 if this scrape authenticated with Polarity and "
                         "listed all its integrations, else 0.")
        self.duration = _gauge("polarity_scrape_duration_seconds",
                               "Time this scrape spent talking to Polarity.")
        self.success = _gauge("polarity_scrape_collector_success",
                              "1 if this part of the scrape succeeded, else 0.", ["collector"])
        self.listing_complete = _gauge(
            "polarity_scrape_listing_complete",
            "1 if the paged integration listing added up to the total Polarity announced.")
        self.unreadable = _gauge(
            "polarity_scrape_unreadable_fields",
            "Fields of Polarity records that could not be read in this scrape.",
            ["collector", "field"])
        self.folded = _gauge(
            "polarity_scrape_error_codes_folded",
            f"Distinct error codes folded into code=\"{OTHER_CODE}\" in this scrape, because an "
            f"integration had more than {max_codes}.")
        self.info = _gauge("polarity_integration_info", "Polarity integration metadata.",
                           ["integration_id", "name", "acronym", "version"])
        self.status = _gauge("polarity_integration_status",
                             "Raw status of the integration, as reported by Polarity.",
                             ["integration_id", "status"])
        self.running = _gauge("polarity_integration_running",
                              "1 if the integration's status is running, else 0.",
                              ["integration_id"])
        self.errors = _gauge("polarity_integration_errors",
                             "Number of error records of the integration.", ["integration_id"])
        self.occurrences = _gauge(
            "polarity_integration_error_occurrences",
            "Sum of error-count over the integration's error records with this code.",
            ["integration_id", "code"])
        self.last_occurrence = _gauge(
            "polarity_integration_error_last_occurrence_timestamp_seconds",
            "Newest occurred-on of the integration's errors with this code, as Unix time.",
            ["integration_id", "code"])
        self.affected_users = _gauge(
            "polarity_integration_error_affected_users",
            "Distinct users affected by the integration's errors.", ["integration_id"])
        self.build_info = _gauge("polarity_exporter_build_info",
                                 "The exporter's version; always 1.", ["version"])
        self.build_info.add_metric([__version__], 1.0)

    def all(self) -> list[Metric]:
        return list(vars(self).values())

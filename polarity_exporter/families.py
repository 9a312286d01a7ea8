"""A scrape's records -> its metric families (metrics.CATALOGUE).

What one scrape learnt (ScrapeResult, filled by collector.py) is built into fresh families on
every scrape; the per-integration families of the last scrape are served again only where the
new records are equal (reuse.py): an integration that disappears from Polarity disappears from
/metrics on the next scrape, as the Prometheus guidelines for exporters ask.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field, replace

from prometheus_client.core import Metric
from prometheus_client.samples import Sample

from polarity_exporter import __version__, metrics
from polarity_exporter.client import Listing
from polarity_exporter.config import CollectorConfig
from polarity_exporter.models import Integration, Problems
from polarity_exporter.reuse import Errored, ErrorsKey, Listed, Reuse, errors_key
from polarity_exporter.summary import (
    OTHER_ID,
    ErrorSummary,
    IntegrationErrors,
    LabelCleaner,
    capped_codes,
    merge_into,
)

__all__ = ["ScrapeResult", "build_families"]

log = logging.getLogger(__name__)


@dataclass
class ScrapeResult:
    """Everything one scrape learnt, before it becomes metric families."""

    authenticated: bool = False
    integrations: dict[str, Integration] | None = None  # by label value
    listing: Listing[Integration] | None = None
    errors: ErrorSummary | None = None
    errors_digest: bytes | None = None  # SHA-256 of the errors body, when hashed whole
    errors_size: int | None = None  # its bytes
    # The kept errors' families, when the errors body was the one they were built from (then
    # `errors` is empty: the body was not decoded)
    errors_kept: Errored | None = None
    problems: dict[str, Problems] = field(
        default_factory=lambda: {"integrations": Counter(), "errors": Counter()})
    duration: float = 0.0
    timeout: float = 0.0  # the deadline this scrape was given, in seconds
    deadline_hit: bool = False  # some part ran out of time: the result says more of the
    # deadline than of Polarity, so it is not reused by --cache.ttl
    errors_enabled: bool = True  # off: no errors request, and no metrics that need it
    failures: dict[str, str] = field(default_factory=dict)  # part -> why it failed (one line)

    def outcome(self) -> str:
        """One line for the landing page: up, or which part failed and why."""
        if self.up:
            return "up"
        if self.failures:
            return "down: " + "; ".join(f"{part}: {why}" for part, why in
                                        self.failures.items())
        if self.listing is not None and not self.listing.complete:
            return "down: listing incomplete: " + "; ".join(self.listing.notes)
        return "down"

    @property
    def up(self) -> bool:
        return self.authenticated and self.listing is not None and self.listing.complete


def build_families(result: ScrapeResult, config: CollectorConfig,
                   cache_ttl: float = 0.0, reuse: Reuse | None = None) -> list[Metric]:
    """The scrape's metric families (metrics.CATALOGUE), in one pass over its integrations,
    then the orphan ids.

    This runs on every scrape over up to ~100k samples, so samples are appended directly as
    prometheus_client `Sample`s (`add_metric` would zip a label list into a new dict for every
    sample), and the samples of one integration share their label dicts. The encoders only read
    labels, never change them. Every label value was cleaned before (unique_labels, ErrorSummary)
    or is cleaned here. With `reuse`, the per-integration families of the last scrape are
    served again where their records are equal (reuse.py).
    """
    clean = LabelCleaner(config.max_label_length)
    families = _Families(cache_ttl)
    sample = families.sample
    sample(metrics.UP, {}, 1.0 if result.up else 0.0)
    sample(metrics.SCRAPE_DURATION, {}, result.duration)
    sample(metrics.SCRAPE_TIMEOUT, {}, result.timeout)
    sample(metrics.COLLECTOR_SUCCESS, {"collector": "integrations"},
           1.0 if result.listing is not None else 0.0)
    if result.errors_enabled:
        sample(metrics.COLLECTOR_SUCCESS, {"collector": "errors"},
               1.0 if result.errors is not None else 0.0)
    if result.listing is not None:
        sample(metrics.LISTING_COMPLETE, {}, 1.0 if result.listing.complete else 0.0)
    sample(metrics.BUILD_INFO, {"version": __version__}, 1.0)
    integrations = result.integrations or {}
    if reuse is not None and not integrations:  # no listing: nothing to keep, nor to hold
        reuse.forget()
        reuse = None
    by_ids: dict[str, dict[str, str]] = {}

    def label_dicts() -> dict[str, dict[str, str]]:
        # One label dict per integration, shared by all its samples (the encoders render it
        # once), made only for the groups built in this scrape.
        if len(by_ids) != len(integrations):
            by_ids.update((label, {"integration_id": label}) for label in integrations)
        return by_ids

    listed = reuse.listed_for(integrations) if reuse is not None else None
    if listed is None:
        listed = _listed(integrations, label_dicts(), clean)
        if reuse is not None:
            reuse.listed = listed
    result.problems["integrations"].update(listed.problems)
    families.use(listed.families)
    if result.errors is not None:
        errored = result.errors_kept  # the errors body the kept families were built from
        if errored is None:
            key = errors_key(result.errors.integrations) if reuse is not None else ()
            errored = reuse.errored_for(integrations, key) if reuse is not None else None
            if errored is None:
                errored = _errored(integrations, label_dicts(), result.errors, config, key)
            if reuse is not None:  # not a build that merged orphans (see errors_key)
                reuse.errored = None if errored.orphans_folded else replace(
                    errored, digest=result.errors_digest, size=result.errors_size,
                    problems=Counter(result.problems["errors"]))
        families.use(errored.families)
        sample(metrics.ORPHAN_IDS_FOLDED, {}, errored.orphans_folded)
        sample(metrics.ERROR_CODES_FOLDED, {}, errored.codes_folded)
    else:
        if reuse is not None:
            reuse.errored = None
        for label, integration in integrations.items():
            if integration.error_refs is not None:
                # The errors endpoint failed (403 for ordinary accounts): fall back to the
                # error ids each integration carries in its relationships.
                sample(metrics.INTEGRATION_ERRORS, {"integration_id": label},
                       float(integration.error_refs))
    # Last: the listing's readers count the records they could not read.
    for collector, counts in result.problems.items():
        for name, count in sorted(counts.items()):
            sample(metrics.UNREADABLE_FIELDS, {"collector": collector, "field": name},
                   float(count))
    return families.all()


def _listed(integrations: dict[str, Integration], by_ids: dict[str, dict[str, str]],
            clean: LabelCleaner) -> Listed:
    """The families of metrics.Family.per_integration, one sample per integration each."""
    families: dict[metrics.Family, Metric] = {}
    problems: Counter[str] = Counter()
    for spec in metrics.CATALOGUE:
        if spec.per_integration is not None:
            families[spec] = spec.built()
            _Listed(spec, families[spec]).add_all(integrations, by_ids, clean, problems)
    return Listed(integrations, families, problems)


def _errored(integrations: dict[str, Integration], by_ids: dict[str, dict[str, str]],
             summary: ErrorSummary, config: CollectorConfig,
             key: ErrorsKey) -> Errored:
    """The families of the error summary: every listed integration (an explicit zero without
    errors), then the ids only the errors name."""
    errors = _ErrorSamples(summary, config)
    for label in integrations:
        errors.add(label, by_ids[label])
    orphans_folded = errors.add_orphans()
    return Errored(list(integrations), key, errors.families,
                   float(orphans_folded), float(errors.codes_folded))


class _Listed:
    """Adds the samples of one per-integration family (metrics.Family.per_integration)."""

    def __init__(self, spec: metrics.Family, family: Metric) -> None:
        assert spec.per_integration is not None
        self.read, self.name, self.family = spec.per_integration, spec.name, family
        self.more = frozenset(spec.labels) - {"integration_id"}  # what the reader must return

    def add_all(self, integrations: dict[str, Integration], by_ids: dict[str, dict[str, str]],
                clean: LabelCleaner, problems: Problems) -> None:
        """One sample per integration, in one loop (this runs for every listed integration of
        every scrape). A reader that fails on a record (a bug, or a value it did not expect)
        costs that sample only, counted under the family's name in
        polarity_scrape_unreadable_fields."""
        read, name, more_labels, append = self.read, self.name, self.more, \
            self.family.samples.append
        for label, integration in integrations.items():
            try:
                found = read(integration)
                if found is None:
                    continue
                more, value = found
                if not more and not more_labels:
                    labels = by_ids[label]
                elif more.keys() == more_labels:
                    labels = {k: clean(v) for k, v in more.items()}
                    labels["integration_id"] = label
                else:
                    raise ValueError(f"labels {sorted(more)} are not the catalogue's")
                append(Sample(name, labels, float(value)))
            except Exception:
                problems[name] += 1


class _Families:
    """The families of one scrape, fresh and empty, one per catalogue entry."""

    def __init__(self, cache_ttl: float = 0.0) -> None:
        self._by_spec: dict[metrics.Family, Metric] = {}
        for spec in metrics.CATALOGUE:
            if spec is metrics.RESULT_AGE or spec.scope == "fleet":
                continue  # the shared scrape (cached answers) and the fleet add these
            if spec is metrics.UP and cache_ttl > 0:
                self._by_spec[spec] = metrics.UP_CACHED.new(ttl=f"{cache_ttl:g}")
            else:
                self._by_spec[spec] = spec.new()

    def __getitem__(self, spec: metrics.Family) -> Metric:
        return self._by_spec[spec]

    def sample(self, spec: metrics.Family, labels: dict[str, str], value: float) -> None:
        family = self._by_spec[spec]
        family.samples.append(Sample(spec.name, labels, value))

    def use(self, built: dict[metrics.Family, Metric]) -> None:
        """Serve these families (built now or for an earlier scrape) in their specs' places."""
        self._by_spec.update(built)

    def all(self) -> list[Metric]:
        return list(self._by_spec.values())


class _ErrorSamples:
    """Appends the error samples of one integration label at a time, each label once."""

    def __init__(self, summary: ErrorSummary, config: CollectorConfig) -> None:
        self.families: dict[metrics.Family, Metric] = {spec: spec.built()
                                                       for spec in _ERROR_FAMILIES}
        self._summary = summary
        self._max_codes = config.max_codes
        self._max_orphans = config.max_orphan_ids
        self._done: set[str] = set()
        self.codes_folded = 0

    def add(self, label: str, by_id: dict[str, str]) -> None:
        self._done.add(label)
        entry = self._summary.integrations.get(label)
        if entry is None:  # listed, without errors: an explicit zero
            entry = IntegrationErrors()
        self._add_entry(entry, by_id)

    def _add_entry(self, entry: IntegrationErrors, by_id: dict[str, str]) -> None:
        errors = self.families[metrics.INTEGRATION_ERRORS]
        users = self.families[metrics.ERROR_AFFECTED_USERS]
        errors.samples.append(Sample(errors.name, by_id, float(entry.records)))
        users.samples.append(Sample(users.name, by_id, float(len(entry.users))))
        codes = entry.codes
        self.codes_folded += entry.codes_overflowed  # at least one more, summed as they arrived
        if len(codes) > self._max_codes:
            codes, folded = capped_codes(codes, self._max_codes)
            self.codes_folded += folded
        occurrences = self.families[metrics.ERROR_OCCURRENCES]
        last = self.families[metrics.ERROR_LAST_OCCURRENCE]
        label = by_id["integration_id"]
        for code, stats in codes.items():
            by_code = {"integration_id": label, "code": code}
            if stats.has_count:
                occurrences.samples.append(Sample(metrics.ERROR_OCCURRENCES.name, by_code,
                                                  stats.occurrences))
            if stats.last_seen is not None:
                last.samples.append(Sample(last.name, by_code, stats.last_seen))

    def add_orphans(self) -> int:
        """Ids only the errors endpoint knows (uninstalled integrations, say): their errors are
        real and must not vanish because the listing lacks them. At most `max_orphan_ids`
        series, the ids with most records first; the rest fold into integration_id="other".
        Returns how many ids were folded."""
        orphans = [(label, entry) for label, entry in self._summary.integrations.items()
                   if label not in self._done]
        folded = 0
        if len(orphans) > self._max_orphans:
            orphans.sort(key=lambda item: (-item[1].records, item[0]))
            kept, rest = orphans[: self._max_orphans - 1], orphans[self._max_orphans - 1:]
            # An orphan id that is literally "other" joins the folded ones: one series.
            rest += [item for item in kept if item[0] == OTHER_ID]
            kept = [item for item in kept if item[0] != OTHER_ID]
            merged = IntegrationErrors()
            for _, entry in rest:
                merge_into(merged, entry)
            folded = len(rest) - any(label == OTHER_ID for label, _ in rest)
            if OTHER_ID in self._done:
                # A listed integration is named "other": its series are its own, so the folded
                # orphans have no series of their own. Counted, and said once per scrape.
                log.warning("orphan error ids not exported: a listed integration is named "
                            f"{OTHER_ID!r}", extra={"ids": len(rest), "records": merged.records})
            else:
                kept.append((OTHER_ID, merged))
            orphans = kept
        for label, entry in orphans:
            self._add_entry(entry, {"integration_id": label})
        return folded


# The families _ErrorSamples builds, in the catalogue's order.
_ERROR_FAMILIES = (metrics.INTEGRATION_ERRORS, metrics.ERROR_OCCURRENCES,
                   metrics.ERROR_LAST_OCCURRENCE, metrics.ERROR_AFFECTED_USERS)

"""What one scrape learns of Polarity's error records, folded per integration as they stream in,
and label values made safe. Memory grows with the distinct (integration, code) pairs and users,
not with the records: each record is dropped once folded.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from polarity_exporter import metrics
from polarity_exporter.documented import (
    DocumentedErrors,
    DocumentedPage,
    documented_integrations,
    documented_rows,
)
from polarity_exporter.models import MAX_TEXT, ErrorRecord, Integration, Problems, parse_integration

OTHER_CODE = metrics.OTHER
# Control characters become a space: a legend showing U+FFFD reads as broken data, a space as
# the separator it almost always was (a tab, a newline).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Lone surrogates (JSON may escape them, "\ud800") cannot be encoded as UTF-8, so one in a label
# would fail the whole exposition: they are replaced by U+FFFD, as invalid UTF-8 is.
_SURROGATE = re.compile(r"[\ud800-\udfff]")


class LabelCleaner:
    """Make free text safe as a label value: no control characters, bounded length.

    Called once per error record (on its code), so the usual case, a short printable string, is
    a single C-level check; no cache, so nothing grows across scrapes.
    """

    def __init__(self, max_length: int) -> None:
        self._max = max_length

    def __call__(self, value: str) -> str:
        # isprintable() is False for every character the patterns replace (categories Cc, Cs).
        if len(value) <= self._max and value.isprintable():
            return value
        cleaned = _SURROGATE.sub("\ufffd", _CONTROL.sub(" ", value))
        if len(cleaned) > self._max:
            cleaned = cleaned[: self._max - 1] + "\u2026"
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


# What one scrape's error summary keeps, whatever the errors body holds: distinct integration
# ids (ten times the largest listing), codes per integration (the most --collector.max-codes
# allows), and (integration, user) pairs. Beyond them records are counted, not kept.
MAX_SUMMARY_IDS = 100_000
MAX_SUMMARY_CODES = 1000
MAX_SUMMARY_USERS = 500_000
LABEL_CACHE_SIZE = 10_000  # raw code -> label, kept for the scrape


@dataclass(slots=True)
class IntegrationErrors:
    records: int = 0
    codes: dict[str, CodeStats] = field(default_factory=dict)
    users: set[str] = field(default_factory=set)
    codes_overflowed: bool = False  # codes past MAX_SUMMARY_CODES went straight to "other"


class ErrorSummary:
    """Error records folded per integration as they stream in: memory grows with the number of
    distinct (integration, code) pairs and users, not with the number of records.

    Keyed by the integration's *label*: two ids that clean to the same label value (they differ
    only in control characters, or after the length cut) are merged, never two series.
    """

    def __init__(self, clean: LabelCleaner, problems: Problems | None = None) -> None:
        self.clean = clean
        self.problems: Problems = problems if problems is not None else Counter()
        self.integrations: dict[str, IntegrationErrors] = {}
        self._users = 0  # distinct (integration, user) pairs kept
        # Raw id or code -> its label, for this scrape: both repeat across thousands of records.
        self._ids: dict[str, str] = {}
        self._labels: dict[str, str] = {}

    def add(self, record: ErrorRecord) -> None:
        self.fold(record.integration_id, record.code, record.count, record.occurred_on,
                  record.affected_users)

    def add_documented(self, batch: DocumentedErrors) -> None:
        """A body in the documented shape, folded without a record object per record."""
        fold = self.fold
        for integration_id, code, count, occurred_on, users in documented_rows(batch):
            fold(integration_id, code, count, occurred_on, users)

    def fold(self, integration_id: str, code: str, count: float | None,
             occurred_on: float | None, affected_users: tuple[str, ...]) -> None:
        # Runs once per record: the label lookups are inlined.
        label = self._ids.get(integration_id)
        if label is None:
            if len(self._ids) >= MAX_SUMMARY_IDS:
                self.problems["integration-id"] += 1  # beyond any real server: not kept
                return
            label = self._ids[integration_id] = self.clean(integration_id)
        entry = self.integrations.get(label)
        if entry is None:
            entry = self.integrations[label] = IntegrationErrors()
        entry.records += 1
        shown = self._labels.get(code)
        if shown is None:
            shown = self.clean(code)
            if len(self._labels) < LABEL_CACHE_SIZE:
                self._labels[code] = shown
        stats = entry.codes.get(shown)
        if stats is None:
            if len(entry.codes) >= MAX_SUMMARY_CODES:  # summed into "other" as they arrive
                shown, entry.codes_overflowed = OTHER_CODE, True
                stats = entry.codes.get(OTHER_CODE)
            if stats is None:
                stats = entry.codes[shown] = CodeStats()
        stats.add(count, occurred_on)
        if affected_users:
            if self._users + len(affected_users) > MAX_SUMMARY_USERS:
                self.problems["meta.affected_users"] += 1  # the count is a lower bound
                return
            before = len(entry.users)
            entry.users.update(affected_users)
            self._users += len(entry.users) - before


def capped_codes(codes: dict[str, CodeStats], limit: int) -> tuple[dict[str, CodeStats], int]:
    """At most `limit` code series: the most frequent codes, the rest folded into "other".

    Returns the codes and how many distinct codes were folded.
    """
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


def parse_integrations(items: Iterable[Any] | DocumentedPage, problems: Problems,
                       max_text: int = MAX_TEXT) -> list[Integration]:
    """One page's integrations, from generic items or a page in the documented shape."""
    if isinstance(items, DocumentedPage):
        return documented_integrations(items, problems, max_text)
    parsed = (parse_integration(item, problems, max_text) for item in items)
    return [integration for integration in parsed if integration is not None]


def summarize_errors(records: Iterable[ErrorRecord | DocumentedErrors], clean: LabelCleaner,
                     problems: Problems) -> ErrorSummary:
    """Fold error records into an ErrorSummary as they arrive; each record is dropped at once.
    A whole body in the documented shape comes as one DocumentedErrors, folded in one loop.

    The hot loop of a scrape (one pass per record, hundreds of thousands of them): no logging
    here, unreadable fields are only counted in `problems` and logged once per scrape.
    """
    summary = ErrorSummary(clean, problems)
    add = summary.add
    for record in records:
        if isinstance(record, DocumentedErrors):
            summary.add_documented(record)
        else:
            add(record)
    return summary


def unique_labels(integrations: Iterable[Integration], clean: LabelCleaner,
                  problems: Problems) -> dict[str, Integration]:
    """Integrations by label value. Ids are already normalised (5 and "5" are one id, and the
    listing dropped repeats); two that still clean to the same label (they differ only in
    control characters or after the length cut) would be two series with one label set, which
    Prometheus rejects: the later is dropped and counted as an unreadable `id`."""
    by_label: dict[str, Integration] = {}
    for integration in integrations:
        label = clean(integration.id)
        if label in by_label:
            problems["id"] += 1
            continue
        by_label[label] = integration
    return by_label


OTHER_ID = metrics.OTHER


def merge_into(target: IntegrationErrors, entry: IntegrationErrors) -> None:
    target.records += entry.records
    target.users |= entry.users
    for code, stats in entry.codes.items():
        mine = target.codes.get(code)
        if mine is None:
            target.codes[code] = mine = CodeStats()
        mine.merge(stats)

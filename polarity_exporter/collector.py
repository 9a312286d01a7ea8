"""Records -> metric families, from the records read on every scrape.

The per-integration families of the last scrape are kept and served again only where the new
records are equal (reuse.py): an integration that disappears from Polarity disappears from
/metrics on the next scrape, as the Prometheus guidelines for exporters ask.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

from prometheus_client.core import Metric
from prometheus_client.samples import Sample

from polarity_exporter import __version__, metrics, pools
from polarity_exporter.client import Listing, PolarityClient
from polarity_exporter.config import CollectorConfig
from polarity_exporter.deadline import Deadline
from polarity_exporter.documented import DocumentedPage
from polarity_exporter.errors import DeadlineExceeded, PolarityError
from polarity_exporter.events import ErrorEvents, Read
from polarity_exporter.models import Integration, Problems
from polarity_exporter.reuse import Errored, ErrorsKey, Listed, Reuse, errors_key
from polarity_exporter.summary import (
    OTHER_ID,
    ErrorSummary,
    IntegrationErrors,
    LabelCleaner,
    capped_codes,
    merge_into,
    parse_integrations,
    summarize_errors,
    unique_labels,
)

__all__ = ["LabelCleaner", "PolarityCollector", "ScrapeResult", "build_families",
           "parse_integrations", "summarize_errors", "unique_labels"]

log = logging.getLogger(__name__)

@dataclass
class ScrapeResult:
    """Everything one scrape learnt, before it becomes metric families."""

    authenticated: bool = False
    integrations: dict[str, Integration] | None = None  # by label value
    listing: Listing[Integration] | None = None
    errors: ErrorSummary | None = None
    errors_digest: bytes | None = None  # SHA-256 of the errors body, when read whole
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


def _integration_id(integration: Integration) -> str:
    return integration.id


class PolarityCollector:
    """Asks Polarity on every scrape and builds the families of metrics.CATALOGUE.

    Its one entry point is `scrape(deadline)`, called by the shared scrape with the deadline of
    the requests waiting for it; it is not a prometheus_client collector, because a registry's
    collect() has no deadline to give.
    """

    def __init__(self, client: PolarityClient, config: CollectorConfig,
                 cache_ttl: float = 0.0, *, errors: bool | None = None,
                 events: ErrorEvents | None = None) -> None:
        self._client = client
        self._config = config
        self._errors = config.errors if errors is None else errors
        self._events = events
        self._read: Read | None = None  # the errors read of the fetch in flight (events)
        self._cache_ttl = cache_ttl  # said in polarity_up's HELP when results may be reused
        self._clean = LabelCleaner(config.max_label_length)
        self._reuse = Reuse()  # the last scrape's per-integration families

    # --- talking to Polarity ------------------------------------------------------------------

    def scrape(self, deadline: Deadline) -> tuple[list[Metric], bool]:
        """The scrape's families, and whether they may be reused (no part ran out of time).

        `deadline` is when to stop talking to Polarity (the scrape's own deadline less the time
        kept to encode the answer), reported as polarity_scrape_timeout_seconds.
        """
        result = self.fetch(deadline)
        result.timeout = deadline.seconds  # as extended by scrapes that joined the fetch
        if deadline.log is not None:
            deadline.log.outcome = result.outcome()
            deadline.note(f"outcome: {deadline.log.outcome}")
        return self.build(result), not result.deadline_hit

    def fetch(self, deadline: Deadline) -> ScrapeResult:
        result = ScrapeResult(timeout=deadline.seconds, errors_enabled=self._errors)
        started = time.perf_counter()
        deadline.note(f"fetch from {self._client.base_url}, deadline {deadline.seconds:.2f}s"
                      + ("" if self._errors else ", errors collector off"))
        result.authenticated = self._part("authentication", "cannot authenticate with Polarity",
                                          result, self._client.authenticate, deadline) is not None
        if result.authenticated:
            # The errors download runs beside the listing, on a thread kept for it (pools.py).
            listed = threading.Event()  # the listing is done, read or failed (_SameBody)
            errors = pools.errors.submit(self._part, "errors", "cannot read integration errors",
                                         result, self._fetch_errors, deadline, result,
                                         listed) if self._errors else None
            try:
                self._part("integrations", "cannot list integrations", result,
                           self._fetch_integrations, deadline, result)
            finally:
                listed.set()
            result.errors = errors.result() if errors is not None else None
            self._emit_events(result)
        result.duration = time.perf_counter() - started
        self._log_problems(result, deadline)
        return result

    def _part(self, part: str, failure: str, result: ScrapeResult, fn: Any, *args: Any) -> Any:
        """Run one part of a scrape: its failure is logged once and costs only that part.

        Returns what `fn` returns (True when it returns None), or None when it failed.
        """
        deadline: Deadline = args[0]
        scrub = self._client.transport.scrub  # the last net: each message is scrubbed at its source
        try:
            value = fn(*args)
        except PolarityError as exc:
            result.deadline_hit |= isinstance(exc, DeadlineExceeded)
            level = logging.WARNING if failure.endswith("errors") else logging.ERROR
            err = scrub(str(exc))
            log.log(level, failure, extra={"err": err})
            result.failures[part] = err
            deadline.note(f"part {part}: failed: {err}")
            return None
        except Exception as exc:  # a bug, or input beyond every bound: never the whole scrape
            err = f"unexpected {type(exc).__name__}: {' '.join(scrub(str(exc)).split())[:200]}"
            log.error(failure, exc_info=exc, extra={"err": err})
            result.failures[part] = err
            deadline.note(f"part {part}: failed: {err}")
            return None
        deadline.note(f"part {part}: ok")
        return True if value is None else value

    def _fetch_integrations(self, deadline: Deadline, result: ScrapeResult) -> None:
        problems = result.problems["integrations"]

        max_text = self._config.max_label_length + 1  # the cleaner still sees it was cut

        def parse(items: list[Any] | DocumentedPage, page: Problems) -> list[Integration]:
            # Called for one page at a time (the client decodes pages one by one).
            return parse_integrations(items, page, max_text)

        listing = self._client.list_integrations(deadline, parse, _integration_id,
                                                 self._reuse.pages)
        problems.update(listing.problems)
        # Kept for the next listing only when complete: then they hold the integrations kept
        # anyway (at most MAX_INTEGRATIONS), never what a broken server sent beyond them.
        self._reuse.pages = listing.pages if listing.complete else {}
        listing.pages = {}
        if not listing.complete:
            log.warning("integration listing is incomplete",
                        extra={"server": self._client.base_url, "err": "; ".join(listing.notes)})
        result.integrations = unique_labels(listing.items, self._clean, problems)
        listing.items = []  # kept once, by label
        result.listing = listing

    def _fetch_errors(self, deadline: Deadline, result: ScrapeResult,
                      listed: threading.Event) -> ErrorSummary:
        problems = result.problems["errors"]
        events = self._events
        if events is None:
            same = _SameBody(self._reuse, result, listed)
            summary = summarize_errors(self._client.read_errors(deadline, problems, known=same),
                                       self._clean, problems)
            result.errors_digest, result.errors_kept = same.digest, same.kept
            if same.kept is not None:  # the same bytes: the same fields unreadable
                problems.clear()
                problems.update(same.kept.problems or {})
                return summary
        else:
            # One fetch at a time per collector (the shared scrape's single flight).
            self._read = read = Read()
            records = self._client.iter_errors(deadline, problems, text=True)
            summary = summarize_errors(events.watch(records, read), self._clean, problems)
        deadline.note(f"errors: {sum(e.records for e in summary.integrations.values())} "
                      f"records of {len(summary.integrations)} integration ids")
        return summary

    def _emit_events(self, result: ScrapeResult) -> None:
        read, self._read = self._read, None
        if self._events is None or read is None or result.errors is None:
            return  # a failed read changes nothing
        names = {integration.id: integration.name
                 for integration in (result.integrations or {}).values()}
        self._events.commit(read, names)

    @staticmethod
    def _log_problems(result: ScrapeResult, deadline: Deadline) -> None:
        # Once per scrape, not once per record: a bad integration can write thousands.
        for collector, problems in result.problems.items():
            if problems:
                fields = ", ".join(f"{name}={count}" for name, count in sorted(problems.items()))
                log.warning("unreadable fields in Polarity records",
                            extra={"collector": collector, "fields": fields})
                deadline.note(f"part {collector}: unreadable fields: {fields}")

    def build(self, result: ScrapeResult) -> list[Metric]:
        return build_families(result, self._config, self._cache_ttl, self._reuse)


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
                    errored, digest=result.errors_digest,
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


class _SameBody:
    """client.read_errors' `known`, on the errors thread: whether a whole errors body is the
    one the kept errors' families were built from, for the integrations this scrape lists.

    Never waits for the listing (read beside it on the fetch thread): when the listing is not
    done yet, the body is decoded at once, as if nothing were kept. Waiting, then decoding
    because the listing changed or failed, would have put the decode after the listing
    instead of beside it, and late answers past the deadline (found by an attack)."""

    def __init__(self, reuse: Reuse, result: ScrapeResult, listed: threading.Event) -> None:
        self._reuse, self._result, self._listed = reuse, result, listed
        self.digest: bytes | None = None
        self.kept: Errored | None = None

    def __call__(self, digest: bytes) -> bool:
        self.digest = digest
        kept = self._reuse.errored_from(digest)
        if kept is None or not self._listed.is_set():
            return False
        integrations = self._result.integrations
        if not integrations or kept.labels != list(integrations):
            return False  # other integrations listed: the families change, built anew
        self.kept = kept
        return True


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

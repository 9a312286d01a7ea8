"""Asks Polarity on every scrape (authentication, the listing, the errors body beside it) and
hands what it learnt (families.ScrapeResult) to families.build_families.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from prometheus_client.core import Metric

from polarity_exporter import pools
from polarity_exporter.client import PolarityClient
from polarity_exporter.config import CollectorConfig
from polarity_exporter.deadline import Deadline
from polarity_exporter.documented import DocumentedPage
from polarity_exporter.errors import DeadlineExceeded, PolarityError
from polarity_exporter.events import ErrorEvents, Read
from polarity_exporter.families import ScrapeResult, build_families
from polarity_exporter.models import Integration, Problems
from polarity_exporter.reuse import Reuse, SameBody
from polarity_exporter.summary import (
    ErrorSummary,
    LabelCleaner,
    parse_integrations,
    summarize_errors,
    unique_labels,
)

__all__ = ["LabelCleaner", "PolarityCollector", "ScrapeResult", "build_families",
           "parse_integrations", "summarize_errors", "unique_labels"]

log = logging.getLogger(__name__)


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
            listed = threading.Event()  # the listing is done, read or failed (SameBody)
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
            same = SameBody(self._reuse, lambda: result.integrations, listed)
            summary = summarize_errors(self._client.read_errors(deadline, problems, known=same),
                                       self._clean, problems)
            result.errors_digest, result.errors_size = same.digest, same.size
            result.errors_kept = same.kept
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

    def build(self, result: ScrapeResult, keep: bool = True) -> list[Metric]:
        """The families of `result`; without `keep` (an answer given while a fetch runs, not
        that fetch's result) what the target's last scrape kept is neither used nor dropped."""
        return build_families(result, self._config, self._cache_ttl,
                              self._reuse if keep else None)

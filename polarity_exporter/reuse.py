"""The per-integration families of a target's last scrape, and the records they were built
from: a later scrape whose records are equal serves the same families again.

Most scrapes of a server find what the last one found: the same integrations, the same error
records. Building and encoding the per-integration families was half the CPU of a scrape of
10,000 integrations (bench/README.md); comparing what they are built from with the last
scrape's costs a tenth of that. The comparison is exact (equal values in the same order, so the
families and their text are byte for byte what a build would give) and made per group: the
listing's families (info, status, running) from the integrations, and the errors' families
from a key of the error summary (errors_key), each held for as long as its own input is equal.
A changed integration or record means a build, as before.

An errors body byte for byte the one the kept errors' families were built from (the same
SHA-256 digest and size, client.read_errors; a streamed one as held.py allows) is not even
decoded when the listing, read beside it, is done by then (for a held body: by the end of
any piece of its decode) and lists the same labels: the same bytes fold to the same summary
(the label cleaner is fixed for a collector's life), so the families and the fields it could
not read are those kept. Hashing costs a seventh of decoding
and folding (5 MB: 2.8 against 21 ms), and hashlib lets the GIL go meanwhile.

Memory, per target between scrapes: the listed integrations, the errors key (a few tuples per
integration and code, no affected user ids), and the families as their encoded text (the
exposition lets their samples go). A scrape without a listing or without errors lets the
groups it did not build go.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client.core import Metric

from polarity_exporter import metrics
from polarity_exporter.client import KeptPages
from polarity_exporter.models import Integration
from polarity_exporter.summary import IntegrationErrors


@dataclass(frozen=True)
class Listed:
    """The families built from the listing alone, and what they were built from."""

    integrations: dict[str, Integration]  # by label, in the listing's order
    families: dict[metrics.Family, Metric]
    problems: Counter[str]  # the values the readers could not read: counted again on reuse


@dataclass(frozen=True)
class Errored:
    """The families built from the error summary, and what they were built from."""

    labels: list[str]  # the listed integrations' labels, in order
    key: ErrorsKey  # errors_key of the summary
    families: dict[metrics.Family, Metric]
    orphans_folded: float
    codes_folded: float
    digest: bytes | None = None  # SHA-256 of the errors body these were built from, if hashed
    problems: Counter[str] | None = None  # what its readers could not read, counted on reuse
    size: int | None = None  # bytes of that body


# Per integration label, in the summary's order: records, affected users, whether codes
# overflowed, and per code (in order) its occurrences, whether counted, and newest occurrence.
ErrorsKey = tuple[tuple[object, ...], ...]


def errors_key(summary: dict[str, IntegrationErrors]) -> ErrorsKey:
    """What the errors' families are built from, as tuples that compare in C (a dataclass's
    __eq__ per code cost 8% of a scrape of 24,000 records). Affected users enter by their
    number, which is all a family shows, except where orphan ids are merged into one series
    (their users' union): a build that merged is not kept. A zero enters by its text: 0.0 and
    -0.0 are equal and written differently."""
    return tuple([(label, entry.records, len(entry.users), entry.codes_overflowed,
                   tuple([(code, stats.occurrences or repr(stats.occurrences),
                           stats.has_count, stats.last_seen or repr(stats.last_seen))
                          for code, stats in entry.codes.items()]))
                  for label, entry in summary.items()])


class Reuse:
    """One target's last groups of families. Read and replaced whole (one attribute each), so
    scrapes of the target on several threads need no lock: each sees one group or the next."""

    def __init__(self) -> None:
        self.listed: Listed | None = None
        self.errored: Errored | None = None
        # The last complete listing's pages (client.list_integrations): a page read again byte
        # for byte is not parsed again, and its integrations, the same objects, compare at
        # once. Replaced whole, never changed: a fetch may be reading it.
        self.pages: KeptPages[Integration] = {}

    def forget(self) -> None:
        """Hold nothing: the last scrape had no groups to keep."""
        self.listed = self.errored = None
        self.pages = {}

    def listed_for(self, integrations: dict[str, Integration]) -> Listed | None:
        last = self.listed
        if last is not None and len(last.integrations) == len(integrations) and \
                list(last.integrations.items()) == list(integrations.items()):
            return last
        return None

    def errored_for(self, integrations: dict[str, Integration],
                    key: ErrorsKey) -> Errored | None:
        last = self.errored
        if last is None or last.key != key or last.labels != list(integrations):
            return None
        return last

    def errored_from(self, digest: bytes) -> Errored | None:
        """The kept errors' families if built from an errors body with this digest."""
        last = self.errored
        return last if last is not None and last.digest == digest else None


class SameBody:
    """client.read_errors' `known` (held.KnownBody), on the errors thread: whether an errors
    body read whole is the one the kept errors' families were built from, for the integrations
    this scrape lists (`listing()`, read once `listed` is set).

    Never waits for the listing (read beside it on the fetch thread): when the listing is not
    done yet, it answers None and the body is decoded at once, as if nothing were kept; a held
    body (held.until_known) asks again after each piece and stops once the listing is done and
    agrees. Waiting, then decoding because the listing changed or failed, would have put the
    decode after the listing instead of beside it, and late answers past the deadline (found
    by an attack)."""

    def __init__(self, reuse: Reuse, listing: Callable[[], dict[str, Integration] | None],
                 listed: threading.Event) -> None:
        self._reuse, self._listing, self._listed = reuse, listing, listed
        self.digest: bytes | None = None
        self.size: int | None = None
        self.kept: Errored | None = None

    def expected_size(self) -> int | None:
        """The size of the body the kept errors' families were built from (held.py)."""
        last = self._reuse.errored
        return last.size if last is not None else None

    def __call__(self, digest: bytes | None, size: int) -> bool | None:
        self.digest, self.size = digest, size
        if digest is None:
            return False
        kept = self._reuse.errored_from(digest)
        if kept is None:
            return False
        if not self._listed.is_set():
            return None  # the kept body, maybe: asked again while it is decoded (held.py)
        integrations = self._listing()
        if not integrations or kept.labels != list(integrations):
            return False  # other integrations listed: the families change, built anew
        self.kept = kept
        return True

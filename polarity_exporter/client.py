"""The Polarity API the exporter reads: the paged integrations listing and the errors stream.

One client per Polarity server, kept for the life of the exporter, so that its keep-alive
connections and its login token are reused across scrapes. It composes the transport (HTTP and
deadline: transport.py; bodies: bodies.py; retries and 429s: retries.py) and the authenticator
(token state machine: auth.py). Every failure surfaces as a `PolarityError` whose message is
one line naming the cause (never a secret).

Memory is bounded whatever the server sends: a listing page is read up to MAX_PAGE_BYTES and
folded into records as it arrives (pages are decoded one at a time); the errors body is decoded
whole only up to WHOLE_ERRORS_BYTES, and in pieces or streamed beyond that.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import requests

from polarity_exporter import pools
from polarity_exporter.auth import Authenticator
from polarity_exporter.bodies import BodyReader, check_json
from polarity_exporter.config import PolarityConfig
from polarity_exporter.deadline import Deadline
from polarity_exporter.documented import (
    DocumentedErrors,
    DocumentedPage,
    documented_batch,
    documented_errors,
    documented_page,
)
from polarity_exporter.errors import (
    AuthError,
    DeadlineExceeded,
    ForbiddenError,
    PolarityError,
    ProtocolError,
    RateLimitedError,
)
from polarity_exporter.held import KnownBody, held, until_known
from polarity_exporter.jsondecode import StreamGuard, decode_json, stream_items
from polarity_exporter.models import ErrorRecord, Problems, parse_errors
from polarity_exporter.pieces import read_streamed
from polarity_exporter.transport import Transport

__all__ = ["MAX_PAGES", "MAX_PAGE_BYTES", "MAX_RETRIES", "WHOLE_ERRORS_BYTES", "AuthError",
           "Deadline", "DeadlineExceeded", "ForbiddenError", "KeptPages", "Listing", "Page",
           "PolarityClient", "PolarityError", "ProtocolError", "RateLimitedError"]

log = logging.getLogger(__name__)

# Paging guard: never fetch more pages than this, whatever total the server claims.
MAX_PAGES = 1000
# One page of integrations (200 by default, ~1 KB each plus their error references: ~80 bytes
# for each error record, 5 MiB for a page of a server with 100,000 of them). The references
# are counted, not decoded (_count_refs), and a body too dense to decode safely is refused
# (jsondecode.py), so a page this large decodes to at most ~80 MB; one decoded at a time.
MAX_PAGE_BYTES = 16 * 1024 * 1024
# An errors body up to this size is decoded whole (fast); a larger one streamed (held.py).
WHOLE_ERRORS_BYTES = 6 * 1024 * 1024
# Integrations kept from one listing, whatever the pages say: twice the largest server the
# benchmark measures (an answer for 20,000 takes ~200 MB to encode); past it, incomplete.
MAX_INTEGRATIONS = 20_000
# The errors body has no documented size limit; this only stops an endless one.
MAX_ERRORS_BYTES = 4 * 1024**3
MAX_RETRIES = 2
INTEGRATIONS = "/api/integrations"
ERRORS = "/api/integrations/errors"

T = TypeVar("T")
# Turns one page's items (generic, or msgspec's in the documented shape) into records.
# One page's items -> records, unreadable fields counted in the page's own Problems.
PageParser = Callable[[list[Any] | DocumentedPage, Problems], list[T]]


@dataclass
class Listing(Generic[T]):
    """All integrations as listed, deduplicated by id, and whether the listing added up."""

    items: list[T]
    complete: bool = True
    notes: list[str] = field(default_factory=list)
    problems: Problems = field(default_factory=Counter)  # what `parse` could not read
    # With `kept` given to list_integrations: this listing's pages, for the next listing
    pages: dict[int, tuple[bytes, Page[T]]] = field(default_factory=dict)


@dataclass
class Page(Generic[T]):
    records: list[T]
    total: int
    size: int  # items on the page, parseable or not
    problems: Problems = field(default_factory=Counter)  # what `parse` could not read on it


# The pages of a server's last listing, by number: the SHA-256 of each body, and the page read
# from it. Given to list_integrations, a page whose body is byte for byte the one read last is
# not decoded or parsed again: its records (the same objects) and counts are those kept. Only
# read: each listing writes its pages into a dict of its own (Listing.pages), so a page thread
# left over from a listing that gave up writes where nobody reads.
KeptPages = dict[int, tuple[bytes, Page[T]]]


# relationships.integration-errors.data: a list of {"id", "type"} references, one for each
# error record, of which the exporter reads only the length. For a page outside the documented
# shape (documented.py reads the others), such a list is replaced by as many zeros when it is
# exactly a list of flat objects: JSON strings are matched whole (a "]" or "{" inside one is
# text, not structure), and a list holding anything else is left to be decoded as it is.
_STRING = rb'"(?:[^"\\]|\\.)*"'
_REFS = re.compile(rb'("integration-errors"\s*:\s*\{\s*"data"\s*:\s*)\[((?:' + _STRING +
                   rb'|[^\[\]"])*)\]')
_STRINGS = re.compile(_STRING)
_FLAT_OBJECTS = re.compile(rb"\s*(?:\{[^{}\[\]]*\}\s*(?:,\s*\{[^{}\[\]]*\}\s*)*)?")


def _count_refs(raw: bytes) -> bytes:
    """The page with each list of error references replaced by as many zeros: the same
    length, without a dict and two strings for each of up to 100,000 references."""
    def zeros(match: re.Match[bytes]) -> bytes:
        structure = _STRINGS.sub(b'""', match.group(2))
        if not _FLAT_OBJECTS.fullmatch(structure):
            return match.group(0)
        refs = structure.count(b"{")
        return match.group(1) + b"[" + b",".join([b"0"] * refs) + b"]"
    return _REFS.sub(zeros, raw) if b'"integration-errors"' in raw else raw


class PolarityClient:
    """Talks to one Polarity server; safe to share between threads."""

    def __init__(self, config: PolarityConfig) -> None:
        self.config = config
        self.base_url = config.url
        self.transport = Transport(config)
        self.auth = Authenticator(self.transport, config.credentials)
        # Pages read at once, of this server: the threads are shared by all servers (pools.py),
        # and one server may hold at most half of them, hung or not.
        self._pages = threading.BoundedSemaphore(min(config.max_concurrency,
                                                     pools.MAX_PAGES_PER_SERVER))
        # Bodies are read concurrently but decoded one at a time (pages, and the errors body
        # when it is decoded whole): decoding is CPU-bound anyway (one GIL), and this bounds the
        # memory of decoded bodies to one body's.
        self._decode_lock = threading.Lock()

    @property
    def account(self) -> str:
        return self.auth.account

    def authenticate(self, deadline: Deadline) -> None:
        """Make sure a usable credential is at hand (logs in or refreshes when needed)."""
        self.auth.credential(deadline)

    def close(self) -> None:
        """Log out (password logins only) and release connections and threads. Requests still
        running end at their own deadlines; none of them can log in again."""
        self.auth.logout(Deadline(min(self.config.timeout, 5.0)))
        self.transport.close()

    # --- authenticated GETs -----------------------------------------------------------------

    @contextmanager
    def _get(self, path: str, deadline: Deadline, what: str,
             params: dict[str, str] | None = None) -> Iterator[requests.Response]:
        """An authenticated, idempotent GET answered 200, with bounded retries inside the
        deadline; the response is readable inside the block."""
        retries = relogged = rate_limited = 0
        policy = self.transport.retry
        while True:
            token, generation = self.auth.credential(deadline)
            with ExitStack() as stack:
                try:
                    response = stack.enter_context(self.transport.exchange(
                        "GET", path, deadline, what, token=token, params=params))
                except (DeadlineExceeded, RateLimitedError):
                    raise
                except PolarityError:
                    if not policy.backoff(retries, deadline):
                        raise
                    retries += 1
                    continue
                if response.status_code == 200:
                    # What the caller's block raises (a body it cannot read) is not retried.
                    yield response
                    return
                failure = self._failure(response, deadline, what)
            status = response.status_code
            if status == 401:
                if self.auth.uses_api_key:
                    detail = failure.partition(": ")[2] or "expired or revoked"
                    raise AuthError(f"{what}: the API key was rejected by {self.base_url} "
                                    f"({detail}, HTTP 401)")
                if relogged:
                    raise AuthError(f"{what}: still unauthorized after logging in again as "
                                    f"{self.account} (HTTP 401)")
                relogged += 1
                self.auth.unauthorized(generation, deadline)
                continue
            if status == 429:  # the transport recorded its Retry-After for every request
                self.transport.rate_limit.refused(response, deadline, what, rate_limited)
                rate_limited += 1
                continue
            if status in policy.statuses and policy.backoff(retries, deadline):
                retries += 1
                continue
            raise PolarityError(f"{what}: {failure}")

    def _failure(self, response: requests.Response, deadline: Deadline, what: str) -> str:
        """Read what a non-200 answer says (inside its exchange); raise for a 403."""
        failure = self.transport.failure(response, deadline, what)
        if response.status_code == 403:
            raise ForbiddenError(f"{what}: {self.account} is not allowed ({failure})")
        return failure

    # --- integrations -----------------------------------------------------------------------

    def _get_page(self, number: int, deadline: Deadline, parse: PageParser[T],
                  kept: KeptPages[T] | None = None,
                  read: KeptPages[T] | None = None) -> Page[T]:
        what = f"page {number} of {INTEGRATIONS}"
        params = {"page[size]": str(self.config.page_size), "page[number]": str(number)}
        with self._get(INTEGRATIONS, deadline, what, params) as response:
            check_json(response, what, self.transport.scrub)
            raw = BodyReader(response, deadline, what, limit=MAX_PAGE_BYTES).read_all()
        if kept is None or read is None:
            return self._read_page(raw, what, parse)
        digest = hashlib.sha256(raw).digest()  # lets the GIL go: other pages are read meanwhile
        last = kept.get(number)
        page = last[1] if last is not None and last[0] == digest else \
            self._read_page(raw, what, parse)
        read[number] = (digest, page)
        return page

    def _read_page(self, raw: bytes, what: str, parse: PageParser[T]) -> Page[T]:
        problems: Problems = Counter()
        with self._decode_lock:
            # The documented shape by msgspec, in C, each list of error references counted
            # exactly; anything else generically, as before.
            typed = documented_page(raw)
            if typed is not None:
                del raw
                return Page(parse(typed, problems), typed.total, len(typed), problems)
            body = decode_json(_count_refs(raw), what)
            del raw
            data = body.get("data") if isinstance(body, dict) else None
            if not isinstance(data, list):
                raise ProtocolError(f"{what}: 'data' is not a list")
            meta = body.get("meta")
            page = meta.get("page") if isinstance(meta, dict) else None
            total = page.get("total") if isinstance(page, dict) else None
            if type(total) is not int or total < 0:
                raise ProtocolError(f"{what}: meta.page.total is missing or not a count")
            return Page(parse(data, problems), total, len(data), problems)

    def list_integrations(self, deadline: Deadline, parse: PageParser[T],
                          key: Callable[[T], Any],
                          kept: KeptPages[T] | None = None) -> Listing[T]:
        """Every integration, following pages; pages after the first are fetched concurrently,
        on the shared page threads.

        `parse` turns one page's items into records as the page arrives (no raw page is kept);
        `key` gives a record's id, by which duplicates across pages are dropped. With `kept`
        (the last listing's pages, only read), a page byte for byte the last one read under its
        number is not parsed again; the listing's own pages are in Listing.pages.
        """
        read: KeptPages[T] = {}
        first = self._get_page(1, deadline, parse, kept, read)
        total = first.total
        # The server may cap the page size below what we asked for: page by what it returns.
        per_page = self.config.page_size
        if 0 < first.size < min(per_page, total):
            per_page = first.size
        pages = max(1, math.ceil(total / per_page))
        listing: Listing[T] = Listing(items=[])
        most = min(MAX_PAGES, max(1, math.ceil(MAX_INTEGRATIONS / per_page)))
        if pages > most:
            listing.complete = False
            listing.notes.append(f"total {total} needs {pages} pages; read only {most}")
            pages = most
        futures: list[Future[Page[T]]] = []
        try:
            for number in range(2, pages + 1):
                futures.append(self._submit_page(number, deadline, parse, kept, read))
            results = [first] + [_page_result(number, future, deadline)
                                 for number, future in enumerate(futures, start=2)]
        finally:
            for future in futures:
                future.cancel()
        _merge_pages(results, total, listing, key)
        # Every page is in: the page threads have written theirs.
        listing.pages = {number: read[number] for number in range(1, pages + 1)
                         if number in read}
        deadline.note(f"{INTEGRATIONS}: {len(results)} pages of up to {per_page}, server said "
                      f"{total}, kept {len(listing.items)}"
                      + ("" if listing.complete else "; incomplete: " + "; ".join(listing.notes)))
        return listing

    def _submit_page(self, number: int, deadline: Deadline, parse: PageParser[T],
                     kept: KeptPages[T] | None, read: KeptPages[T]) -> Future[Page[T]]:
        """Read a page on a shared thread once this server has fewer than max_concurrency
        pages in flight; waiting for that counts against the deadline."""
        if not self._pages.acquire(timeout=max(0.0, deadline.remaining())):
            raise DeadlineExceeded(f"page {number} of {INTEGRATIONS}: scrape deadline of "
                                   f"{deadline.seconds:.2f}s exceeded (waiting for a page to "
                                   "finish)")
        try:
            future = pools.pages.submit(self._get_page, number, deadline, parse, kept, read)
        except BaseException:
            self._pages.release()
            raise
        future.add_done_callback(lambda _future: self._pages.release())
        return future

    # --- errors -----------------------------------------------------------------------------

    def iter_errors(self, deadline: Deadline, problems: Problems,
                    text: bool = False) -> Iterator[ErrorRecord]:
        """Error records as they are read (unreadable fields counted in `problems`). With
        `text`, each record also carries its id, title and detail (error events)."""
        for read in self.read_errors(deadline, problems, text):
            if isinstance(read, DocumentedErrors):
                yield from read
            else:
                yield read

    def read_errors(self, deadline: Deadline, problems: Problems, text: bool = False,
                    known: KnownBody | None = None,
                    ) -> Iterator[ErrorRecord | DocumentedErrors]:
        """Error records as they are read, or (without `text`) a whole body in the documented
        shape as one DocumentedErrors, which the summary folds without a record per record.

        `known` (without `text`) is given the SHA-256 digest of a body read whole, before it is
        decoded: when it answers True the caller holds what this body gives already, and nothing
        is decoded or yielded.

        A body up to WHOLE_ERRORS_BYTES is decoded whole: in the documented shape by msgspec
        (documented.documented_batch), otherwise generically. A larger one (held whole first
        only when it may be the one `known` holds: held.py) is decoded in pieces of whole records
        while in the documented shape (pieces.py), the rest streamed through ijson behind a
        StreamGuard (jsondecode.stream_items); with `text`, all of it by ijson.
        """
        with self._get(ERRORS, deadline, ERRORS) as response:
            check_json(response, ERRORS, self.transport.scrub)
            guard = StreamGuard(ERRORS)
            reader = BodyReader(response, deadline, ERRORS, limit=MAX_ERRORS_BYTES,
                                repair_utf8=True, guard=guard)
            head, whole = reader.read_up_to(WHOLE_ERRORS_BYTES)
            if not whole:
                deadline.note(f"{ERRORS}: body over {WHOLE_ERRORS_BYTES} bytes, read as a stream")
                if text:  # titles and details: the streaming parser reads every field anyway
                    reader.replay(head)
                    del head
                    yield from parse_errors(stream_items(reader, guard, ERRORS), problems, text)
                    return
                with held(head, reader, known) as verdict:
                    note = f"{ERRORS}: {reader.total} bytes, the body the kept families were " \
                        "built from (the same SHA-256): not decoded"
                    if verdict.same:
                        return deadline.note(note)
                    streamed = read_streamed(head, reader, guard, problems, deadline, ERRORS)
                    del head
                    yield from until_known(streamed, verdict,
                                           lambda: deadline.note(f"{note} further"))
                return
            if known is not None and not text:
                # hashlib lets the GIL go: other scrapes run meanwhile.
                digest = hashlib.sha256(head).digest()
                if known(digest, len(head)):
                    deadline.note(f"{ERRORS}: {len(head)} bytes, the body the kept families were "
                                  "built from (the same SHA-256): not decoded")
                    return
            with self._decode_lock:  # one whole body decoded at a time, pages included
                records: list[ErrorRecord] | DocumentedErrors | None = \
                    documented_errors(head, problems, text) if text else \
                    documented_batch(head, problems)
                items = _records(decode_json(head, ERRORS)) if records is None else []
            deadline.note(f"{ERRORS}: {len(head)} bytes decoded whole, "
                          + ("in the documented shape" if records is not None else
                             f"generically ({len(items)} items)"))
            del head
            if records is None:
                yield from parse_errors(items, problems, text)
            elif isinstance(records, DocumentedErrors):
                yield records
            else:
                yield from records


def _page_result(number: int, future: Future[Page[T]], deadline: Deadline) -> Page[T]:
    """A page read on a shared thread, waited for no longer than the deadline (a page queued
    behind another server's would otherwise hold this fetch past it)."""
    try:
        return future.result(timeout=max(0.0, deadline.remaining()))
    except FutureTimeout:
        future.cancel()
        raise DeadlineExceeded(f"page {number} of {INTEGRATIONS}: scrape deadline of "
                               f"{deadline.seconds:.2f}s exceeded") from None


def _records(body: Any) -> list[Any]:
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        raise ProtocolError(f"{ERRORS}: 'data' is not a list")
    return data


def _merge_pages(results: list[Page[T]], total: int, listing: Listing[T],
                 key: Callable[[T], Any]) -> None:
    seen: set[Any] = set()
    duplicates = 0
    listed = 0
    for page in results:  # every page read, as the parse counted them before (a cut below)
        listing.problems.update(page.problems)
    for number, page in enumerate(results, start=1):
        listed += page.size
        if page.total != total:
            listing.complete = False
            listing.notes.append(f"total changed from {total} to {page.total} on page {number}")
        if not page.size and total:
            listing.complete = False
            listing.notes.append(f"page {number} was empty")
        for record in page.records:
            ident = key(record)
            if ident in seen:
                duplicates += 1
                listed -= 1
                continue
            if len(listing.items) >= MAX_INTEGRATIONS:
                listing.complete = False
                listing.notes.append(f"more than {MAX_INTEGRATIONS} integrations; the rest "
                                     "ignored")
                return
            seen.add(ident)
            listing.items.append(record)
    if duplicates:
        listing.complete = False
        listing.notes.append(f"{duplicates} duplicate integration records ignored")
    if listed != total:
        listing.complete = False
        listing.notes.append(f"listed {listed} integrations, server said {total}")

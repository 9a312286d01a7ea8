"""Error records as log events (`--log.error-events`, or a target's `error_events: true`).

Metrics leave out what Polarity said about an error (titles and details are free text: unbounded
cardinality); an operator answering an alert wants it. With events on, each error record that is
new, or whose `error-count` or `occurred-on` moved since the previous scrape of its target,
becomes one log line of the logger `polarity_exporter.events` (msg "integration error"), in the
configured --log.format, whatever --log.level says.

The state is what the previous successful errors read held: record key -> (count, occurred-on),
at most MAX_TRACKED records per target (beyond, records are not followed, and a warning says how
many). It lives on the target's collector, so a reload that leaves the target unchanged keeps it.
A scrape whose errors part failed changes nothing (records would vanish, then come back as new).

A restarted exporter does not replay history: at the first successful read after start, only
records that occurred within REPLAY_WINDOW seconds before the exporter started, or later, are
logged; the rest are taken as known. At most MAX_EVENTS_PER_SCRAPE lines per scrape; a warning
counts the rest.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from polarity_exporter.models import MAX_EVENT_TEXT, ErrorRecord

events_log = logging.getLogger("polarity_exporter.events")
# Events are asked for by their own switch: they are written at --log.level=warn too.
events_log.setLevel(logging.INFO)
log = logging.getLogger(__name__)

MAX_TRACKED = 100_000
MAX_EVENTS_PER_SCRAPE = 1000
REPLAY_WINDOW = 300.0
STARTED = time.time()  # the exporter's start, for the replay rule

Key = bytes  # a digest of the record's identity (_key)


@dataclass(frozen=True, slots=True)
class _Seen:
    count: float | None
    occurred_on: float | None


@dataclass
class Read:
    """What one errors read saw, for events: the news (bounded), and the state it leaves."""

    batch: list[ErrorRecord] = field(default_factory=list)
    seen: dict[Key, _Seen] = field(default_factory=dict)
    records: int = 0
    unwritten: int = 0  # news beyond MAX_EVENTS_PER_SCRAPE


class ErrorEvents:
    """The event state of one target. `watch` sees the records of one errors read as they
    stream by; `emit` writes the events once the read succeeded (with the listing's names)."""

    def __init__(self, target: str, clock: Callable[[], float] = time.time,
                 started: float = STARTED) -> None:
        self.target = target
        self._clock = clock
        self._started = started
        self._known: dict[Key, _Seen] | None = None  # None until the first successful read

    def watch(self, records: Iterable[ErrorRecord], read: Read) -> Iterator[ErrorRecord]:
        """Pass the records through; put in `read.batch` those that are news, and in
        `read.seen` the state this read would leave (both bounded)."""
        known = self._known
        replay_from = self._started - REPLAY_WINDOW
        batch, seen = read.batch, read.seen
        for record in records:
            read.records += 1
            if len(seen) < MAX_TRACKED:
                key = _key(record)
                now = _Seen(record.count, record.occurred_on)
                seen[key] = now
                before = known.get(key) if known is not None else None
                if before != now and (known is not None or
                                      (record.occurred_on or 0.0) >= replay_from):
                    if len(batch) < MAX_EVENTS_PER_SCRAPE:
                        batch.append(record)
                    else:
                        read.unwritten += 1
            yield record

    def commit(self, read: Read, names: dict[str, str]) -> None:
        """After a successful read: write its events, keep its state."""
        previous, batch, records = self._known, read.batch, read.records
        self._known = read.seen
        for record in batch:
            self._write(record, previous, names)
        if read.unwritten:
            log.warning("error events: more changed records than one scrape writes",
                        extra={"target": self.target, "written": len(batch),
                               "not_written": read.unwritten})
        if records > MAX_TRACKED:
            log.warning("error events: records beyond the state's bound are not followed",
                        extra={"target": self.target, "not_followed": records - MAX_TRACKED})

    def _write(self, record: ErrorRecord, previous: dict[Key, _Seen] | None,
               names: dict[str, str]) -> None:
        text = record.text
        before = previous.get(_key(record)) if previous is not None else None
        change = "new" if before is None else \
            "count" if before.count != record.count else "occurred_on"
        events_log.info("integration error", extra={
            "target": self.target,
            "integration_id": record.integration_id,
            "integration_name": names.get(record.integration_id, ""),
            "code": record.code[:MAX_EVENT_TEXT],
            "error_id": (text.id if text else None) or "",
            "title": (text.title if text else None) or "",
            "detail": (text.detail if text else None) or "",
            "error_count": "" if record.count is None else f"{record.count:g}",
            "affected_users": len(record.affected_users),
            "occurred_on": "" if record.occurred_on is None else
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.occurred_on)),
            "change": change,
        })


def _key(record: ErrorRecord) -> Key:
    """A digest of the record's id; without one, of its integration and code (one record per
    pair, as the simulator and every body seen so far have). A digest, not the strings: ids of
    hundreds of characters made the state of 100,000 records ~230 MB (an attack's finding);
    16 bytes each keep it near 20 MB, old and new state together."""
    ident = record.text.id if record.text is not None else None
    parts = ("id", ident) if ident else ("pair", record.integration_id, record.code)
    text = "".join(f"{len(part)}:{part}" for part in parts)  # length-prefixed: no ambiguity
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()

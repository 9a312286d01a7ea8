"""Error records as log events (`--log.error-events`, a target's `error_events`): against the
real simulator, as its records change between scrapes (issue 21)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import CREDS, SIM_PASSWORD, SIM_USER
from inproc import Running, running_exporter

from polarity_exporter import events
from polarity_exporter.config import CollectorConfig
from polarity_exporter.events import ErrorEvents, Read
from polarity_exporter.logs import JsonFormatter, LogfmtFormatter
from polarity_exporter.models import MAX_EVENT_TEXT, ErrorRecord, ErrorText
from polarity_exporter.simulator import Request, Simulator, SimulatorConfig
from polarity_exporter.simulator import faults as F

ON = CollectorConfig(error_events=True)
EVENT = "integration error"


def event_records(running: Running) -> list[logging.LogRecord]:
    return [r for r in running.logs.records
            if r.name == "polarity_exporter.events" and r.msg == EVENT]


def scrape_events(running: Running) -> list[dict[str, Any]]:
    """The events one scrape writes, as their fields."""
    before = len(event_records(running))
    assert running.scrape(timeout=5).up == 1.0
    return [vars(record) for record in event_records(running)[before:]]


class Edits:
    """TEST-ONLY hook: rewrites records of the errors body, as Polarity's would change."""

    def __init__(self) -> None:
        self.edits: list[Callable[[list[dict[str, Any]]], None]] = []

    def __call__(self, document: Any, _request: Request) -> Any:
        for edit in self.edits:
            edit(document["data"])
        return document


@pytest.fixture
def edited(sim: Simulator) -> Iterator[tuple[Edits, Running]]:
    edits = Edits()
    sim.faults = F.transform_json(edits, F.on(F.ERRORS))
    with running_exporter(sim.url, CREDS, collector=ON, timeout=5) as running:
        yield edits, running


def test_first_scrape_after_start_does_not_replay_old_records(
        edited: tuple[Edits, Running]) -> None:
    _, running = edited
    assert scrape_events(running) == []  # the simulator's records are from 2024


def test_unchanged_records_write_nothing(edited: tuple[Edits, Running]) -> None:
    _, running = edited
    scrape_events(running)
    assert scrape_events(running) == []


def test_a_record_whose_count_grew_is_one_event_with_what_polarity_said(
        sim: Simulator, edited: tuple[Edits, Running]) -> None:
    edits, running = edited
    scrape_events(running)
    first = sim.dataset.errors[0]

    def grow(records: list[dict[str, Any]]) -> None:
        records[0]["attributes"]["error-count"] += 5
    edits.edits.append(grow)
    (event,) = scrape_events(running)
    attrs = first["attributes"]
    names = {item["id"]: item["attributes"]["name"] for item in sim.dataset.integrations}
    assert event["msg"] == EVENT and event["change"] == "count"
    assert event["target"] == sim.url
    assert event["integration_id"] == attrs["integration-id"]
    assert event["integration_name"] == names.get(attrs["integration-id"], "")
    assert event["code"] == attrs["code"]
    assert (event["error_id"], event["title"], event["detail"]) == \
        (first["id"], attrs["title"], attrs["detail"])
    assert event["error_count"] == str(attrs["error-count"] + 5)
    assert event["affected_users"] == len(attrs["meta"].get("affected_users", []))
    assert event["occurred_on"].startswith(attrs["occurred-on"][:10])


def test_a_record_that_occurred_again_is_an_event(edited: tuple[Edits, Running]) -> None:
    edits, running = edited
    scrape_events(running)

    def again(records: list[dict[str, Any]]) -> None:
        records[1]["attributes"]["occurred-on"] = "2030-01-02 03:04:05.000000Z"
    edits.edits.append(again)
    (event,) = scrape_events(running)
    assert event["change"] == "occurred_on" and event["occurred_on"] == "2030-01-02T03:04:05Z"
    assert scrape_events(running) == []  # once


def test_a_new_record_is_an_event(edited: tuple[Edits, Running]) -> None:
    edits, running = edited
    scrape_events(running)

    def add(records: list[dict[str, Any]]) -> None:
        fresh = json.loads(json.dumps(records[2]))
        fresh["id"] = "brand-new-record"
        fresh["attributes"]["title"] = "line one\nline two " + "t" * 5000
        records.append(fresh)
    edits.edits.append(add)
    (event,) = scrape_events(running)
    assert event["change"] == "new" and event["error_id"] == "brand-new-record"
    assert len(event["title"]) == MAX_EVENT_TEXT
    line = running.logs.matching("brand-new-record")[0]
    assert "\n" not in line  # one log line, whatever the title holds


def test_a_failed_errors_read_changes_nothing(sim: Simulator,
                                              edited: tuple[Edits, Running]) -> None:
    _, running = edited
    scrape_events(running)
    edits = sim.faults
    sim.faults = F.status(403, F.on(F.ERRORS))
    assert running.scrape(timeout=5).success("errors") == 0.0
    sim.faults = edits
    assert scrape_events(running) == []  # nothing came back "new"


def test_events_are_written_whatever_the_log_level(edited: tuple[Edits, Running]) -> None:
    edits, running = edited
    scrape_events(running)
    root = logging.getLogger("polarity_exporter")
    previous = root.level
    root.setLevel(logging.ERROR)
    try:
        edits.edits.append(lambda records: records[0]["attributes"].update({"error-count": 10**6}))
        assert len(scrape_events(running)) == 1
    finally:
        root.setLevel(previous)


def test_events_off_by_default(sim: Simulator, exp: Running) -> None:
    sim.faults = F.transform_json(lambda doc, _req: {**doc, "data": [
        {**item, "attributes": {**item["attributes"], "error-count": 999}}
        for item in doc["data"]]}, F.on(F.ERRORS))
    exp.scrape()
    assert event_records(exp) == []


def test_at_most_max_events_per_scrape_and_a_warning_counts_them(
        monkeypatch: pytest.MonkeyPatch, sim: Simulator,
        edited: tuple[Edits, Running]) -> None:
    monkeypatch.setattr(events, "MAX_EVENTS_PER_SCRAPE", 3)
    edits, running = edited
    scrape_events(running)

    def grow_all(records: list[dict[str, Any]]) -> None:
        for record in records:
            record["attributes"]["error-count"] += 1
    edits.edits.append(grow_all)
    assert len(scrape_events(running)) == 3
    (warning,) = running.logs.matching("more changed records than one scrape writes")
    assert f"not_written={len(sim.dataset.errors) - 3}" in warning


# --- the replay rule and the state, on the records themselves -------------------------------

def record(ident: str, occurred_on: float, count: float = 1.0) -> ErrorRecord:
    return ErrorRecord("integration-1", "ETIMEDOUT", count, occurred_on, ("7",),
                       ErrorText(ident, "title", "detail"))


def read(state: ErrorEvents, records: list[ErrorRecord]) -> list[str]:
    """The ids of the records `state` writes events for."""
    seen = Read()
    list(state.watch(records, seen))
    return [r.text.id for r in seen.batch if r.text is not None and r.text.id]


def test_at_the_first_read_only_records_from_the_replay_window_on_are_events() -> None:
    started = 1_000_000.0
    state = ErrorEvents("t", started=started)
    records = [record("old", started - events.REPLAY_WINDOW - 1),
               record("recent", started - events.REPLAY_WINDOW + 1),
               record("after", started + 60)]
    assert read(state, records) == ["recent", "after"]


def test_after_the_first_read_every_change_is_an_event() -> None:
    state = ErrorEvents("t", started=1_000_000.0)
    first = Read()
    list(state.watch([record("a", 1.0), record("b", 1.0)], first))
    state.commit(first, {})
    assert read(state, [record("a", 1.0), record("b", 1.0, count=2.0), record("c", 1.0)]) == \
        ["b", "c"]


def test_state_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "MAX_TRACKED", 10)
    state = ErrorEvents("t", started=0.0)
    seen = Read()
    list(state.watch([record(str(n), 1.0) for n in range(100)], seen))
    assert len(seen.seen) == 10 and seen.records == 100


def test_records_without_an_id_are_followed_by_integration_and_code() -> None:
    state = ErrorEvents("t", started=0.0)
    no_id = ErrorRecord("integration-1", "E1", 1.0, 5.0, (), ErrorText(None, None, None))
    first = Read()
    list(state.watch([no_id], first))
    state.commit(first, {})
    again = Read()
    list(state.watch([ErrorRecord("integration-1", "E1", 2.0, 5.0, (),
                                  ErrorText(None, None, None))], again))
    assert len(again.batch) == 1


@pytest.mark.parametrize("formatter", [LogfmtFormatter(), JsonFormatter()],
                         ids=["logfmt", "json"])
def test_an_event_is_one_line_in_either_log_format(formatter: logging.Formatter) -> None:
    captured: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = captured.append  # type: ignore[method-assign]
    events.events_log.addHandler(handler)
    try:
        state = ErrorEvents("prod", started=0.0)
        seen = Read()
        hostile = ErrorRecord("i", 'code "quoted"\n', 3.0, time.time(), ("1", "2"),
                              ErrorText("e1", "a\nb=c", 'd "e"\r\n\x85\u2028\x1b'))
        list(state.watch([hostile], seen))
        state.commit(seen, {"i": "VirusTotal"})
    finally:
        events.events_log.removeHandler(handler)
    (line,) = [formatter.format(record) for record in captured]
    # One line for every reader: str.splitlines() also breaks at NEL and U+2028.
    assert len(line.splitlines()) == 1 and "\x1b" not in line
    assert "VirusTotal" in line and "affected_users" in line
    if isinstance(formatter, JsonFormatter):
        assert json.loads(line)["title"] == "a\nb=c"
        assert json.loads(line)["detail"].endswith("\x85\u2028\x1b")


# --- per target, and across reloads ----------------------------------------------------------

def write_targets(path: Path, url: str, **extra: Any) -> None:
    path.write_text(json.dumps({"targets": {"lab": {
        "url": url, "username": SIM_USER, "password": SIM_PASSWORD, "error_events": True,
        **extra}}}))


def test_a_target_with_error_events_keeps_its_state_across_a_reload_that_keeps_it(
        sim: Simulator, tmp_path: Path) -> None:
    edits = Edits()
    sim.faults = F.transform_json(edits, F.on(F.ERRORS))
    targets = tmp_path / "targets.yml"
    write_targets(targets, sim.url)
    with running_exporter(None, None, targets_file=str(targets)) as running:
        assert running.probe("lab", timeout=5).up == 1.0
        edits.edits.append(lambda records: records[0]["attributes"].update({"error-count": 10**6}))
        assert running.probe("lab", timeout=5).up == 1.0
        assert [vars(r)["target"] for r in event_records(running)] == ["lab"]
        assert running.exporter.fleet is not None
        assert running.exporter.fleet.reload() is None  # the same file: the same server
        assert running.probe("lab", timeout=5).up == 1.0
        assert len(event_records(running)) == 1  # nothing replayed


def test_collectors_without_errors_write_no_events(sim: Simulator, tmp_path: Path) -> None:
    targets = tmp_path / "targets.yml"
    write_targets(targets, sim.url, collectors=["integrations"])
    with running_exporter(None, None, targets_file=str(targets)) as running:
        assert running.probe("lab", timeout=5).up == 1.0
    assert sim.counts[("GET", "/api/integrations/errors")] == 0


def test_events_read_titles_from_bodies_outside_the_documented_shape(sim: Simulator) -> None:
    # A count written as text sends the body to the generic reader: the same event fields.
    edits = Edits()
    sim.faults = F.transform_json(edits, F.on(F.ERRORS))
    with running_exporter(sim.url, CREDS, collector=ON, timeout=5) as running:
        scrape_events(running)

        def as_text(records: list[dict[str, Any]]) -> None:
            records[0]["attributes"]["error-count"] = "123456"
        edits.edits.append(as_text)
        (event,) = scrape_events(running)
    assert event["error_count"] == "123456" and event["title"].endswith("lookup failed")


def test_streamed_errors_bodies_carry_titles_too(monkeypatch: pytest.MonkeyPatch) -> None:
    from polarity_exporter import client
    monkeypatch.setattr(client, "WHOLE_ERRORS_BYTES", 1024)  # stream even the small body
    with Simulator(SimulatorConfig(users={SIM_USER: SIM_PASSWORD})) as sim:
        edits = Edits()
        sim.faults = F.transform_json(edits, F.on(F.ERRORS))
        with running_exporter(sim.url, CREDS, collector=ON, timeout=5) as running:
            scrape_events(running)
            edits.edits.append(
                lambda records: records[3]["attributes"].update({"error-count": 77777}))
            (event,) = scrape_events(running)
    assert event["error_count"] == "77777" and event["title"].endswith("lookup failed")


def test_the_event_state_keeps_a_fixed_size_key_however_long_the_ids() -> None:
    from polarity_exporter.events import _key
    from polarity_exporter.models import ErrorRecord
    short = _key(ErrorRecord("vt", "401", 1.0, 1.0, ()))
    long = _key(ErrorRecord("v" * 1024, "c" * 4000, 1.0, 1.0, ()))
    assert len(short) == len(long) == 16 and short != long
    # Length-prefixed: an id and code that concatenate alike are still two records.
    assert _key(ErrorRecord("ab", "c", 1.0, 1.0, ())) != _key(ErrorRecord("a", "bc", 1.0, 1.0, ()))

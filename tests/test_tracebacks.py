"""Tracebacks at debug level only, never with a secret (issue 19): a bug's log line carries where
it happened at --log.level=debug, as one field on its one line, and never the values the code
held. Generated over every place a bug is caught x both kinds of credentials x both formats."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import pytest
from conftest import SIM_PASSWORD, SIM_USER
from inproc import running_exporter
from test_secrets import TokenTap

from polarity_exporter import collector, logs, web
from polarity_exporter.auth import Authenticator
from polarity_exporter.config import ApiKey, Credentials, Password
from polarity_exporter.simulator import Simulator, SimulatorConfig

API_KEY = "k3y-SECRET-traceback-0123456789"


class Bug(RuntimeError):
    """What the test injects: a bug whose message holds nothing secret."""


MESSAGE = "injected-7f3a"  # a runtime value: a traceback never shows it


def raising(*_args: Any, **_kwargs: Any) -> Any:
    raise Bug(MESSAGE)


# Where a bug is caught and logged: (what to patch, the log message that reports it).
PLACES: dict[str, tuple[Callable[[pytest.MonkeyPatch], None], str]] = {
    "credentials": (lambda mp: mp.setattr(Authenticator, "credential", raising),
                    "cannot authenticate with Polarity"),
    "errors-summary": (lambda mp: mp.setattr(collector, "summarize_errors", raising),
                       "cannot read integration errors"),
    "families": (lambda mp: mp.setattr(collector, "build_families", raising),
                 "Polarity fetch failed unexpectedly"),
    "encoding": (lambda mp: mp.setattr(web, "choose", raising), "request failed unexpectedly"),
}
CREDENTIALS: dict[str, Credentials] = {"password": Password(SIM_USER, SIM_PASSWORD),
                                       "api-key": ApiKey(API_KEY)}
FORMATTERS = {"logfmt": logs.LogfmtFormatter, "json": logs.JsonFormatter}


@pytest.mark.parametrize("fmt", FORMATTERS)
@pytest.mark.parametrize("credentials", CREDENTIALS)
@pytest.mark.parametrize("place", PLACES)
def test_a_bug_is_logged_with_where_it_happened_at_debug_and_no_secret(
        monkeypatch: pytest.MonkeyPatch, place: str, credentials: str, fmt: str) -> None:
    patch, message = PLACES[place]
    tap = TokenTap()
    config = SimulatorConfig(users={SIM_USER: SIM_PASSWORD}, api_keys={API_KEY: 4e9})
    with Simulator(config) as sim:
        sim.faults = tap
        with running_exporter(sim.url, CREDENTIALS[credentials]) as exp:
            patch(monkeypatch)
            exp.scrape()
            records = [r for r in _records(exp) if r.getMessage() == message]
    assert records, f"no {message!r} record"
    debug = "\n".join(FORMATTERS[fmt](tracebacks=True).format(r) for r in records)
    above = "\n".join(FORMATTERS[fmt](tracebacks=False).format(r) for r in records)
    assert "Traceback (most recent call last)" in debug and "in raising" in debug
    assert all(len(line.splitlines()) == 1 for line in debug.split("\n") if line)
    assert "Traceback" not in above
    for secret in (SIM_PASSWORD, API_KEY, *tap.tokens):
        assert secret not in debug
    assert MESSAGE not in _traceback_fields(debug, fmt)  # a message is never in a traceback


def _records(exp: Any) -> list[logging.LogRecord]:
    return exp.logs.records


def _traceback_fields(text: str, fmt: str) -> str:
    if fmt == "json":
        return "\n".join(json.loads(line).get("traceback", "") for line in text.splitlines())
    return "\n".join(line.split("traceback=", 1)[-1] for line in text.splitlines())


@pytest.mark.parametrize(("level", "tracebacks"), [("debug", True), ("info", False),
                                                   ("warn", False), ("error", False)])
@pytest.mark.parametrize("fmt", FORMATTERS)
def test_only_the_debug_level_writes_tracebacks(level: str, tracebacks: bool, fmt: str) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logs.setup_logging(level, fmt)
        formatter = root.handlers[0].formatter
        assert isinstance(formatter, FORMATTERS[fmt])
        assert formatter.tracebacks is tracebacks
    finally:
        root.handlers[:], level_before = saved
        root.setLevel(level_before)

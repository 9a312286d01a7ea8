"""The generated fault matrix: every route of the Polarity API x every way an answer can go wrong.

Each cell starts a simulator and an exporter, injects one fault on one route, scrapes /metrics
over HTTP as Prometheus does, and checks that:

- the scrape answers HTTP 200 within its own deadline;
- polarity_up and polarity_scrape_collector_success tell the truth: the faulted part failed (or,
  for a fault that costs only a field, succeeded and counted the field), and a part that says it
  succeeded exported its series;
- the process's memory grew by less than MEMORY_BOUND_MIB during the faulty scrape;
- /-/healthy answered within a second while the faulty scrape ran;
- once the fault is gone (and any Retry-After has passed), the next scrape is healthy, with at
  most one login.

The logout route is checked on shutdown instead: close() ends within its own deadline.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import requests
from conftest import CREDS, SIM_PASSWORD, SIM_USER
from inproc import Running, Scrape, running_exporter
from support import reset_peak, vm_kib, wait_out_rate_limit

from polarity_exporter.simulator import Request, Response, Simulator, SimulatorConfig
from polarity_exporter.simulator import faults as F
from polarity_exporter.simulator.server import FaultHook

SCRAPE_TIMEOUT = 1.5  # announced; the scrape's deadline is 1.0 s, its fetch's 0.8 s
POLARITY_TIMEOUT = 2.0  # --polarity.timeout: the idle limit, and logout's deadline
PAGE_SIZE = 5  # 25 integrations: 5 pages, so that "later pages" exist
MEMORY_BOUND_MIB = 100
DEPTH = 50_000
HTML = b"<!DOCTYPE html><html><body><h1>502 Bad Gateway</h1></body></html>"
INTEGRATION_FAMILIES = ("polarity_integration_info", "polarity_integration_status",
                        "polarity_integration_running")
ERROR_FAMILIES = ("polarity_integration_error_occurrences_total",
                  "polarity_integration_error_affected_users")


# --- faults -----------------------------------------------------------------------------------

def _deep(_request: Request, _response: Response) -> Response:
    nested = b"[" * DEPTH + b"]" * DEPTH
    body = b'{"data":[' + nested + b'],"meta":{"page":{"number":1,"size":5,"total":25}}}'
    return Response(200, [body], {"Content-Type": "application/vnd.api+json"})


def _numbers(request: Request, response: Response) -> Response:
    """Numbers no field can hold, where each route has a number (or a field read as one)."""
    if response.status != 200:
        return response
    document = json.loads(b"".join(response.chunks))
    raw = json.dumps(document).encode()
    if request.path in (F.LOGIN, F.REFRESH):
        raw = re.sub(rb'"expiration_time": \d+', b'"expiration_time": 1e400', raw)
    elif request.path == F.ERRORS:
        replacements = iter([b"99999999999999999999", b"1e400"])
        raw = re.sub(rb'(?<="error-count": )\d+', lambda m: next(replacements, m.group(0)), raw)
    else:
        raw = raw.replace(b'"status": "', b'"status": ' + b"9" * 401 + b', "x": "', 1)
    return Response(200, [raw], dict(response.headers))


def _when(match: F.Match, make: Callable[[Request, Response], Response]) -> FaultHook:
    def hook(request: Request, response: Response) -> Response:
        return make(request, response) if match(request) else response
    return hook


FAULTS: dict[str, Callable[[F.Match], FaultHook]] = {
    "429": lambda m: F.status(429, m, headers={"Retry-After": "1"}),
    "503": lambda m: F.status(503, m),
    "500": lambda m: F.status(500, m),
    "reset": F.reset,
    "timeout": lambda m: F.hang(30, m),
    "html-200": lambda m: F.body(HTML, m, content_type="text/html"),
    "truncated": lambda m: F.truncate(0.5, m),
    "trickled-headers": lambda m: F.trickle_headers(0.05, m),
    "trickled-chunk-size": lambda m: F.trickle_chunk_size(0.05, m),
    "huge-error-body": lambda m: F.huge_body(500, 200, m),
    "trickled-error-body": lambda m: F.chain(
        F.status(500, m, body=b'{"errors":[' + b" " * 8192 + b"]}"), F.trickle(0.05, m)),
    "deep-nesting": lambda m: _when(m, _deep),
    "out-of-range-numbers": lambda m: _when(m, _numbers),
}
# Faults that cost a field, not the part: the part succeeds and counts what it could not read.
FIELD_FAULTS = {"out-of-range-numbers"}
# Faults whose status line says 200.
ANSWERED_200 = {"html-200", "truncated", "trickled-chunk-size", "deep-nesting",
                "out-of-range-numbers"}


# --- routes -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Route:
    name: str
    match: F.Match
    part: str  # what fails with it: "auth", "integrations", "errors" or "none" (refresh)
    after_revocation: bool = False  # one healthy scrape, then the token is revoked


ROUTES = [
    Route("login", F.on(F.LOGIN), "auth"),
    Route("refresh", F.on(F.REFRESH), "none"),
    Route("relogin-after-401", F.on(F.LOGIN), "auth", after_revocation=True),
    Route("first-page", F.on(F.INTEGRATIONS, page=1), "integrations"),
    Route("later-page", F.on(F.INTEGRATIONS, page=3), "integrations"),
    Route("errors", F.on(F.ERRORS), "errors"),
]


@dataclass
class Observed:
    scrape: Scrape
    growth_mib: float
    healthy_seconds: float


def scrape_under_fault(exp: Running) -> Observed:
    """The faulty scrape, with /-/healthy asked while it runs, and the memory it took."""
    rss = vm_kib("VmRSS")
    reset_peak()
    result: list[Scrape] = []
    scraper = threading.Thread(target=lambda: result.append(exp.scrape(SCRAPE_TIMEOUT)))
    scraper.start()
    started = time.monotonic()
    requests.get(f"{exp.url}/-/healthy", timeout=5).raise_for_status()
    healthy = time.monotonic() - started
    scraper.join(timeout=30)
    assert result, "the scrape did not answer"
    return Observed(result[0], (vm_kib("VmHWM") - rss) / 1024, healthy)


def logins(sim: Simulator) -> int:
    return sim.counts[("POST", F.LOGIN)]


def check_truth(scrape: Scrape, route: Route, fault: str) -> None:
    assert scrape.response.status_code == 200
    assert scrape.elapsed < SCRAPE_TIMEOUT, f"answered after {scrape.elapsed:.2f}s"
    up, listed, errors = scrape.up, scrape.success("integrations"), scrape.success("errors")
    # Consistency, whatever the fault: what a part claims is what it exported.
    assert up == (1.0 if listed == 1.0 and scrape.value("polarity_scrape_listing_complete") == 1
                  else 0.0)
    if listed == 0:
        assert not any(scrape.series(f) for f in INTEGRATION_FAMILIES)
    else:
        assert len(scrape.series("polarity_integration_info")) == 25
    if errors == 0:
        assert not any(scrape.series(f) for f in ERROR_FAMILIES)
    # The faulted part tells the truth. A 429 blocks every request of the client until its
    # Retry-After (1 s, longer than the deadline): any part may fail with it.
    if fault == "429":
        assert route.part == "none" or scrape.success(
            "integrations" if route.part == "auth" else route.part) == 0
    elif fault in FIELD_FAULTS or route.part == "none":
        assert up == 1 and errors == 1
        if fault in FIELD_FAULTS and route.part in ("integrations", "errors"):
            field = "status" if route.part == "integrations" else "error-count"
            assert scrape.value("polarity_scrape_unreadable_fields", collector=route.part,
                                field=field) >= 1
    elif route.part == "auth":
        assert up == listed == errors == 0
    elif route.part == "integrations":
        assert up == listed == 0
        assert errors == 1
    else:
        assert errors == 0
        assert up == listed == 1


@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.name)
def test_fault_matrix(route: Route, fault: str) -> None:
    with Simulator(SimulatorConfig(users={SIM_USER: SIM_PASSWORD})) as sim, \
            running_exporter(sim.url, CREDS, timeout=POLARITY_TIMEOUT,
                             page_size=PAGE_SIZE) as exp:
        hook = FAULTS[fault](route.match)
        if route.name == "refresh":
            assert exp.scrape(5).up == 1
            auth = exp.exporter.client.auth
            auth.clock = lambda: time.time() + 3600  # the token is about to expire
        elif route.after_revocation:
            assert exp.scrape(5).up == 1
            sim.revoke_tokens()
        sim.faults = hook
        observed = scrape_under_fault(exp)
        check_truth(observed.scrape, route, fault)
        assert observed.growth_mib < MEMORY_BOUND_MIB
        assert observed.healthy_seconds < 1.0
        assert "Traceback" not in exp.logs.text()
        assert SIM_PASSWORD not in exp.logs.text()

        sim.faults = None
        wait_out_rate_limit(exp)
        before = logins(sim)
        healthy = exp.scrape(5)
        assert healthy.up == 1 and healthy.success("errors") == 1
        assert logins(sim) - before <= 1


@pytest.mark.timing
@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_matrix_logout_ends_within_its_deadline(fault: str) -> None:
    with Simulator(SimulatorConfig(users={SIM_USER: SIM_PASSWORD})) as sim:
        with running_exporter(sim.url, CREDS, timeout=POLARITY_TIMEOUT) as exp:
            assert exp.scrape(5).up == 1
            sim.faults = FAULTS[fault](F.on(F.LOGOUT))
            started = time.monotonic()
            exp.exporter.client.close()
            elapsed = time.monotonic() - started
            assert elapsed < POLARITY_TIMEOUT + 0.5
            assert sim.counts[("POST", F.LOGOUT)] == 1
            # A status line of 200 is a logout, whatever its body; anything else is logged.
            logged = "logged out of Polarity" if fault in ANSWERED_200 else "logout failed"
            assert exp.logs.matching(logged)
            assert "Traceback" not in exp.logs.text()

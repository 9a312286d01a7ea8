"""`?debug=true` on /metrics and /probe, the recent scrapes on `/`, and `/logs?id=N`: what a
fetch did, read over real HTTP from an exporter scraping the real simulator (issue 21).

The secrets test is a matrix: every fault that makes the exporter log, for each kind of
credential, with secrets generated per case; no secret may show in the debug output, the
history's logs, the landing page, /metrics or the exporter's own log.
"""

from __future__ import annotations

import json
import re
import secrets
import string
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import CREDS, SIM_PASSWORD, SIM_USER
from inproc import Running, running_exporter
from reference import parse

from polarity_exporter import fetchlog
from polarity_exporter.config import ApiKey, Password
from polarity_exporter.fetchlog import FetchLog
from polarity_exporter.history import MAX_RESULT, History
from polarity_exporter.simulator import Request, Response, Simulator, SimulatorConfig
from polarity_exporter.simulator import faults as F

METRICS_HEAD = "Metrics that would have been returned:\n\n"


def debug(running: Running, path: str = "/metrics", **params: str) -> tuple[str, str]:
    """(the log part, the metrics part) of a debug answer."""
    response = running.session.get(f"{running.url}{path}",
                                   params={**params, "debug": "true"}, timeout=30)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    log, sep, metrics = response.text.partition(METRICS_HEAD)
    assert sep, response.text[:500]
    return log, metrics


def series(text: str) -> set[tuple[str, frozenset[tuple[str, str]]]]:
    return {(name, labels) for name, by_labels in parse(text).items() for labels in by_labels}


# --- what the log says ---------------------------------------------------------------------

def test_debug_metrics_logs_each_request_with_method_path_status_bytes_and_time(
        exp: Running) -> None:
    log, _ = debug(exp)
    login = re.search(r"POST /api/users/login -> HTTP 200, (\d+) bytes, \d+ ms", log)
    page = re.search(r"GET /api/integrations\?page\[size\]=200&page\[number\]=1 -> HTTP 200, "
                     r"(\d+) bytes, \d+ ms", log)
    errors = re.search(r"GET /api/integrations/errors -> HTTP 200, (\d+) bytes, \d+ ms", log)
    assert login and page and errors, log
    assert int(page.group(1)) > 1000 and int(errors.group(1)) > 1000


def test_debug_log_names_the_token_events_pages_parts_and_outcome(exp: Running) -> None:
    log, _ = debug(exp)
    for needle in (f"logged in as {SIM_USER!r}", "/api/integrations: 1 pages of up to 200",
                   "part authentication: ok", "part integrations: ok", "part errors: ok",
                   "outcome: up"):
        assert needle in log, (needle, log)


def test_debug_metrics_are_the_metrics_the_same_scrape_answers(sim: Simulator) -> None:
    # With --cache.ttl both answers come from one fetch: the same families, byte for byte but
    # for the result's age and the process's own metrics.
    with running_exporter(sim.url, CREDS, cache_ttl=60) as running:
        plain = running.scrape().response.text
        _, metrics = debug(running)
    assert series(metrics) == series(plain)
    def steady(text: str) -> list[str]:  # the result's age and the process's own change
        return [line for line in text.splitlines()
                if "polarity_scrape_result_age_seconds" not in line and "process_" not in line]
    assert steady(metrics) == steady(plain)


def test_scrapes_that_share_a_fetch_share_its_log(sim: Simulator) -> None:
    with running_exporter(sim.url, CREDS, cache_ttl=60) as running:
        first, _ = debug(running)
        second, _ = debug(running)
    assert first == second
    assert first.count("POST /api/users/login") == 1
    assert sim.counts[("GET", "/api/integrations")] == 1


def test_debug_log_shows_a_retry_and_its_pause(sim: Simulator, exp: Running) -> None:
    sim.faults = F.first(1, F.status(503, F.on()), F.on(F.INTEGRATIONS))
    log, metrics = debug(exp)
    assert "-> HTTP 503" in log and "retry 1 of 2 after 0.2s" in log
    assert "polarity_up 1.0" in metrics


def test_debug_log_shows_a_429_and_its_retry_after_wait(sim: Simulator, exp: Running) -> None:
    sim.faults = F.first(1, F.status(429, F.on(), headers={"Retry-After": "1"}),
                         F.on(F.INTEGRATIONS))
    log, metrics = debug(exp, headers={"X-Prometheus-Scrape-Timeout-Seconds": "5"})
    assert "-> HTTP 429, Retry-After 1" in log
    assert "waiting" in log and "Retry-After" in log
    assert "polarity_up 1.0" in metrics


def test_debug_log_shows_a_401_and_the_login_after_it(sim: Simulator, exp: Running) -> None:
    assert exp.scrape().up == 1.0
    sim.revoke_tokens()
    log, _ = debug(exp)
    assert "HTTP 401 with the current token: logging in again" in log
    assert log.index("logging in again") < log.index(f"logged in as {SIM_USER!r}")


def test_debug_log_says_which_part_failed_and_why(sim: Simulator, exp: Running) -> None:
    sim.faults = F.status(403, F.on(F.ERRORS))
    log, metrics = debug(exp)
    assert re.search(r"part errors: failed: .*HTTP 403", log), log
    assert 'polarity_scrape_collector_success{collector="errors"} 0.0' in metrics


def test_debug_probe_logs_the_targets_fetch(sim: Simulator, tmp_path: Path) -> None:
    targets = tmp_path / "targets.yml"
    targets.write_text(json.dumps({"targets": {"lab": {
        "url": sim.url, "username": SIM_USER, "password": SIM_PASSWORD}}}))
    with running_exporter(None, None, targets_file=str(targets)) as running:
        log, metrics = debug(running, "/probe", target="lab")
    assert "target lab" in log and "part integrations: ok" in log
    assert "polarity_up 1.0" in metrics


@pytest.mark.parametrize("query", ["debug=yes", "debug=true&debug=true", "debug=", "debug=1"])
def test_debug_other_than_true_or_false_is_a_400(exp: Running, query: str) -> None:
    response = exp.session.get(f"{exp.url}/metrics?{query}", timeout=10)
    assert response.status_code == 400 and "debug" in response.text


def test_debug_false_is_a_normal_scrape(exp: Running) -> None:
    response = exp.session.get(f"{exp.url}/metrics?debug=false", timeout=10)
    assert response.status_code == 200 and METRICS_HEAD not in response.text
    assert "polarity_up 1.0" in response.text


# --- the log's bounds ------------------------------------------------------------------------

def test_fetch_log_keeps_at_most_max_lines_and_says_how_many_were_cut() -> None:
    log = FetchLog()
    for number in range(fetchlog.MAX_LINES + 37):
        log.add(f"line {number}")
    lines = log.text().splitlines()
    assert len(lines) == fetchlog.MAX_LINES + 1
    assert lines[-1].startswith("... 37 more lines cut")


def test_fetch_log_keeps_at_most_max_bytes() -> None:
    log = FetchLog()
    for _ in range(200):
        log.add("x" * 5000)  # each line cut to MAX_LINE characters
    text = log.text()
    kept = text.splitlines()[:-1]
    assert len(text.encode()) <= fetchlog.MAX_BYTES + 200
    assert all(len(line) <= fetchlog.MAX_LINE + 20 for line in kept)
    assert "more lines cut" in text.splitlines()[-1]


def test_fetch_log_lines_are_single_lines() -> None:
    log = FetchLog()
    log.add("two\nlines\r\nand\ttabs")
    assert log.text().count("\n") == 1


def test_a_fetch_of_more_requests_than_the_log_holds_ends_with_the_cut_line() -> None:
    with Simulator(SimulatorConfig(users={SIM_USER: SIM_PASSWORD}, integrations=520,
                                   errors=10)) as sim, \
            running_exporter(sim.url, CREDS, page_size=1, timeout=30) as running:
        log, metrics = debug(running, headers={"X-Prometheus-Scrape-Timeout-Seconds": "30"})
    assert "polarity_up 1.0" in metrics
    lines = log.strip().splitlines()
    assert re.match(r"\.\.\. \d+ more lines cut", lines[-1]), lines[-3:]
    assert len(lines) <= fetchlog.MAX_LINES + 4  # the heading, a blank line, the cut line


# --- recent scrapes --------------------------------------------------------------------------

def landing(running: Running, **kwargs: Any) -> str:
    response = running.session.get(f"{running.url}/", timeout=10, **kwargs)
    assert response.status_code == 200
    return response.text


def log_links(page: str) -> list[str]:
    return re.findall(r'href="(/logs\?id=\d+)"', page)


def test_landing_page_lists_recent_scrapes_newest_first_with_their_results(
        sim: Simulator, exp: Running) -> None:
    assert exp.scrape().up == 1.0
    sim.faults = F.status(500, F.on(F.INTEGRATIONS))
    assert exp.scrape().up == 0.0
    page = landing(exp)
    rows = re.findall(r"<tr><td>.*?</tr>", page)
    assert len(rows) == 2
    assert "down: integrations:" in rows[0] and "HTTP 500" in rows[0]
    assert ">up<" in rows[1]
    assert all("/metrics" in row for row in rows)


def test_a_log_link_shows_that_scrapes_log(sim: Simulator, exp: Running) -> None:
    sim.faults = F.status(403, F.on(F.ERRORS))
    exp.scrape()
    (link,) = log_links(landing(exp))
    text = exp.session.get(f"{exp.url}{link}", timeout=10).text
    assert text.startswith("Scrape 0 of /metrics")
    assert "part errors: failed" in text and "GET /api/integrations/errors -> HTTP 403" in text


def test_history_keeps_only_the_limit(sim: Simulator) -> None:
    with running_exporter(sim.url, CREDS, history_limit=3) as running:
        for _ in range(5):
            running.scrape()
        links = log_links(landing(running))
        assert links == ["/logs?id=4", "/logs?id=3", "/logs?id=2"]
        gone = running.session.get(f"{running.url}/logs?id=1", timeout=10)
    assert gone.status_code == 404


def test_history_limit_zero_keeps_nothing(sim: Simulator) -> None:
    with running_exporter(sim.url, CREDS, history_limit=0) as running:
        running.scrape()
        page = landing(running)
    assert log_links(page) == [] and "--history.limit 0" in page


@pytest.mark.parametrize("ident", ["x", "-1", "99", "1" * 40,
                                   # digits to str.isdigit() but not to int(): was a 500
                                   "%E2%91%A0", "%C2%B2", "0x1", "1e3", "%00", "+1"])
def test_logs_of_an_unknown_id_is_a_404(exp: Running, ident: str) -> None:
    exp.scrape()
    response = exp.session.get(f"{exp.url}/logs?id={ident}", timeout=10)
    assert response.status_code == 404


@pytest.mark.parametrize("query", ["id=", "id=0&id=1", "", "id=0&x=" + "y" * 5000])
def test_logs_without_exactly_one_id_in_a_bounded_query_is_a_400(exp: Running,
                                                                  query: str) -> None:
    exp.scrape()
    response = exp.session.get(f"{exp.url}/logs?{query}", timeout=10)
    assert response.status_code == 400 and "give id once" in response.text


def test_history_memory_is_bounded_by_the_limit() -> None:
    history = History(limit=5)
    log = FetchLog()
    for number in range(1000):
        history.add("t", "down: " + "x" * 10_000, 0.1, log)
        assert len(history.entries()) == min(number + 1, 5)
    assert all(len(entry.result) <= MAX_RESULT for entry in history.entries())


def test_landing_page_escapes_what_polarity_said(sim: Simulator, exp: Running) -> None:
    hostile = b'{"errors":[{"detail":"<script>alert(1)</script><a href=x>"}]}'
    sim.faults = F.status(500, F.on(F.INTEGRATIONS), body=hostile)
    exp.scrape()
    page = landing(exp)
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_probes_are_in_the_history_under_their_target(sim: Simulator, tmp_path: Path) -> None:
    targets = tmp_path / "targets.yml"
    targets.write_text(json.dumps({"targets": {"lab": {
        "url": sim.url, "username": SIM_USER, "password": SIM_PASSWORD}}}))
    with running_exporter(None, None, targets_file=str(targets)) as running:
        assert running.probe("lab").up == 1.0
        running.scrape()  # /metrics asks no Polarity server here: not a scrape to list
        page = landing(running)
    rows = re.findall(r"<tr><td>.*?</tr>", page)
    assert len(rows) == 1 and "<td>lab</td>" in rows[0] and ">up<" in rows[0]


# --- secrets: every fault that logs x every kind of credential ------------------------------

ALPHABET = string.ascii_letters + string.digits + "!#$%&'()*+,-./:;<=>?@[]^_`{|}~ \"\\"


def generated_secret(prefix: str) -> str:
    """A secret with the characters that escape differently in URLs, JSON and logfmt."""
    return prefix + "".join(secrets.choice(ALPHABET) for _ in range(24)) + secrets.token_hex(4)


def forms(secret: str) -> list[str]:
    """The secret, and how it would look escaped in JSON or a URL."""
    from urllib.parse import quote, quote_plus
    return list({secret, json.dumps(secret)[1:-1], quote(secret, safe=""), quote_plus(secret)})


# The faults on the way of a scrape that make the exporter log (and write its fetch log).
LOGGED_FAULTS = {
    "login-401": F.status(401, F.on(F.LOGIN)),
    "login-429": F.status(429, F.on(F.LOGIN), headers={"Retry-After": "30"}),
    "login-500": F.status(500, F.on(F.LOGIN)),
    "listing-401-once": F.first(1, F.status(401, F.on()), F.on(F.INTEGRATIONS)),
    "listing-403": F.status(403, F.on(F.INTEGRATIONS)),
    "listing-503-retried": F.first(1, F.status(503, F.on()), F.on(F.INTEGRATIONS)),
    "listing-redirect": F.status(302, F.on(F.INTEGRATIONS),
                                 headers={"Location": "https://elsewhere.example/login?next=x"}),
    "listing-truncated": F.truncate(0.5, F.on(F.INTEGRATIONS)),
    "listing-not-json": F.body(b"<html>oops</html>", F.on(F.INTEGRATIONS), "text/html"),
    "listing-cut": F.cut(100, F.on(F.INTEGRATIONS)),
    "listing-reset": F.reset(F.on(F.INTEGRATIONS)),
    "listing-hang": F.hang(30, F.on(F.INTEGRATIONS)),
    "errors-403": F.status(403, F.on(F.ERRORS)),
    "errors-429": F.status(429, F.on(F.ERRORS), headers={"Retry-After": "1"}),
    "errors-trickle": F.trickle(0.2, F.on(F.ERRORS)),
    "errors-garbage": F.body(b'{"data": [1, "x", {"attributes": 7}]}', F.on(F.ERRORS)),
    # Issue 21's attack: servers that quote the request's credentials back.
    "login-echo-401": F.echo_request(401, F.on(F.LOGIN)),
    "login-echo-302": F.echo_request(302, F.on(F.LOGIN)),
    "listing-echo-401": F.echo_request(401, F.on(F.INTEGRATIONS)),
    "listing-echo-500": F.echo_request(500, F.on(F.INTEGRATIONS)),
    "listing-echo-302": F.echo_request(302, F.on(F.INTEGRATIONS)),
    "errors-echo-403": F.echo_request(403, F.on(F.ERRORS)),
    # The second attack: an echo in a header, across the cut, or in another letter case.
    "listing-echo-retry-after": F.echo_request(429, F.on(F.INTEGRATIONS), "retry-after"),
    "listing-echo-content-type": F.echo_request(200, F.on(F.INTEGRATIONS), "content-type"),
    "login-echo-at-the-cut": F.echo_request(500, F.on(F.LOGIN), "cut"),
    "errors-echo-at-the-cut": F.echo_request(403, F.on(F.ERRORS), "cut"),
    "login-echo-upper-cased": F.echo_request(500, F.on(F.LOGIN), "upper"),
}


@pytest.fixture(params=["password", "api_key"])
def credential_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def secret_sim(credential_kind: str) -> Iterator[tuple[Simulator, Password | ApiKey, TokenTap]]:
    password, key = generated_secret("pw-"), generated_secret("key-").replace(" ", "_")
    key = "".join(ch for ch in key if 0x21 <= ord(ch) <= 0x7e)  # a header-safe API key
    config = SimulatorConfig(users={SIM_USER: password}, api_keys={key: 4e9},
                             token_lifetime=2)
    credentials: Password | ApiKey = Password(SIM_USER, password) \
        if credential_kind == "password" else ApiKey(key)
    with Simulator(config) as sim:
        yield sim, credentials, TokenTap()


class TokenTap:
    """TEST-ONLY hook: remembers every token the simulator hands out."""

    def __init__(self) -> None:
        self.tokens: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, request: Request, response: Response) -> Response:
        if request.path in (F.LOGIN, F.REFRESH) and response.status == 200:
            with self._lock:
                self.tokens.append(json.loads(b"".join(response.chunks))["data"]["token"])
        return response


@pytest.mark.parametrize("fault", list(LOGGED_FAULTS))
def test_no_secret_in_debug_output_history_or_logs_whatever_fails(
        secret_sim: tuple[Simulator, Password | ApiKey, TokenTap], fault: str) -> None:
    sim, credentials, tap = secret_sim
    sim.faults = F.chain(tap, LOGGED_FAULTS[fault])
    with running_exporter(sim.url, credentials, timeout=1.5) as running:
        places = {"debug": running.session.get(f"{running.url}/metrics?debug=true",
                                                timeout=30).text,
                  "metrics": running.scrape(timeout=1.5).response.text}
        page = landing(running)
        places["landing"] = page
        for link in log_links(page):
            places[link] = running.session.get(f"{running.url}{link}", timeout=10).text
        places["log"] = running.logs.text()
    assert "Scrape 0 of /metrics" in places["/logs?id=0"]
    secret_values = [credentials.password if isinstance(credentials, Password)
                     else credentials.key, *tap.tokens]
    lowered = {where: text.lower() for where, text in places.items()}
    for secret in secret_values:
        # In any letter case, and its start alone (a message cut inside the secret).
        for form in {*forms(secret), *forms(secret[:12])}:
            for where, text in lowered.items():
                assert form.lower() not in text, f"a secret leaked into {where} ({fault})"


def test_landing_page_and_logs_sit_behind_the_same_basic_auth(sim: Simulator) -> None:
    import bcrypt

    from polarity_exporter.webconfig import WebSecurity
    security = WebSecurity(basic_auth_users={"viewer": bcrypt.hashpw(b"pw", bcrypt.gensalt(4))})
    with running_exporter(sim.url, CREDS, security=security) as running:
        running.session.auth = ("viewer", "pw")
        running.scrape()
        for path in ("/", "/logs?id=0", "/metrics?debug=true"):
            anonymous = requests.get(f"{running.url}{path}", timeout=10)
            assert anonymous.status_code == 401, path
            assert running.session.get(f"{running.url}{path}", timeout=10).status_code == 200


def test_debug_log_shows_a_token_refresh(exp: Running) -> None:
    import time
    assert exp.scrape().up == 1.0
    assert exp.exporter.polarity is not None
    auth = exp.exporter.polarity.client.auth
    auth.clock = lambda: time.time() + 3590  # the token is near its expiry: refresh it
    log, _ = debug(exp)
    assert re.search(r"GET /api/users/refresh -> HTTP 200, \d+ bytes", log), log
    assert "token refreshed (token expires" in log


def test_history_logs_together_stay_within_their_budget_the_oldest_dropped_first() -> None:
    from polarity_exporter import fetchlog, history
    kept = History(limit=10_000)
    for _ in range(150):
        log = FetchLog()
        for _ in range(fetchlog.MAX_LINES):
            log.add("x" * 200)
        kept.add("t", "up", 0.1, log)
    entries = kept.entries()
    assert len(entries) == 150
    distinct = {id(e.log): e.log for e in entries if e.log is not history.DROPPED}
    assert sum(log.size for log in distinct.values()) <= history.MAX_LOG_BYTES
    assert entries[0].log is not history.DROPPED and entries[-1].log is history.DROPPED
    assert "log dropped" in entries[-1].log.text()


def test_fetch_log_lines_carry_no_control_characters() -> None:
    log = FetchLog()
    log.add("detail: \x1b[31mred\x1b[0m \x00 \x9b")
    text = log.text()
    assert not any(ch in text for ch in "\x1b\x00\x9b") and "\ufffd[31mred" in text


# --- issue 21's attack: what a server's error text may carry ----------------------------------

def test_a_lone_surrogate_in_polaritys_error_text_costs_only_that_part(sim: Simulator) -> None:
    sim.faults = F.status(403, F.on(F.INTEGRATIONS), body=b'{"errors": [{"detail": '
                          b'"no access \\ud800"}]}')
    with running_exporter(sim.url, CREDS) as running:
        text, _ = debug(running)
    assert "HTTP 403: no access \ufffd" in text
    assert "unexpected" not in text and "UnicodeEncodeError" not in text


def test_the_debug_outputs_first_line_carries_no_terminal_escapes(sim: Simulator) -> None:
    sim.faults = F.status(500, F.on(F.INTEGRATIONS), body=b'{"errors": [{"detail": '
                          b'"\\u001b]0;pwned\\u0007\\u001b[2J"}]}')
    with running_exporter(sim.url, CREDS) as running:
        text, _ = debug(running)
    assert "\x1b" not in text and "\x07" not in text
    assert "result: down" in text.splitlines()[0]


def test_credentials_echoed_by_a_proxy_or_server_are_redacted() -> None:
    import base64

    from polarity_exporter.config import PolarityConfig
    from polarity_exporter.transport import Transport
    transport = Transport(PolarityConfig("https://polarity.example", Password("bob", "pw-Secret#1"),
                                         proxy_url="http://proxy-user:p%40ss-Secret@proxy:3128"))
    transport.remember_token("tok-0123456789abcdef")
    basic = base64.b64encode(b"proxy-user:p@ss-Secret").decode()
    echoed = (f"407 Proxy auth Basic {basic}; password pw-Secret#1 pw-Secret%231; proxy "
              "p%40ss-Secret p@ss-Secret; token tok-0123456789abcdef; Bearer other-token-xyz")
    scrubbed = transport.scrub(echoed)
    for secret in ("pw-Secret", "p%40ss-Secret", "p@ss-Secret", basic, "tok-0123456789abcdef",
                   "other-token-xyz"):
        assert secret not in scrubbed
    assert transport.scrub("Unexpected token < in JSON at position 0") == \
        "Unexpected token < in JSON at position 0"


def test_an_echoed_secret_is_redacted_in_another_letter_case_or_with_its_spaces_collapsed(
        ) -> None:
    from polarity_exporter.config import PolarityConfig
    from polarity_exporter.transport import Transport
    password = "Correct  Horse\tBattery pw-%2F"
    transport = Transport(PolarityConfig("https://polarity.example", Password("bob", password)))
    for echoed in (password.upper(), " ".join(password.split()), password.lower()):
        assert transport.scrub(f"rejected: {echoed}!") == "rejected: <redacted>!", echoed


def test_a_malformed_proxy_in_the_environment_leaves_the_refusal_to_the_first_request(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from polarity_exporter.config import PolarityConfig
    from polarity_exporter.transport import Transport
    monkeypatch.setenv("HTTPS_PROXY", "http://u:p@[bad")
    transport = Transport(PolarityConfig("https://polarity.example", Password("bob", "pw-1234")))
    assert transport.scrub("pw-1234") == "<redacted>"


def test_the_landing_page_shows_the_start_of_a_long_result_and_its_log_all_of_it(
        sim: Simulator) -> None:
    from polarity_exporter.web import SHOWN_RESULT
    body = json.dumps({"errors": [{"detail": "<" * 2000}]}).encode()  # 4 times longer escaped
    sim.faults = F.chain(F.status(500, F.on(F.INTEGRATIONS), body=body),
                         F.status(500, F.on(F.ERRORS), body=body))
    with running_exporter(sim.url, CREDS) as running:
        running.scrape()
        page = landing(running)
        log = running.session.get(f"{running.url}{log_links(page)[0]}", timeout=10).text
    cell = re.search(r'<td class="down">(.*?)</td>', page)
    assert cell is not None
    assert len(html_unescape(cell.group(1))) == SHOWN_RESULT
    assert html_unescape(cell.group(1)).endswith("\u2026")  # cut on the page
    assert "integrations: page 1 of" in log and "errors: /api/integrations/errors" in log


def html_unescape(text: str) -> str:
    import html
    return html.unescape(text)


def test_history_limit_is_at_most_a_thousand() -> None:
    from click.testing import CliRunner

    from polarity_exporter.cli import command
    result = CliRunner().invoke(command, ["--history.limit", "1001", "--demo"])
    assert result.exit_code == 2 and "1001 is not in the range 0<=x<=1000" in result.output


# --- the third attack: the scrub's own cost, and what urllib3 quotes --------------------------

def test_scrubbing_the_longest_header_of_the_longest_tokens_fits_the_shortest_deadline() -> None:
    import time

    from polarity_exporter.config import PolarityConfig
    from polarity_exporter.transport import Transport
    from polarity_exporter.web import MIN_TIMEOUT
    transport = Transport(PolarityConfig("https://polarity.example", Password("bob", "pw-1234")))
    for n in range(4):  # the tokens a transport remembers, each as long as auth accepts
        transport.remember_token("a" * 8191 + str(n))
    header = "a" * 65536  # the longest header line http.client reads
    started = time.process_time()
    assert transport.scrub(header) == header
    # A regex of the secrets took 9.5 s here (a server's tokens froze the process).
    assert time.process_time() - started < MIN_TIMEOUT


def test_an_echo_read_as_latin_1_or_quoted_by_repr_is_redacted() -> None:
    from polarity_exporter.config import PolarityConfig
    from polarity_exporter.transport import Transport
    password = "pässwort's-Secret-42"
    transport = Transport(PolarityConfig("https://polarity.example", Password("bob", password)))
    mojibake = password.encode().decode("latin-1")
    for echoed in (mojibake, repr(password), repr(mojibake)):
        assert "Secret-42" not in transport.scrub(f"BadStatusLine({echoed})")


def test_secrets_of_fewer_than_four_characters_besides_whitespace_are_not_looked_for() -> None:
    from polarity_exporter.errors import scrub
    assert scrub("page 1: HTTP 500", ["e", "    ", "a  b"]) == "page 1: HTTP 500"
    assert scrub("x HTTP 500", ["http"]) == "x <redacted> 500"


def test_a_body_read_failure_never_quotes_what_the_server_sent() -> None:
    import urllib3

    from polarity_exporter.bodies import _read_failure
    echoed = urllib3.exceptions.DecodeError("Received response with content-encoding: gzip, "
                                            "bearer tok-secret-0123, but failed to decode it.")
    assert "secret" not in _read_failure(echoed)


def test_urllib3s_header_parsing_warning_is_logged_without_the_headers(
        capsys: pytest.CaptureFixture[str]) -> None:
    import logging

    from polarity_exporter.logs import setup_logging
    setup_logging("info")
    try:
        raise ValueError("unparsed data: 'X-Echo pw-Secret-0123'")
    except ValueError:
        logging.getLogger("urllib3.connection").warning(
            "Failed to parse headers (url=%s): %s", "https://p", "X-Echo pw-Secret-0123",
            exc_info=True)
    err = capsys.readouterr().err
    assert "Failed to parse headers" in err and "pw-Secret" not in err

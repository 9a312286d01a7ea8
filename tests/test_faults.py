"""The fault matrix: every way Polarity can fail, answered truthfully and inside the deadline.

Each test injects one fault into the simulator (test-only fault modes, simulator/faults.py) or
points the exporter at a socket that misbehaves, scrapes /metrics over HTTP like Prometheus (with
its scrape-timeout header) and checks: 200 within the timeout, polarity_up and
polarity_scrape_collector_success tell the truth, the cause is logged in one line without a
traceback or secret, and nothing is exported that the API did not say.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import CREDS, SIM_PASSWORD, SIM_USER, free_port
from inproc import Certs, Running, Scrape, api_key, password, running_exporter
from reference import clean, expected_errors

from polarity_exporter.client import MAX_PAGES, MAX_RETRIES
from polarity_exporter.simulator import Request, Response, Simulator, SimulatorConfig
from polarity_exporter.simulator import faults as F

SCRAPE_TIMEOUT = 2.0  # what Prometheus announces; the exporter's deadline is 0.5 s less
INTEGRATION_FAMILIES = ("polarity_integration_info", "polarity_integration_status",
                        "polarity_integration_running")
ERROR_FAMILIES = ("polarity_integration_error_occurrences_total",
                  "polarity_integration_error_last_occurrence_timestamp_seconds",
                  "polarity_integration_error_affected_users")


def integrations_listed(sim: Simulator) -> int:
    return sim.counts[("GET", "/api/integrations")]


def logins(sim: Simulator) -> int:
    return sim.counts[("POST", "/api/users/login")]


def check(scrape: Scrape, *, up: int, integrations: int, errors: int | None,
          timeout: float = SCRAPE_TIMEOUT) -> None:
    """errors=None: whichever the errors collector says is not this test's point."""
    assert scrape.response.status_code == 200
    assert scrape.elapsed < timeout, f"scrape took {scrape.elapsed:.2f}s"
    assert scrape.up == up
    assert scrape.success("integrations") == integrations
    if errors is not None:
        assert scrape.success("errors") == errors
    if not integrations:  # nothing listed: nothing about integrations may be exported
        for family in INTEGRATION_FAMILIES:
            assert not scrape.series(family), family
    if scrape.success("errors") == 0:  # no error records read: no per-code or per-user numbers
        for family in ERROR_FAMILIES:
            assert not scrape.series(family), family


def cause(exp: Running, *needles: str) -> str:
    """The one log line naming the cause; no traceback and no secret anywhere in the log."""
    lines = exp.logs.matching(*needles)
    assert lines, f"no log line with {needles}:\n{exp.logs.text()}"
    text = exp.logs.text()
    assert "Traceback" not in text
    assert SIM_PASSWORD not in text
    return lines[0]


def error_ids(sim: Simulator) -> set[str]:
    return {e["attributes"]["integration-id"] for e in sim.dataset.errors}


# --- Polarity is down ------------------------------------------------------------------------

def test_connection_refused_reports_down() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with running_exporter(url, CREDS) as exp:
        check(exp.scrape(), up=0, integrations=0, errors=0)
        line = cause(exp, "Connection refused")
        assert SIM_USER in line and url in line


def test_dns_failure_reports_down() -> None:
    url = "http://polarity.invalid:8443"  # RFC 2606: never resolves
    with running_exporter(url, CREDS) as exp:
        check(exp.scrape(), up=0, integrations=0, errors=0)
        cause(exp, "DNS lookup failed", "polarity.invalid")


# --- Polarity hangs --------------------------------------------------------------------------

def test_server_accepting_but_never_answering_is_cut_at_the_deadline() -> None:
    # The kernel completes the TCP handshake for a listening socket nobody accept()s.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        with running_exporter(url, CREDS) as exp:
            check(exp.scrape(), up=0, integrations=0, errors=0)
            cause(exp, "cannot authenticate", "deadline", "no answer")


def test_listing_that_never_answers_keeps_errors(sim: Simulator, exp: Running) -> None:
    sim.faults = F.hang(30, F.on(F.INTEGRATIONS))
    scrape = exp.scrape()
    check(scrape, up=0, integrations=0, errors=1)
    cause(exp, "cannot list integrations")
    assert scrape.series("polarity_integration_errors")


def test_trickled_body_is_cut_at_the_deadline(sim: Simulator, exp: Running) -> None:
    sim.faults = F.trickle(0.05, F.on(F.ERRORS))
    scrape = exp.scrape()
    check(scrape, up=1, integrations=1, errors=0)
    cause(exp, "cannot read integration errors", "deadline")


def test_errors_endpoint_timing_out_keeps_integrations(sim: Simulator, exp: Running) -> None:
    sim.faults = F.hang(30, F.on(F.ERRORS))
    scrape = exp.scrape()
    check(scrape, up=1, integrations=1, errors=0)
    cause(exp, "cannot read integration errors")
    assert len(scrape.series("polarity_integration_info")) == len(sim.dataset.integrations)


# --- HTTP errors and retries -----------------------------------------------------------------

def test_http_500_is_reported_and_not_retried(sim: Simulator, exp: Running) -> None:
    sim.faults = F.status(500, F.on(F.INTEGRATIONS))
    check(exp.scrape(), up=0, integrations=0, errors=1)
    cause(exp, "cannot list integrations", "HTTP 500")
    assert integrations_listed(sim) == 1


@pytest.mark.parametrize("code", [502, 503])
def test_gateway_errors_are_retried_a_bounded_number_of_times(sim: Simulator, exp: Running,
                                                              code: int) -> None:
    sim.faults = F.status(code, F.on(F.INTEGRATIONS))
    check(exp.scrape(), up=0, integrations=0, errors=1)
    cause(exp, "cannot list integrations", f"HTTP {code}")
    assert integrations_listed(sim) == 1 + MAX_RETRIES


def test_a_transient_503_is_retried_into_success(sim: Simulator, exp: Running) -> None:
    sim.faults = F.first(1, F.status(503, F.on()), F.on(F.INTEGRATIONS))
    check(exp.scrape(), up=1, integrations=1, errors=1)
    assert integrations_listed(sim) == 2


def test_retries_stop_at_the_deadline(sim: Simulator, exp: Running) -> None:
    sim.faults = F.status(503, F.on(F.INTEGRATIONS))
    # 0.8 s announced: the 0.5 s floor less the encode reserve leaves 0.4 s to fetch, room for
    # at most one 0.2 s back-off, never for the second (0.4 s).
    check(exp.scrape(timeout=0.8), up=0, integrations=0, errors=1, timeout=0.8)
    assert integrations_listed(sim) < 1 + MAX_RETRIES


def test_login_is_not_retried_because_it_is_not_idempotent(sim: Simulator,
                                                           exp: Running) -> None:
    sim.faults = F.status(503, F.on(F.LOGIN))
    check(exp.scrape(), up=0, integrations=0, errors=0)
    cause(exp, "cannot authenticate", "HTTP 503")
    assert logins(sim) == 1


@pytest.mark.timing
def test_429_with_retry_after_inside_the_deadline_is_waited_out(sim: Simulator,
                                                                exp: Running) -> None:
    sim.faults = F.first(1, F.status(429, F.on(), headers={"Retry-After": "1"}),
                         F.on(F.INTEGRATIONS))
    scrape = exp.scrape(timeout=3.0)
    check(scrape, up=1, integrations=1, errors=1, timeout=3.0)
    assert integrations_listed(sim) == 2
    assert scrape.elapsed >= 1.0


def test_429_is_never_hammered(sim: Simulator, exp: Running) -> None:
    sim.faults = F.status(429, F.on(F.INTEGRATIONS), headers={"Retry-After": "60"})
    for _ in range(3):
        # The errors request of the first scrape may or may not beat the 429; later ones wait.
        check(exp.scrape(), up=0, integrations=0, errors=None)
    # One request saw the 429; every later one waited for Retry-After instead of calling.
    assert integrations_listed(sim) == 1
    cause(exp, "HTTP 429", "Retry-After 60s")
    cause(exp, "not calling it before then")


# --- authentication --------------------------------------------------------------------------

def test_token_revoked_mid_scrape_gives_exactly_one_relogin(sim: Simulator) -> None:
    def revoke(_request: Request, response: Response) -> Response:
        sim.revoke_tokens()
        return response

    sim.faults = F.first(1, revoke, F.on(F.INTEGRATIONS, page=1))
    with running_exporter(sim.url, CREDS, page_size=5) as exp:  # 5 pages, 4 after the revoke
        check(exp.scrape(), up=1, integrations=1, errors=1)
        assert logins(sim) == 2
        cause(exp, "logging in again")


def test_wrong_password_gives_one_login_and_names_account_and_server(sim: Simulator) -> None:
    wrong = "not-the-password-x9"
    with running_exporter(sim.url, password(SIM_USER, wrong)) as exp:
        check(exp.scrape(), up=0, integrations=0, errors=0)
        assert logins(sim) == 1
        line = cause(exp, "invalid username or password")
        assert SIM_USER in line and sim.url in line
        assert wrong not in exp.logs.text()


def test_expired_api_key_is_reported_as_expired() -> None:
    key = "pk-expired-0123456789"
    config = SimulatorConfig(users={}, api_keys={key: time.time() - 60})
    with Simulator(config) as sim, running_exporter(sim.url, api_key(key)) as exp:
        check(exp.scrape(), up=0, integrations=0, errors=0)
        cause(exp, "API key", "expired")
        assert key not in exp.logs.text()
        assert integrations_listed(sim) == 1  # a 401 with a key is not retried


# --- the errors endpoint ---------------------------------------------------------------------

def relationship_counts(sim: Simulator) -> dict[str, float]:
    """polarity_integration_errors as the fallback computes it: each integration's error ids."""
    return {i["id"]: float(len(i["relationships"]["integration-errors"]["data"]))
            for i in sim.dataset.integrations}


def error_counts(scrape: Any) -> dict[str, float]:
    return {dict(k)["integration_id"]: v
            for k, v in scrape.series("polarity_integration_errors").items()}


def test_errors_endpoint_403_keeps_up_and_falls_back_to_relationships() -> None:
    config = SimulatorConfig(users={SIM_USER: SIM_PASSWORD}, errors_forbidden=True)
    with Simulator(config) as sim, running_exporter(sim.url, CREDS) as exp:
        scrape = exp.scrape()
        check(scrape, up=1, integrations=1, errors=0)
        cause(exp, "cannot read integration errors", "HTTP 403")
        assert error_counts(scrape) == relationship_counts(sim)


# --- bodies that are not what they claim -----------------------------------------------------

HTML = b"<!DOCTYPE html><html><body><h1>502 Bad Gateway</h1></body></html>"


def test_html_error_page_with_status_200(sim: Simulator, exp: Running) -> None:
    sim.faults = F.body(HTML, F.on(F.INTEGRATIONS), content_type="text/html")
    check(exp.scrape(), up=0, integrations=0, errors=1)
    cause(exp, "expected JSON", "text/html")


def test_html_labelled_as_json(sim: Simulator, exp: Running) -> None:
    sim.faults = F.body(HTML, F.on(F.ERRORS))
    check(exp.scrape(), up=1, integrations=1, errors=0)
    cause(exp, "cannot read integration errors", "not valid JSON")


def test_wrong_content_type(sim: Simulator, exp: Running) -> None:
    sim.faults = F.body(b'{"data": []}', F.on(F.ERRORS), content_type="text/plain")
    check(exp.scrape(), up=1, integrations=1, errors=0)
    cause(exp, "expected JSON", "text/plain")


def test_truncated_listing(sim: Simulator, exp: Running) -> None:
    sim.faults = F.truncate(0.5, F.on(F.INTEGRATIONS))
    check(exp.scrape(), up=0, integrations=0, errors=1)
    cause(exp, "cannot list integrations", "not valid JSON")


def test_truncated_errors_export_no_partial_counts(sim: Simulator, exp: Running) -> None:
    sim.faults = F.truncate(0.5, F.on(F.ERRORS))
    scrape = exp.scrape()
    check(scrape, up=1, integrations=1, errors=0)
    cause(exp, "cannot read integration errors", "not valid JSON")
    # Records read before the cut are dropped, not exported as if they were all of them.
    assert error_counts(scrape) == relationship_counts(sim)


def test_connection_dropped_mid_body(sim: Simulator, exp: Running) -> None:
    sim.faults = F.cut(100, F.on(F.INTEGRATIONS))
    check(exp.scrape(), up=0, integrations=0, errors=1)
    cause(exp, "cannot list integrations")


def rewrite(fn: Any) -> Any:
    def apply(document: Any, _request: Any) -> Any:
        fn(document)
        return document
    return apply


@pytest.mark.parametrize(("name", "mutate", "message"), [
    ("data_object", lambda d: d.update(data={"id": "x"}), "'data' is not a list"),
    ("total_missing", lambda d: d["meta"]["page"].pop("total"), "meta.page.total"),
    ("total_string", lambda d: d["meta"]["page"].update(total="25"), "meta.page.total"),
])
def test_listing_of_the_wrong_shape(sim: Simulator, exp: Running, name: str, mutate: Any,
                                    message: str) -> None:
    sim.faults = F.transform_json(rewrite(mutate), F.on(F.INTEGRATIONS))
    check(exp.scrape(), up=0, integrations=0, errors=1)
    cause(exp, "cannot list integrations", message)


def test_errors_data_not_a_list(sim: Simulator, exp: Running) -> None:
    sim.faults = F.transform_json(rewrite(lambda d: d.update(data={"errors": 3})),
                                  F.on(F.ERRORS))
    check(exp.scrape(), up=1, integrations=1, errors=0)
    cause(exp, "cannot read integration errors", "'data' is not a list")


def test_null_attributes_become_empty_labels_and_are_counted(sim: Simulator,
                                                             exp: Running) -> None:
    def null_first(document: Any) -> None:
        document["data"][0]["attributes"] = None

    sim.faults = F.transform_json(rewrite(null_first), F.on(F.INTEGRATIONS))
    scrape = exp.scrape()
    check(scrape, up=1, integrations=1, errors=1)
    first = sim.dataset.integrations[0]["id"]
    assert scrape.value("polarity_integration_info", integration_id=first, name="",
                        acronym="", version="") == 1
    assert scrape.value("polarity_integration_status", integration_id=first, status="") == 1
    assert scrape.value("polarity_scrape_unreadable_fields", collector="integrations",
                        field="status") == 1
    cause(exp, "unreadable fields", "status=1")


def test_duplicate_integration_ids_are_exported_once(sim: Simulator, exp: Running) -> None:
    sim.faults = F.transform_json(rewrite(lambda d: d["data"].append(d["data"][0])),
                                  F.on(F.INTEGRATIONS))
    scrape = exp.scrape()  # a duplicate series would make the exposition unparsable
    check(scrape, up=0, integrations=1, errors=1)
    ids = [dict(k)["integration_id"] for k in scrape.series("polarity_integration_info")]
    assert sorted(ids) == sorted(i["id"] for i in sim.dataset.integrations)
    assert scrape.value("polarity_scrape_listing_complete") == 0
    cause(exp, "incomplete", "duplicate")


def test_bad_error_counts_are_skipped_and_counted(sim: Simulator, exp: Running) -> None:
    bad = {0: -3, 1: 1e300, 2: 2.5, 3: "many"}

    def spoil(document: Any) -> None:
        for index, value in bad.items():
            document["data"][index]["attributes"]["error-count"] = value

    sim.faults = F.transform_json(rewrite(spoil), F.on(F.ERRORS))
    scrape = exp.scrape()
    check(scrape, up=1, integrations=1, errors=1)
    assert scrape.value("polarity_scrape_unreadable_fields", collector="errors",
                        field="error-count") == len(bad)
    good = [e for i, e in enumerate(sim.dataset.errors) if i not in bad]
    sums: dict[tuple[str, str], float] = {}
    for error in good:
        attrs = error["attributes"]
        key = (attrs["integration-id"], clean(attrs["code"]))
        sums[key] = sums.get(key, 0.0) + attrs["error-count"]
    for labels, value in scrape.series("polarity_integration_error_occurrences_total").items():
        named = dict(labels)
        if named["code"] != "other":
            assert value == sums[(named["integration_id"], named["code"])]
    # The spoilt records still count as records.
    records = expected_errors(sim.dataset.errors)["records"]
    exported = {dict(k)["integration_id"]: v
                for k, v in scrape.series("polarity_integration_errors").items()}
    assert all(exported[i] == n for i, n in records.items())


def test_unreadable_occurred_on_is_counted_not_invented(sim: Simulator, exp: Running) -> None:
    def spoil(document: Any) -> None:
        for error in document["data"]:
            error["attributes"]["occurred-on"] = "yesterday at noon"

    sim.faults = F.transform_json(rewrite(spoil), F.on(F.ERRORS))
    scrape = exp.scrape()
    check(scrape, up=1, integrations=1, errors=1)
    assert not scrape.series("polarity_integration_error_last_occurrence_timestamp_seconds")
    assert scrape.value("polarity_scrape_unreadable_fields", collector="errors",
                        field="occurred-on") == len(sim.dataset.errors)


def test_control_characters_in_names_and_codes(sim: Simulator, exp: Running) -> None:
    name, code = "Bell\x07 and\x1b[31m escape", "E\x00RR\nline"

    def listing(document: Any) -> None:
        document["data"][0]["attributes"]["name"] = name

    def errors(document: Any) -> None:
        # The most frequent code of its integration: never folded into "other".
        document["data"][0]["attributes"].update({"code": code, "error-count": 10**9})

    sim.faults = F.chain(F.transform_json(rewrite(listing), F.on(F.INTEGRATIONS)),
                         F.transform_json(rewrite(errors), F.on(F.ERRORS)))
    scrape = exp.scrape()
    check(scrape, up=1, integrations=1, errors=1)
    names = {dict(k)["name"] for k in scrape.series("polarity_integration_info")}
    assert "Bell  and [31m escape" in names  # each control character became a space
    owner = sim.dataset.errors[0]["attributes"]["integration-id"]
    assert scrape.value("polarity_integration_error_occurrences_total", integration_id=owner,
                        code="E RR line") == 10**9


def test_invalid_utf8_in_names_and_codes(sim: Simulator, exp: Running) -> None:
    first_id = sim.dataset.integrations[0]["id"]
    first_error = sim.dataset.errors[0]["attributes"]

    def raw(document: Any, raw_bytes: bytes) -> bytes:
        # json.dumps escapes "\ud800" as the lone-surrogate escape a JSON encoder may send.
        return json.dumps(document).encode().replace(b"@@", raw_bytes)

    listing = {"data": [dict(i) for i in sim.dataset.integrations],
               "meta": {"page": {"number": 1, "size": 200,
                                 "total": len(sim.dataset.integrations)}}}
    listing["data"][0] = {**listing["data"][0],
                          "attributes": {**listing["data"][0]["attributes"],
                                         "name": "bad@@name", "acronym": "\ud800"}}
    errors = {"data": [dict(e) for e in sim.dataset.errors]}
    errors["data"][0] = {**errors["data"][0],  # the integration's most frequent code
                         "attributes": {**first_error, "code": "bad@@code",
                                        "error-count": 10**9}}
    sim.faults = F.chain(F.body(raw(listing, b"\xff\xfe"), F.on(F.INTEGRATIONS)),
                         F.body(raw(errors, b"\xc3"), F.on(F.ERRORS)))
    scrape = exp.scrape()
    check(scrape, up=1, integrations=1, errors=1)
    info = {dict(k)["integration_id"]: dict(k) for k in scrape.series("polarity_integration_info")}
    assert info[first_id]["name"] == "bad\ufffd\ufffdname"
    assert info[first_id]["acronym"] == "\ufffd"
    assert scrape.value("polarity_integration_error_occurrences_total",
                        integration_id=first_error["integration-id"],
                        code="bad\ufffdcode") == 10**9


# --- paging that lies ------------------------------------------------------------------------

def paged(sim: Simulator, **kwargs: Any) -> Any:
    return running_exporter(sim.url, CREDS, page_size=5, **kwargs)


def test_total_larger_than_the_pages_hold(sim: Simulator) -> None:
    sim.faults = F.inflate_total(7)
    with paged(sim) as exp:
        scrape = exp.scrape()
        check(scrape, up=0, integrations=1, errors=1)
        assert scrape.value("polarity_scrape_listing_complete") == 0
        assert len(scrape.series("polarity_integration_info")) == len(sim.dataset.integrations)
        assert integrations_listed(sim) == (25 + 7 + 4) // 5  # bounded by the first total
        cause(exp, "incomplete", "server said 32")


def test_total_growing_while_paging(sim: Simulator) -> None:
    sim.faults = F.growing_total(3)
    with paged(sim) as exp:
        scrape = exp.scrape()
        check(scrape, up=0, integrations=1, errors=1)
        assert scrape.value("polarity_scrape_listing_complete") == 0
        assert integrations_listed(sim) == 5  # pages from the first total, no chasing
        cause(exp, "incomplete", "total changed")


def test_same_page_served_twice(sim: Simulator) -> None:
    first_page = sim.dataset.integrations[:5]
    sim.faults = F.repeat_page(1, 3, lambda _n: first_page)
    with paged(sim) as exp:
        scrape = exp.scrape()
        check(scrape, up=0, integrations=1, errors=1)
        ids = [dict(k)["integration_id"] for k in scrape.series("polarity_integration_info")]
        assert len(ids) == len(set(ids)) == 20  # page 3's five integrations never arrived
        cause(exp, "incomplete", "duplicate")


def test_endless_pages_are_bounded(sim: Simulator) -> None:
    sim.faults = F.endless_pages(10**9)
    with paged(sim, timeout=30.0) as exp:
        scrape = exp.scrape(timeout=30.0)  # time enough for every page the bound allows
        # The listing stops at MAX_PAGES: read, but incomplete, so the server is not up.
        check(scrape, up=0, integrations=1, errors=1, timeout=30.0)
        assert scrape.value("polarity_scrape_listing_complete") == 0
        assert integrations_listed(sim) == MAX_PAGES
        cause(exp, "incomplete")


# --- TLS to Polarity -------------------------------------------------------------------------

@pytest.fixture
def tls_sim(certs: Certs) -> Iterator[Simulator]:
    config = SimulatorConfig(users={SIM_USER: SIM_PASSWORD},
                             tls_cert_file=str(certs.self_signed_cert),
                             tls_key_file=str(certs.self_signed_key))
    with Simulator(config) as simulator:
        yield simulator


def test_self_signed_polarity_fails_without_ca_file(tls_sim: Simulator) -> None:
    with running_exporter(tls_sim.url, CREDS) as exp:
        check(exp.scrape(), up=0, integrations=0, errors=0)
        cause(exp, "TLS certificate verify failed", "--polarity.ca-file")


def test_self_signed_polarity_succeeds_with_ca_file(tls_sim: Simulator, certs: Certs) -> None:
    with running_exporter(tls_sim.url, CREDS, ca_file=str(certs.self_signed_cert)) as exp:
        check(exp.scrape(), up=1, integrations=1, errors=1)


# urllib3's per-request warning is silenced by the command-line entry point (cli.py), which this
# in-process exporter does not run.
@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_insecure_skip_verify_succeeds_and_warns(tls_sim: Simulator) -> None:
    with running_exporter(tls_sim.url, CREDS, insecure=True) as exp:
        check(exp.scrape(), up=1, integrations=1, errors=1)
        line = cause(exp, "verification", "disabled")
        assert "level=warn" in line


"""Regression tests for the ten findings of the outside review of the Polarity client (issue 9).

Each test reproduces one finding against the simulator (test-only fault modes) or a socket that
misbehaves, and checks the behaviour the exporter promises instead.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
from typing import Any

import pytest
from conftest import CREDS, SIM_PASSWORD, SIM_USER
from inproc import Running, running_exporter
from reference import expected_errors
from support import growth_mib, wait_out_rate_limit

from polarity_exporter.client import MAX_PAGE_BYTES, WHOLE_ERRORS_BYTES
from polarity_exporter.retries import MAX_RETRY_AFTER
from polarity_exporter.scrapecache import (
    ENCODE_RESERVE_FRACTION,
    ENCODE_RESERVE_MAX,
    encode_reserve,
)
from polarity_exporter.simulator import Request, Response, Simulator, SimulatorConfig
from polarity_exporter.simulator import faults as F

JSONAPI = {"Content-Type": "application/vnd.api+json"}


# 1 -----------------------------------------------------------------------------------------------

@pytest.mark.timing
@pytest.mark.parametrize("when", ["first-login", "relogin-after-401", "after-failed-refresh"])
def test_1_rate_limited_login_never_deadlocks(sim: Simulator, exp: Running, when: str) -> None:
    if when != "first-login":
        assert exp.scrape().up == 1
        sim.revoke_tokens()
        if when == "after-failed-refresh":
            exp.exporter.client.auth.clock = lambda: time.time() + 3600  # refresh is due
    sim.faults = F.status(429, F.on(F.LOGIN), headers={"Retry-After": "1"})
    first = exp.scrape()
    assert first.response.status_code == 200 and first.up == 0
    assert first.elapsed < 2.0
    sim.faults = None
    wait_out_rate_limit(exp)
    logins = sim.counts[("POST", F.LOGIN)]
    assert exp.scrape().up == 1  # Polarity recovered: so does the exporter, without a restart
    assert sim.counts[("POST", F.LOGIN)] == logins + 1


# 2 -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fault", [F.trickle_headers, F.trickle_chunk_size],
                         ids=["headers", "chunk-size-line"])
@pytest.mark.timing
def test_2_trickled_headers_and_chunk_sizes_are_cut_at_the_deadline(
        sim: Simulator, exp: Running, fault: Any) -> None:
    sim.faults = fault(0.2, F.on(F.INTEGRATIONS))
    scrape = exp.scrape(timeout=2.0)  # deadline 1.5 s, of which 1.2 s for Polarity
    assert scrape.response.status_code == 200
    assert scrape.elapsed < 1.5
    assert scrape.up == 0 and scrape.success("errors") == 1
    assert exp.logs.matching("cannot list integrations", "deadline")


# 3 -----------------------------------------------------------------------------------------------

def test_3_a_huge_error_body_is_read_only_for_its_first_kilobytes(sim: Simulator,
                                                                   exp: Running) -> None:
    sim.faults = F.huge_body(500, 400, F.on(F.LOGIN))  # 400 MiB
    result: list[Any] = []
    grown = growth_mib(lambda: result.append(exp.scrape()))
    assert result[0].up == 0 and result[0].elapsed < 2.0
    assert grown < 30
    assert exp.logs.matching("cannot authenticate", "HTTP 500")


@pytest.mark.timing
def test_3_a_trickled_error_body_is_cut_at_the_deadline(sim: Simulator, exp: Running) -> None:
    sim.faults = F.chain(F.status(500, F.on(F.LOGIN), body=b" " * 8192),
                         F.trickle(0.2, F.on(F.LOGIN)))
    scrape = exp.scrape()
    assert scrape.up == 0 and scrape.elapsed < 1.5


# 4 -----------------------------------------------------------------------------------------------

def deep(levels: int, wrapper: bytes = b'{"data":[%s]}') -> bytes:
    return wrapper % (b"[" * levels + b"]" * levels)


def test_4_deep_nesting_in_the_errors_body_fails_only_that_part(sim: Simulator,
                                                                exp: Running) -> None:
    sim.faults = F.body(deep(100_000), F.on(F.ERRORS))
    result: list[Any] = []
    grown = growth_mib(lambda: result.append(exp.scrape()))
    scrape = result[0]
    assert scrape.up == 1 and scrape.success("errors") == 0
    assert grown < 50
    line = exp.logs.matching("cannot read integration errors")[0]
    assert "too dense" in line or "nested too deeply" in line


def test_4_deep_nesting_in_a_streamed_errors_body_fails_only_that_part(
        sim: Simulator, exp: Running) -> None:
    one_round = b",".join(json.dumps(e).encode() for e in sim.dataset.errors)
    records = b",".join([one_round] * (WHOLE_ERRORS_BYTES // len(one_round) + 1))  # streamed
    sim.faults = F.body(b'{"data":[' + records + b"," + deep(100_000, b"%s") + b"]}",
                        F.on(F.ERRORS))
    result: list[Any] = []
    grown = growth_mib(lambda: result.append(exp.scrape(timeout=5)))
    assert result[0].up == 1 and result[0].success("errors") == 0
    assert grown < 100
    assert exp.logs.matching("cannot read integration errors", "nested too deeply")


@pytest.mark.parametrize("path", [F.LOGIN, F.INTEGRATIONS])
def test_4_deep_nesting_in_login_or_listing_answers_200(sim: Simulator, exp: Running,
                                                        path: str) -> None:
    sim.faults = F.body(deep(100_000, b'{"data":[%s],"meta":{"page":{"total":1}}}'), F.on(path))
    scrape = exp.scrape()
    assert scrape.response.status_code == 200 and scrape.up == 0
    assert scrape.value("process_resident_memory_bytes") is not None


@pytest.mark.parametrize("field", ["status", "name", "id"])
def test_4_a_401_digit_integer_costs_only_its_field(sim: Simulator, exp: Running,
                                                    field: str) -> None:
    def spoil(_request: Request, response: Response) -> Response:
        text = b"".join(response.chunks).decode()
        document = json.loads(text)
        if field == "id":
            document["data"][0]["id"] = "@@"
        else:
            document["data"][0]["attributes"][field] = "@@"
        raw = json.dumps(document).encode().replace(b'"@@"', b"9" * 401)
        return Response(200, [raw], JSONAPI)

    sim.faults = F.chain(lambda r, resp: spoil(r, resp) if F.on(F.INTEGRATIONS)(r) else resp)
    scrape = exp.scrape()
    assert scrape.response.status_code == 200 and scrape.success("integrations") == 1
    assert scrape.value("polarity_scrape_unreadable_fields", collector="integrations",
                        field=field) == 1


# 5 -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("number", [b"99999999999999999999", b"1e400", b"-1e400",
                                    b"1e99999999999999999999", b"NaN", b"9" * 5000])
def test_5_an_out_of_range_count_costs_only_its_record(sim: Simulator, exp: Running,
                                                       number: bytes) -> None:
    body = json.dumps({"data": sim.dataset.errors}).encode()
    first = sim.dataset.errors[0]["attributes"]["error-count"]
    body = body.replace(f'"error-count": {first}'.encode(), b'"error-count": ' + number, 1)
    sim.faults = F.body(body, F.on(F.ERRORS))
    scrape = exp.scrape()
    assert scrape.success("errors") == 1
    assert scrape.value("polarity_scrape_unreadable_fields", collector="errors",
                        field="error-count") == 1
    records = expected_errors(sim.dataset.errors)["records"]
    exported = {dict(k)["integration_id"]: v
                for k, v in scrape.series("polarity_integration_errors").items()}
    assert all(exported[i] == n for i, n in records.items())


# 6 -----------------------------------------------------------------------------------------------

def test_6_compressed_pages_cannot_amplify_memory(sim: Simulator) -> None:
    def bomb(request: Request, response: Response) -> Response:
        document = json.loads(b"".join(response.chunks))
        document["data"][0]["attributes"]["name"] = "x" * 40_000_000
        raw = gzip.compress(json.dumps(document).encode(), compresslevel=9)
        return Response(200, [raw], {**JSONAPI, "Content-Encoding": "gzip"})

    sim.faults = lambda r, resp: bomb(r, resp) if F.on(F.INTEGRATIONS)(r) else resp
    with running_exporter(sim.url, CREDS, page_size=5, timeout=10) as exp:
        result: list[Any] = []
        grown = growth_mib(lambda: result.append(exp.scrape(timeout=10)))
        assert result[0].up == 0 and result[0].success("errors") == 1
        assert exp.logs.matching("cannot list integrations", f"larger than {MAX_PAGE_BYTES}")
    assert grown < 150


# 7 -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("body", [
    {"errors": [{"status": "500", "detail": "database unavailable"}]},
    {"errors": [{"status": "500", "meta": {"errors": [{"detail": "database unavailable"}]}}]},
], ids=["detail", "nested-meta-detail"])
def test_7_polaritys_error_detail_reaches_the_log(sim: Simulator, exp: Running,
                                                  body: dict[str, Any]) -> None:
    sim.faults = F.status(500, F.on(F.INTEGRATIONS), body=json.dumps(body).encode())
    exp.scrape()
    assert exp.logs.matching("cannot list integrations", "HTTP 500", "database unavailable")


# 8 -----------------------------------------------------------------------------------------------

def test_8_retry_after_inf_is_clamped(sim: Simulator, exp: Running) -> None:
    sim.faults = F.status(429, F.on(F.ERRORS), headers={"Retry-After": "inf"})
    exp.scrape()
    assert 0 < exp.exporter.client.transport.rate_limit.remaining() <= MAX_RETRY_AFTER
    assert "infs" not in exp.logs.text()
    assert exp.logs.matching("Retry-After 600s")


def test_8_retry_after_as_an_http_date_is_honoured(sim: Simulator, exp: Running) -> None:
    when = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 120))
    sim.faults = F.status(429, F.on(F.ERRORS), headers={"Retry-After": when})
    exp.scrape()
    assert 100 < exp.exporter.client.transport.rate_limit.remaining() <= 120


def test_8_a_token_already_expired_on_arrival_is_not_refreshed_in_a_loop(sim: Simulator,
                                                                         exp: Running) -> None:
    def skewed(request: Request, response: Response) -> Response:
        document = json.loads(b"".join(response.chunks))
        document["data"]["expiration_time"] = int(time.time()) - 100
        return Response(200, [json.dumps(document).encode()], JSONAPI)

    sim.faults = lambda r, resp: skewed(r, resp) if F.on(F.LOGIN)(r) else resp
    for _ in range(4):
        assert exp.scrape().up == 1
    assert sim.counts[("GET", F.REFRESH)] == 0
    assert sim.counts[("POST", F.LOGIN)] == 1


def test_8_a_redirect_names_where_it_points(sim: Simulator, exp: Running) -> None:
    sim.faults = F.status(307, F.on(F.INTEGRATIONS), body=b"",
                          headers={"Location": "https://sso.example.com/login?token=s3cret"})
    exp.scrape()
    line = exp.logs.matching("cannot list integrations", "HTTP 307 redirect")[0]
    assert "https://sso.example.com/login" in line and "s3cret" not in line


# 9 -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("first", "second"), [
    (5, "5"), ("a\x01b", "a\x02b"), ("x" * 200 + "1", "x" * 200 + "2"),
], ids=["number-and-string", "control-characters", "beyond-the-label-cut"])
def test_9_ids_that_map_to_one_label_make_one_series(sim: Simulator, exp: Running,
                                                     first: Any, second: Any) -> None:
    def ids(_request: Request, response: Response) -> Response:
        document = json.loads(b"".join(response.chunks))
        document["data"][0]["id"], document["data"][1]["id"] = first, second
        return Response(200, [json.dumps(document).encode()], JSONAPI)

    sim.faults = lambda r, resp: ids(r, resp) if F.on(F.INTEGRATIONS)(r) else resp
    scrape = exp.scrape()  # a duplicate series would make the exposition unparsable
    assert scrape.response.status_code == 200
    labels = [dict(k)["integration_id"] for k in scrape.series("polarity_integration_running")]
    assert len(labels) == len(set(labels)) == len(sim.dataset.integrations) - 1
    dropped = scrape.value("polarity_scrape_unreadable_fields", collector="integrations",
                           field="id")
    if first == 5:  # the same id twice: dropped by the listing, which then does not add up
        assert scrape.value("polarity_scrape_listing_complete") == 0
        assert dropped is None  # a duplicate, not an unreadable id
    else:
        assert dropped == 1


# 10 ----------------------------------------------------------------------------------------------

@pytest.mark.timing
def test_10_the_answer_leaves_before_the_scrape_deadline(sim: Simulator) -> None:
    # A timeout whose deadline keeps the largest encode reserve: the answer is designed to leave
    # half of it (0.5 s) before the deadline, and must leave before the deadline.
    deadline = ENCODE_RESERVE_MAX / ENCODE_RESERVE_FRACTION
    sim.faults = F.hang(deadline + 30, F.on(F.ERRORS))
    answered: list[float] = []
    with running_exporter(sim.url, CREDS, timeout=deadline) as exp:
        offset = exp.exporter.app.timeout_offset
        threads = [threading.Thread(target=lambda: answered.append(
            exp.scrape(timeout=deadline + offset).elapsed)) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert len(answered) == 3
    assert max(answered) < deadline
    assert encode_reserve(deadline) / 2 >= 0.5  # the margin this bound has


# Found by attacking the changes above ------------------------------------------------------------

@pytest.mark.parametrize("token", ["abc\ndef", "tok\u00e9n", "two words"])
def test_a_token_no_header_can_carry_is_refused_not_sent(sim: Simulator, exp: Running,
                                                         token: str) -> None:
    def bad(_request: Request, response: Response) -> Response:
        document = json.loads(b"".join(response.chunks))
        document["data"]["token"] = token
        return Response(200, [json.dumps(document).encode()], JSONAPI)

    sim.faults = lambda r, resp: bad(r, resp) if F.on(F.LOGIN)(r) else resp
    scrape = exp.scrape()
    assert scrape.up == 0
    assert exp.logs.matching("cannot authenticate", "characters a bearer token cannot have")
    assert token not in exp.logs.text()
    sim.faults = None
    assert exp.scrape().up == 1  # the next login brings a usable token


@pytest.mark.timing
def test_overlapping_scrapes_cannot_keep_a_stalled_request_alive() -> None:
    config = SimulatorConfig(users={SIM_USER: SIM_PASSWORD})
    with Simulator(config) as sim, running_exporter(sim.url, CREDS, timeout=2.0) as exp:
        sim.faults = F.first(1, F.trickle(0.5, F.on(F.ERRORS)), F.on(F.ERRORS))
        results: list[Any] = []
        threads = []
        for _ in range(6):  # a scrape every 0.5 s, each with the full 2 s deadline
            thread = threading.Thread(target=lambda: results.append(exp.scrape(timeout=2.5)))
            thread.start()
            threads.append(thread)
            time.sleep(0.5)  # the scrapers' own pace, as an HA pair's interval
        for thread in threads:
            thread.join()
        # The stalled request dies with its fetch, at most --polarity.timeout after it began
        # (the first three scrapes, at 0, 0.5 and 1 s, share it: it runs to 1.6 s at least);
        # the scrapes after that fetch afresh: at least one, at most one each.
        assert 2 <= sim.counts[("GET", F.ERRORS)] <= len(threads) - 2
        assert exp.scrape(timeout=2.5).success("errors") == 1


def test_an_orphan_id_named_other_makes_no_duplicate_series(sim: Simulator) -> None:
    def orphans(_request: Request, response: Response) -> Response:
        ids = ["other"] * 5 + [f"gone_{i}" for i in range(150)]
        records = [{"id": f"e{n}", "attributes": {"integration-id": i, "code": "E",
                                                  "error-count": 1}} for n, i in enumerate(ids)]
        return Response(200, [json.dumps({"data": records}).encode()], JSONAPI)

    sim.faults = lambda r, resp: orphans(r, resp) if F.on(F.ERRORS)(r) else resp
    with running_exporter(sim.url, CREDS) as exp:
        scrape = exp.scrape()
    other = [v for k, v in scrape.series("polarity_integration_errors").items()
             if dict(k)["integration_id"] == "other"]
    assert len(other) == 1
    assert sum(scrape.series("polarity_integration_errors").values()) == 155


@pytest.mark.parametrize("shape", ["one-huge-record", "distinct-codes", "distinct-orphans"])
def test_a_streamed_errors_body_cannot_grow_memory_without_bound(sim: Simulator,
                                                                 shape: str) -> None:
    def body() -> bytes:
        if shape == "one-huge-record":
            return b'{"data":[{"attributes":{"meta":[' + b"[]," * 3_000_000 + b"[]]}}]}"
        key = "code" if shape == "distinct-codes" else "integration-id"
        records = (json.dumps({"attributes": {"integration-id": "x", "code": "c",
                                              key: f"v{i}", "error-count": 1}})
                   for i in range(300_000))
        return b'{"data":[' + ",".join(records).encode() + b"]}"

    sim.faults = F.body(body(), F.on(F.ERRORS))
    result: list[Any] = []
    # A 60 s deadline: this measures memory, and streaming tens of MiB takes seconds of CPU,
    # many more when the suite's other workers keep the cores busy (an image build).
    with running_exporter(sim.url, CREDS, timeout=60) as exp:
        grown = growth_mib(lambda: result.append(exp.scrape(timeout=60)))
    assert result[0].response.status_code == 200 and result[0].up == 1
    assert grown < 150

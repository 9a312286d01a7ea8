"""Regression tests for the outside review of the exporter's own endpoint (issue 10): hostile or
careless clients, shutdown, the scrape deadline, basic auth, URLs, cardinality, and start-up
warnings."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import logging
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import requests
import yaml
from conftest import (
    CREDS,
    PASSWORD_ENV,
    SIM_PASSWORD,
    SIM_USER,
    clean_env,
    free_port,
    wait_until_ready,
)
from inproc import Certs, running_exporter
from test_cli import assert_one_line_error, run_cli

from polarity_exporter.simulator import Request, Response, Simulator, SimulatorConfig
from polarity_exporter.simulator import faults as F
from polarity_exporter.web import MIN_TIMEOUT, TIMEOUT_HEADER
from polarity_exporter.webconfig import load_web_config

GRACE = 3.0
LOGOUT = ("POST", "/api/users/logout")
LIST = ("GET", "/api/integrations")


def start(sim: Simulator, tmp_path: Path, *flags: str) -> tuple[subprocess.Popen[str], str, Path]:
    port = free_port()
    log_path = tmp_path / f"exporter-{port}.log"
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "polarity_exporter", f"--polarity.url={sim.url}",
             f"--web.listen-address=127.0.0.1:{port}", f"--web.shutdown-timeout={GRACE}",
             *flags], stdout=log_file, stderr=subprocess.STDOUT, text=True,
            env=clean_env(PASSWORD_ENV))
    return proc, f"127.0.0.1:{port}", log_path


def threads_of(pid: int) -> int:
    found = re.search(r"Threads:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())
    assert found
    return int(found.group(1))


def sigterm_and_wait(proc: subprocess.Popen[str]) -> float:
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=GRACE + 10)
    finally:
        if proc.poll() is None:
            proc.kill()
    return time.monotonic() - started


# 1: shutdown and connections ---------------------------------------------------------------------

@pytest.mark.timing
@pytest.mark.parametrize("client", ["idle", "half-sent", "tls-idle"])
def test_1_sigterm_with_a_lingering_connection_exits_0_within_the_grace(
        sim: Simulator, certs: Certs, tmp_path: Path, client: str) -> None:
    flags: list[str] = []
    if client == "tls-idle":
        config = tmp_path / "web.yml"
        config.write_text(yaml.safe_dump({"tls_server_config": {
            "cert_file": str(certs.server_cert), "key_file": str(certs.server_key)}}))
        flags.append(f"--web.config.file={config}")
    proc, address, log_path = start(sim, tmp_path, *flags)
    host, port = address.split(":")
    scheme = "https" if client == "tls-idle" else "http"
    if scheme == "https":
        _wait_tls(address, certs, proc)
    else:
        wait_until_ready(f"http://{address}/-/ready", proc)
    requests.get(f"{scheme}://{address}/metrics", timeout=10,
                 verify=str(certs.ca) if scheme == "https" else True)  # logs in
    sock = socket.create_connection((host, int(port)))
    if client == "half-sent":
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
    if client == "tls-idle":
        context = ssl.create_default_context(cafile=str(certs.ca))
        sock = context.wrap_socket(sock, server_hostname="localhost")
    try:
        elapsed = sigterm_and_wait(proc)
    finally:
        sock.close()
    assert proc.returncode == 0, log_path.read_text()
    assert elapsed < GRACE + 5  # the grace, plus logout's own deadline at the most
    assert sim.counts[LOGOUT] == 1
    assert "Traceback" not in log_path.read_text()


def _wait_tls(address: str, certs: Certs, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert proc.poll() is None, "exporter exited"
        try:
            if requests.get(f"https://{address}/-/ready", verify=str(certs.ca),
                            timeout=1).status_code == 200:
                return
        except requests.ConnectionError:
            time.sleep(0.05)
    raise TimeoutError(address)


def test_1_a_request_cut_off_mid_headers_is_never_served(sim: Simulator) -> None:
    with running_exporter(sim.url, CREDS) as exp:
        host, port = exp.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            sock.shutdown(socket.SHUT_WR)
            assert sock.recv(1024) == b""  # closed without an answer
    assert sim.counts[LIST] == 0


@pytest.mark.timing
def test_1_trickled_request_headers_are_cut_at_the_header_deadline(sim: Simulator) -> None:
    with running_exporter(sim.url, CREDS) as exp:
        server = exp.exporter.server
        server._timeouts = dataclasses.replace(server._timeouts, head=1.0)
        host, port = exp.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(b"GET /metrics HTTP/1.1\r\n")
            started = time.monotonic()
            sock.settimeout(5)
            closed = False
            while time.monotonic() - started < 4:
                try:
                    sock.sendall(b"X")
                except OSError:
                    closed = True
                    break
                if sock.recv(1024, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                    closed = True
                    break
                time.sleep(0.2)  # the client's own pace: one byte every 0.2 s
    assert closed and time.monotonic() - started < 3
    assert sim.counts[LIST] == 0


@pytest.mark.timing
def test_1_five_hundred_idle_connections_leave_health_answering_and_threads_bounded(
        sim: Simulator, tmp_path: Path) -> None:
    proc, address, _ = start(sim, tmp_path)
    wait_until_ready(f"http://{address}/-/ready", proc)
    host, port = address.split(":")
    before = threads_of(proc.pid)
    idle = [socket.create_connection((host, int(port))) for _ in range(500)]
    try:
        started = time.monotonic()
        response = requests.get(f"http://{address}/-/healthy", timeout=5)
        answered = time.monotonic() - started
        threads = threads_of(proc.pid)
    finally:
        for sock in idle:
            sock.close()
        proc.terminate()
        proc.wait(timeout=20)
    assert response.status_code == 200 and answered < 1.0
    assert threads <= before + 2


# 2: the scrape deadline ---------------------------------------------------------------------------

# What each header becomes: the floor (MIN_TIMEOUT) or the ceiling (--polarity.timeout).
ODD_TIMEOUTS = {"0": "floor", "-5": "floor", "inf": "ceiling", "-inf": "floor", "nan": "ceiling",
                "1e308": "ceiling", "1e11": "ceiling", "1e9": "ceiling", "ten": "ceiling",
                "9" * 400: "ceiling"}


@pytest.mark.parametrize(("value", "clamped"), ODD_TIMEOUTS.items(), ids=list(ODD_TIMEOUTS))
def test_2_any_timeout_header_answers_200_with_a_clamped_deadline(sim: Simulator, value: str,
                                                                 clamped: str) -> None:
    sim.config.latency = 0.05  # keeps a fetch in flight for the next request
    with running_exporter(sim.url, CREDS) as exp:
        results: list[int] = []

        def normal() -> None:
            results.append(exp.scrape(timeout=3).response.status_code)

        thread = threading.Thread(target=normal)
        thread.start()
        odd = requests.get(f"{exp.url}/metrics", timeout=30,
                           headers={"X-Prometheus-Scrape-Timeout-Seconds": value})
        thread.join()
        deadline = exp.exporter.app.scrape_timeout({TIMEOUT_HEADER: value})
    assert odd.status_code == 200
    assert results == [200]
    assert deadline == {"floor": MIN_TIMEOUT, "ceiling": exp.exporter.polarity.config.timeout}[
        clamped]


@pytest.mark.timing
@pytest.mark.parametrize("cache_ttl", [0.0, 30.0])
def test_2_a_client_looping_with_a_zero_timeout_does_not_fail_normal_scrapes(
        cache_ttl: float) -> None:
    config = SimulatorConfig(users={SIM_USER: SIM_PASSWORD}, latency=0.3)
    with Simulator(config) as sim, running_exporter(sim.url, CREDS, timeout=10,
                                                    cache_ttl=cache_ttl) as exp:
        stop = threading.Event()

        def hostile() -> None:
            while not stop.is_set():
                requests.get(f"{exp.url}/metrics", timeout=10,
                             headers={"X-Prometheus-Scrape-Timeout-Seconds": "0"})

        spoiler = threading.Thread(target=hostile)
        spoiler.start()
        try:
            with ThreadPoolExecutor(5) as pool:  # rounds of five concurrent normal scrapes
                ups = [s.up for s in pool.map(lambda _: exp.scrape(10), range(20))]
        finally:
            stop.set()
            spoiler.join()
    assert sum(1 for up in ups if up == 1) >= 0.95 * len(ups)


# 3: basic auth ------------------------------------------------------------------------------------

@pytest.mark.parametrize("length", [72, 73, 200])
def test_3_long_basic_auth_passwords_are_compared_safely(sim: Simulator, tmp_path: Path,
                                                         length: int) -> None:
    secret = ("p" * length).encode()
    hashed = bcrypt.hashpw(secret[:72], bcrypt.gensalt(rounds=4)).decode()
    path = tmp_path / "web.yml"
    path.write_text(yaml.safe_dump({"basic_auth_users": {"prom": hashed}}))
    with running_exporter(sim.url, CREDS, security=load_web_config(str(path))) as exp:
        def auth(password: bytes) -> dict[str, str]:
            return {"Authorization": "Basic " + base64.b64encode(b"prom:" + password).decode()}

        good = requests.get(f"{exp.url}/metrics", headers=auth(secret), timeout=10)
        bad = requests.get(f"{exp.url}/metrics", headers=auth(b"q" * length), timeout=10)
        assert good.status_code == 200 and bad.status_code == 401
        assert "Traceback" not in exp.logs.text()


def test_3_a_failing_request_is_logged_once_per_interval(sim: Simulator) -> None:
    with running_exporter(sim.url, CREDS) as exp:
        def broken(_timeout: float) -> list[Any]:
            raise ValueError("boom")

        exp.exporter.app._scrape = broken
        statuses = [requests.get(f"{exp.url}/metrics", timeout=10).status_code
                    for _ in range(20)]
        assert statuses == [500] * 20
        assert len(exp.logs.matching("request failed unexpectedly")) == 1
        assert "Traceback" not in exp.logs.text()


def test_a_fetch_that_fails_unexpectedly_still_answers_up_zero(sim: Simulator) -> None:
    with running_exporter(sim.url, CREDS) as exp:
        def broken(_deadline: Any) -> Any:
            raise ValueError("boom")

        assert exp.exporter.polarity is not None
        exp.exporter.polarity.shared._fetch = broken
        scrape = exp.scrape()
        assert scrape.response.status_code == 200 and scrape.up == 0
        assert len(exp.logs.matching("Polarity fetch failed unexpectedly", "boom")) == 1
        assert "Traceback" not in exp.logs.text()


# 4: the Polarity URL ------------------------------------------------------------------------------

@pytest.mark.parametrize("url", ["ftp://user:S3cretPW@host", "https://user:S3cretPW@",
                                 "https://user:S3cretPW@[::1", "https://[::1",
                                 "https://host:99999"])
def test_4_a_bad_url_is_one_line_exit_2_without_the_password(url: str) -> None:
    result = run_cli(f"--polarity.url={url}", env=PASSWORD_ENV)
    assert result.returncode == 2
    assert_one_line_error(result, "--polarity.url")
    assert "S3cretPW" not in result.stderr + result.stdout


# 5: cardinality from orphan ids ------------------------------------------------------------------

def test_5_orphan_ids_fold_into_other_beyond_the_cap(sim: Simulator) -> None:
    def orphans(_request: Request, response: Response) -> Response:
        records = [{"id": f"e{i}", "type": "integration-errors", "attributes": {
            "integration-id": f"gone_{i}", "code": "E", "error-count": 1,
            "occurred-on": "2024-04-08 14:20:07Z"}} for i in range(1000)]
        return Response(200, [json.dumps({"data": records}).encode()], dict(response.headers))

    sim.faults = lambda r, resp: orphans(r, resp) if F.on(F.ERRORS)(r) else resp
    with running_exporter(sim.url, CREDS) as exp:
        scrape = exp.scrape(timeout=5)
    ids = {dict(k)["integration_id"] for k in scrape.series("polarity_integration_errors")}
    listed = {i["id"] for i in sim.dataset.integrations}
    assert len(ids - listed) == 100  # 99 orphans and "other"
    assert scrape.value("polarity_integration_errors", integration_id="other") == 901
    assert scrape.value("polarity_scrape_orphan_ids_folded") == 901


# 6: start-up warnings -----------------------------------------------------------------------------

def test_6_a_world_readable_password_file_and_plain_http_are_warned_about(
        tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text(SIM_PASSWORD)
    secret.chmod(0o644)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "polarity_exporter", "--polarity.url=http://polarity.invalid",
         f"--polarity.username={SIM_USER}", f"--polarity.password-file={secret}",
         f"--web.listen-address=127.0.0.1:{port}"], env=clean_env(), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_until_ready(f"http://127.0.0.1:{port}/-/ready", proc)
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=20)
    assert re.search(r"level=warn .*readable by group or others.*mode=0644", output)
    assert re.search(r"level=warn .*unencrypted over http://", output)
    assert SIM_PASSWORD not in output


def test_4_repeated_warnings_are_written_once_per_interval() -> None:
    from polarity_exporter.logs import RepeatFilter

    now = [0.0]
    repeats = RepeatFilter(interval=10, clock=lambda: now[0])

    def record(err: str) -> Any:
        made = logging.makeLogRecord({"name": "polarity_exporter.collector", "levelno": 30,
                                      "msg": "cannot list integrations"})
        made.err = err
        return made

    written = [repeats.filter(record("HTTP 500")) for _ in range(50)]
    assert written == [True] + [False] * 49
    assert repeats.filter(record("HTTP 503"))  # another cause is news
    now[0] = 11.0
    again = record("HTTP 500")
    assert repeats.filter(again) and again.repeated == 49


# Issue 20, finding 3: SIGTERM ends the process within the shutdown timeout -----------------------

@pytest.mark.timing
def test_20_3_sigterm_does_not_wait_for_a_fetch_in_flight(sim: Simulator, tmp_path: Path) -> None:
    """A fetch still reading a trickled listing ends with the process: the exit waits for the
    grace and the logout (at most SHUTDOWN_LOGOUT_SECONDS), never for the fetch's deadline."""
    from polarity_exporter.servers import SHUTDOWN_LOGOUT_SECONDS

    polarity_timeout = 30.0
    sim.faults = F.trickle(0.5, F.on(F.INTEGRATIONS))
    proc, address, log_path = start(sim, tmp_path, f"--polarity.timeout={polarity_timeout}")
    wait_until_ready(f"http://{address}/-/ready", proc)

    def scrape() -> None:
        with contextlib.suppress(requests.RequestException):  # cut off by the exit
            requests.get(f"http://{address}/metrics", timeout=polarity_timeout + 5)

    scraping = threading.Thread(target=scrape, daemon=True)
    scraping.start()
    deadline = time.monotonic() + 10
    while not sim.counts[LIST] and time.monotonic() < deadline:  # the fetch is reading it
        time.sleep(0.01)
    assert sim.counts[LIST]
    elapsed = sigterm_and_wait(proc)
    assert proc.returncode == 0, log_path.read_text()
    # The old exporter exited only at the fetch's own deadline (30 s here).
    assert elapsed < GRACE + SHUTDOWN_LOGOUT_SECONDS + 2 < polarity_timeout

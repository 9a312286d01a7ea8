"""An upstream proxy (`--polarity.proxy-url`, a target's `proxy_url`, or the environment's
HTTPS_PROXY/NO_PROXY), through a real proxy server: Debian's tinyproxy, started by the tests
(issue 21). Plain http and https through CONNECT, a proxy that asks for credentials (407), one
that is down, and one that is slow: the scrape deadline still covers every byte."""

from __future__ import annotations

import json
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from conftest import CREDS, PASSWORD_ENV, free_port, require_tool, stop_process
from inproc import Certs, Running, running_exporter

from polarity_exporter.simulator import Simulator, SimulatorConfig
from polarity_exporter.simulator import faults as F

PROXY_USER = "scraper"


@dataclass
class Proxy:
    port: int
    log_path: Path
    password: str | None = None

    def url(self, password: str | None = None, scheme: str = "http") -> str:
        secret = password if password is not None else self.password
        auth = f"{PROXY_USER}:{quote(secret, safe='')}@" if secret is not None else ""
        return f"{scheme}://{auth}127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def forwarded(self, sim: Simulator) -> bool:
        """Whether the proxy carried a request to this simulator."""
        port = sim.url.rsplit(":", 1)[1]
        return bool(re.search(rf"(Request|Established connection).*127\.0\.0\.1:?{port}|"
                              rf"CONNECT 127\.0\.0\.1:{port}", self.log()))


def start_tinyproxy(directory: Path,
                    password: str | None) -> tuple[Proxy, subprocess.Popen[bytes]]:
    binary = require_tool("tinyproxy")
    port = free_port()
    conf = directory / f"tinyproxy-{port}.conf"
    lines = [f"Port {port}", "Listen 127.0.0.1", "Timeout 60", "MaxClients 50",
             "Allow 127.0.0.1", "LogLevel Info", f"LogFile \"{directory}/tinyproxy-{port}.log\""]
    if password is not None:
        lines.append(f"BasicAuth {PROXY_USER} {password}")
    conf.write_text("\n".join(lines) + "\n")  # no ConnectPort: CONNECT to any port
    proc = subprocess.Popen([binary, "-d", "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_for_port(port, proc)
    return Proxy(port, directory / f"tinyproxy-{port}.log", password), proc


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[Proxy]:
    started, proc = start_tinyproxy(tmp_path, None)
    yield started
    stop_process(proc)  # type: ignore[arg-type]


@pytest.fixture
def auth_proxy(tmp_path: Path) -> Iterator[Proxy]:
    """A proxy that asks for credentials: proxy.py (PyPI), which answers a wrong password with
    407 as RFC 9110 says (tinyproxy 1.11.1, Debian 12's, answers 401)."""
    password = "pp-" + secrets.token_urlsafe(18)
    port = free_port()
    log_path = tmp_path / f"proxy-py-{port}.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", "--hostname", "127.0.0.1", "--port", str(port),
             "--basic-auth", f"{PROXY_USER}:{password}", "--num-workers", "1",
             "--num-acceptors", "1"], stdout=log_file, stderr=subprocess.STDOUT)
    wait_for_port(port, proc)
    yield Proxy(port, log_path, password)
    stop_process(proc)  # type: ignore[arg-type]


def wait_for_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    """Ready when it accepts connections."""
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert proc.poll() is None, "the proxy exited"
            assert time.monotonic() < deadline, "the proxy did not start"
            time.sleep(0.05)


@pytest.fixture
def tls_sim(certs: Certs) -> Iterator[Simulator]:
    config = SimulatorConfig(users={"exporter": "correct horse battery staple"},
                             tls_cert_file=str(certs.server_cert),
                             tls_key_file=str(certs.server_key))
    with Simulator(config) as sim:
        yield sim


def everything_said(running: Running) -> dict[str, str]:
    """Every place a secret could leak to: debug output, metrics, landing page, logs."""
    places = {"debug": running.session.get(f"{running.url}/metrics?debug=true", timeout=30).text,
              "metrics": running.scrape(timeout=3).response.text,
              "landing": running.session.get(f"{running.url}/", timeout=10).text}
    for link in re.findall(r'href="(/logs\?id=\d+)"', places["landing"]):
        places[link] = running.session.get(f"{running.url}{link}", timeout=10).text
    places["log"] = running.logs.text()
    return places


def assert_not_in(secret: str, places: dict[str, str]) -> None:
    for form in {secret, quote(secret, safe=""), json.dumps(secret)[1:-1]}:
        for where, text in places.items():
            assert form not in text, f"the proxy credential leaked into {where}"


# --- through the proxy -----------------------------------------------------------------------

def test_http_polarity_is_scraped_through_the_proxy(sim: Simulator, proxy: Proxy) -> None:
    with running_exporter(sim.url, CREDS, proxy_url=proxy.url()) as running:
        assert running.scrape().up == 1.0
    assert proxy.forwarded(sim), proxy.log()


def test_https_polarity_is_scraped_through_a_connect_tunnel(tls_sim: Simulator, proxy: Proxy,
                                                            certs: Certs) -> None:
    with running_exporter(tls_sim.url, CREDS, proxy_url=proxy.url(),
                          ca_file=str(certs.ca)) as running:
        assert running.scrape().up == 1.0
    assert re.search(r"CONNECT", proxy.log()), proxy.log()
    assert proxy.forwarded(tls_sim), proxy.log()


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_proxy_with_credentials_lets_the_exporter_through_and_never_shows_them(
        sim: Simulator, tls_sim: Simulator, auth_proxy: Proxy, certs: Certs,
        scheme: str) -> None:
    target = sim if scheme == "http" else tls_sim
    assert auth_proxy.password is not None
    with running_exporter(target.url, CREDS, proxy_url=auth_proxy.url(),
                          ca_file=str(certs.ca)) as running:
        assert running.scrape().up == 1.0
        places = everything_said(running)
    assert_not_in(auth_proxy.password, places)


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_proxy_answering_407_fails_the_scrape_in_one_line_without_the_credentials(
        sim: Simulator, tls_sim: Simulator, auth_proxy: Proxy, certs: Certs,
        scheme: str) -> None:
    target = sim if scheme == "http" else tls_sim
    wrong = "wrong-" + secrets.token_urlsafe(12)
    with running_exporter(target.url, CREDS, proxy_url=auth_proxy.url(wrong),
                          ca_file=str(certs.ca)) as running:
        assert running.scrape().up == 0.0
        places = everything_said(running)
    said = "the proxy refused the tunnel: 407" if scheme == "https" else "HTTP 407"
    assert said in places["debug"], places["debug"][:2000]
    errors = [line for line in places["log"].splitlines() if "level=error" in line]
    assert errors and all(said in line for line in errors)
    assert_not_in(wrong, places)


def test_a_proxy_that_is_down_fails_the_scrape_at_once(sim: Simulator) -> None:
    closed = free_port()
    with running_exporter(sim.url, CREDS, proxy_url=f"http://u:pw-down@127.0.0.1:{closed}",
                          timeout=5) as running:
        scrape = running.scrape(timeout=5)
        places = everything_said(running)
    assert scrape.up == 0.0 and scrape.elapsed < 5
    assert "cannot connect to the proxy: Connection refused" in places["log"]
    assert_not_in("pw-down", places)


class StallingProxy:
    """A proxy that accepts connections and reads, and never answers: what a hung or
    overloaded proxy looks like to the client. (A socket-level fault no proxy server can be
    asked to produce on cue.)"""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        self.sock.settimeout(0.1)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.held.append(conn)

    def close(self) -> None:
        self.stop.set()
        for conn in self.held:
            conn.close()
        self.sock.close()


@pytest.fixture
def stalling_proxy() -> Iterator[StallingProxy]:
    proxy = StallingProxy()
    yield proxy
    proxy.close()


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_hung_proxy_is_cut_at_the_scrape_deadline(
        sim: Simulator, tls_sim: Simulator, stalling_proxy: StallingProxy, certs: Certs,
        scheme: str) -> None:
    target = sim if scheme == "http" else tls_sim
    scrape_timeout = 2.0
    # --polarity.timeout (the wait for the next byte) far above the deadline: only the
    # deadline can end this scrape.
    with running_exporter(target.url, CREDS, timeout=30, ca_file=str(certs.ca),
                          proxy_url=f"http://127.0.0.1:{stalling_proxy.port}") as running:
        scrape = running.scrape(timeout=scrape_timeout)
    assert scrape.up == 0.0
    assert scrape.elapsed < scrape_timeout + 0.5
    assert running.logs.matching("deadline")


def test_a_slow_answer_through_the_proxy_is_cut_at_the_deadline(sim: Simulator,
                                                               proxy: Proxy) -> None:
    sim.faults = F.trickle(0.3, F.on(F.ERRORS))  # every byte through the proxy, slowly
    scrape_timeout = 2.0
    with running_exporter(sim.url, CREDS, timeout=30, proxy_url=proxy.url()) as running:
        scrape = running.scrape(timeout=scrape_timeout)
    assert scrape.success("errors") == 0.0 and scrape.success("integrations") == 1.0
    assert scrape.elapsed < scrape_timeout + 0.5


# --- the environment -------------------------------------------------------------------------

def test_http_proxy_from_the_environment_is_used(sim: Simulator, proxy: Proxy,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url())
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with running_exporter(sim.url, CREDS) as running:
        assert running.scrape().up == 1.0
    assert proxy.forwarded(sim)


def test_no_proxy_in_the_environment_goes_direct(sim: Simulator, proxy: Proxy,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url())
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with running_exporter(sim.url, CREDS) as running:
        assert running.scrape().up == 1.0
    assert not proxy.forwarded(sim)


def test_an_explicit_proxy_url_replaces_the_environment_no_proxy_included(
        sim: Simulator, proxy: Proxy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # discard: would fail
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with running_exporter(sim.url, CREDS, proxy_url=proxy.url()) as running:
        assert running.scrape().up == 1.0
    assert proxy.forwarded(sim)


# --- configuration ---------------------------------------------------------------------------

def test_proxy_credentials_on_the_command_line_are_refused_without_echoing_them(
        start_exporter: Callable[..., Any], sim: Simulator) -> None:
    exp = start_exporter(f"--polarity.url={sim.url}",
                         "--polarity.proxy-url=http://u:cmdline-secret@127.0.0.1:3128",
                         env=PASSWORD_ENV, ready=False)
    assert exp.proc.wait(timeout=15) == 2
    log = exp.log()
    assert "POLARITY_PROXY_URL" in log and "cmdline-secret" not in log
    assert len(log.strip().splitlines()) == 1


def test_proxy_credentials_from_the_environment_are_accepted(
        start_exporter: Callable[..., Any], sim: Simulator, auth_proxy: Proxy) -> None:
    assert auth_proxy.password is not None
    exp = start_exporter(f"--polarity.url={sim.url}", "--log.level=debug",
                         env={**PASSWORD_ENV, "POLARITY_PROXY_URL": auth_proxy.url()})
    assert "polarity_up 1.0" in exp.metrics().text
    cmdline = Path(f"/proc/{exp.proc.pid}/cmdline").read_bytes().decode(errors="replace")
    assert auth_proxy.password not in cmdline
    assert_not_in(auth_proxy.password, {"log": exp.log()})


def test_a_targets_proxy_url_is_used_for_that_target(sim: Simulator, proxy: Proxy,
                                                     tmp_path: Path) -> None:
    targets = tmp_path / "targets.yml"
    base = {"url": sim.url, "username": "exporter", "password": "correct horse battery staple"}
    targets.write_text(json.dumps({"targets": {"via": {**base, "proxy_url": proxy.url()},
                                               "direct": base}}))
    with running_exporter(None, None, targets_file=str(targets)) as running:
        assert running.probe("direct").up == 1.0
        assert not proxy.forwarded(sim)
        assert running.probe("via").up == 1.0
    assert proxy.forwarded(sim)


def test_a_config_object_never_shows_the_proxy_url() -> None:
    from polarity_exporter.config import ApiKey, PolarityConfig
    config = PolarityConfig(url="https://p.example", credentials=ApiKey("k"),
                            proxy_url="http://u:repr-secret@proxy:3128")
    assert "repr-secret" not in repr(config)

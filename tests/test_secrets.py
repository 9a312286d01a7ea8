"""No password, token or API key leaks: not in logs (at debug level), /metrics, /, error
messages, or the process's arguments, through a full cycle of login, refresh, 401, re-login and
logout with faults on the way.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import requests
from conftest import SIM_PASSWORD, SIM_USER, ExporterProcess

from polarity_exporter.simulator import Request, Response, Simulator, SimulatorConfig
from polarity_exporter.simulator import faults as F

TOKEN_PATHS = ("/api/users/login", "/api/users/refresh")


class TokenTap:
    """TEST-ONLY hook: remembers every token the simulator hands out."""

    def __init__(self) -> None:
        self.tokens: list[str] = []

    def __call__(self, request: Request, response: Response) -> Response:
        if request.path in TOKEN_PATHS and response.status == 200:
            self.tokens.append(json.loads(b"".join(response.chunks))["data"]["token"])
        return response


def cmdline(exp: ExporterProcess) -> str:
    return Path(f"/proc/{exp.proc.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def assert_absent(secrets: list[str], **places: str) -> None:
    for secret in secrets:
        for where, text in places.items():
            assert secret not in text, f"a secret leaked into {where}"


def scrape_until(exp: ExporterProcess, done: Any, limit: float = 10.0) -> None:
    """Scrape (as Prometheus would, repeatedly) until the simulator has seen what we wait for."""
    deadline = time.monotonic() + limit
    while not done():
        assert time.monotonic() < deadline, exp.log()
        assert exp.metrics().status_code == 200
        time.sleep(0.2)


def test_password_and_tokens_never_leak_through_a_full_cycle(start_exporter: Any) -> None:
    tap = TokenTap()
    # Tokens live 3 s, so the exporter refreshes one within a couple of scrapes.
    config = SimulatorConfig(users={SIM_USER: SIM_PASSWORD}, token_lifetime=3)
    with Simulator(config) as sim:
        sim.faults = F.chain(tap, F.first(1, F.status(503, F.on()), F.on(F.ERRORS)))
        exp = start_exporter(f"--polarity.url={sim.url}", "--log.level=debug",
                             env={"POLARITY_USERNAME": SIM_USER,
                                  "POLARITY_PASSWORD": SIM_PASSWORD})
        pages = [exp.metrics().text]  # login, and a 503 on the errors endpoint
        scrape_until(exp, lambda: sim.counts[("GET", "/api/users/refresh")] >= 1)
        sim.revoke_tokens()
        pages.append(exp.metrics().text)  # 401, then exactly one new login
        assert sim.counts[("POST", "/api/users/login")] == 2
        landing = requests.get(f"{exp.url}/", timeout=10).text
        args = cmdline(exp)
        exp.proc.send_signal(signal.SIGTERM)
        assert exp.proc.wait(timeout=15) == 0
        assert sim.counts[("POST", "/api/users/logout")] == 1
    log = exp.log()
    assert "refreshed Polarity token" in log and "logging in again" in log
    assert "logged out" in log
    assert len(tap.tokens) >= 3  # login, refresh, re-login
    secrets = [SIM_PASSWORD, *tap.tokens, *(t.rsplit(".", 1)[1] for t in tap.tokens)]
    assert_absent(secrets, log=log, metrics="\n".join(pages), landing=landing, args=args)


def test_api_key_never_leaks_even_when_rejected(start_exporter: Any) -> None:
    key = "pk_live_7d0c5e4a9b1f4e2d8c3a"
    with Simulator(SimulatorConfig(users={}, api_keys={key: time.time() + 3600})) as sim:
        sim.faults = F.first(1, F.status(401, F.on()), F.on(F.INTEGRATIONS))
        exp = start_exporter(f"--polarity.url={sim.url}", "--log.level=debug",
                             env={"POLARITY_API_KEY": key})
        rejected, accepted = exp.metrics().text, exp.metrics().text
        landing = requests.get(f"{exp.url}/", timeout=10).text
        args = cmdline(exp)
    assert "polarity_up 0.0" in rejected and "polarity_up 1.0" in accepted
    assert "API key was rejected" in exp.log()
    assert_absent([key], log=exp.log(), metrics=rejected + accepted, landing=landing, args=args)


def test_wrong_password_error_names_the_account_not_the_password(start_exporter: Any) -> None:
    wrong = "Tr0ub4dor&3-not-it"
    with Simulator(SimulatorConfig(users={SIM_USER: SIM_PASSWORD})) as sim:
        url = sim.url
        exp = start_exporter(f"--polarity.url={url}", "--log.level=debug",
                             env={"POLARITY_USERNAME": SIM_USER, "POLARITY_PASSWORD": wrong})
        metrics = exp.metrics().text
        args = cmdline(exp)
    errors = [line for line in exp.log().splitlines() if "level=error" in line]
    assert errors and all(SIM_USER in line and url in line for line in errors)
    assert_absent([wrong], log=exp.log(), metrics=metrics, args=args)


def test_credentials_in_the_url_are_refused_without_echoing_them(start_exporter: Any) -> None:
    secret = "hunter2-in-a-url"
    exp = start_exporter(f"--polarity.url=https://svc:{secret}@polarity.invalid", ready=False,
                         env={"POLARITY_USERNAME": SIM_USER, "POLARITY_PASSWORD": SIM_PASSWORD})
    assert exp.proc.wait(timeout=20) == 2
    assert "must not contain credentials" in exp.log()
    assert_absent([secret, SIM_PASSWORD], error=exp.log())

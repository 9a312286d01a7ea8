"""Authentication against the simulator: tokens reused, refreshed, re-acquired once; bad
credentials reported clearly without a retry loop and without the secret."""

from __future__ import annotations

import time
from typing import Any

from conftest import CREDS, PASSWORD_ENV, SIM_PASSWORD, SIM_USER
from inproc import running_exporter
from reference import by_label, labels, scrape

from polarity_exporter.simulator import Simulator, SimulatorConfig

LOGIN = ("POST", "/api/users/login")
REFRESH = ("GET", "/api/users/refresh")
LOGOUT = ("POST", "/api/users/logout")


def test_token_is_reused_across_scrapes(simulator: Simulator, start_exporter: Any) -> None:
    exp = start_exporter(f"--polarity.url={simulator.url}", env=PASSWORD_ENV)
    for _ in range(3):
        assert scrape(f"{exp.url}/metrics")["polarity_up"][labels()] == 1
    assert simulator.counts[LOGIN] == 1


def test_revoked_token_causes_exactly_one_relogin(simulator: Simulator,
                                                  start_exporter: Any) -> None:
    # Small pages: the scrape makes many requests, all of which would see the 401.
    exp = start_exporter(f"--polarity.url={simulator.url}", "--polarity.page-size=3",
                         env=PASSWORD_ENV)
    scrape(f"{exp.url}/metrics")
    simulator.revoke_tokens()
    samples = scrape(f"{exp.url}/metrics")
    assert samples["polarity_up"][labels()] == 1
    assert simulator.counts[LOGIN] == 2


def test_token_is_refreshed_before_it_expires() -> None:
    # The exporter's clock is moved, not waited for: the token lives an hour, and the exporter
    # refreshes it a minute before it expires.
    config = SimulatorConfig(seed=2, integrations=5, errors=5, token_lifetime=3600,
                             users={SIM_USER: SIM_PASSWORD})
    with Simulator(config) as sim, running_exporter(sim.url, CREDS) as exp:
        auth = exp.exporter.client.auth
        assert exp.scrape().up == 1
        auth.clock = lambda: time.time() + 3600 - 120  # two minutes left: no refresh yet
        assert exp.scrape().up == 1
        assert sim.counts[REFRESH] == 0
        auth.clock = lambda: time.time() + 3600 - 30  # inside the last minute
        assert exp.scrape().up == 1
        assert sim.counts[REFRESH] == 1
        assert sim.counts[LOGIN] == 1


def test_wrong_password_reports_up_zero_and_names_the_account(simulator: Simulator,
                                                              start_exporter: Any) -> None:
    exp = start_exporter(f"--polarity.url={simulator.url}",
                         env={"POLARITY_USERNAME": SIM_USER, "POLARITY_PASSWORD": "wrong-pw-42"})
    samples = scrape(f"{exp.url}/metrics")
    assert samples["polarity_up"][labels()] == 0
    assert by_label(samples, "polarity_scrape_collector_success", "collector") == {
        "integrations": 0, "errors": 0}
    assert "polarity_integration_info" not in samples
    lines = [line for line in exp.log().splitlines() if "invalid username or password" in line]
    assert len(lines) == 1
    assert repr(SIM_USER) in lines[0] and simulator.url in lines[0]
    assert "wrong-pw-42" not in exp.log()
    assert "Traceback" not in exp.log()


def test_wrong_password_is_tried_once_per_scrape(simulator: Simulator,
                                                 start_exporter: Any) -> None:
    exp = start_exporter(f"--polarity.url={simulator.url}",
                         env={"POLARITY_USERNAME": SIM_USER, "POLARITY_PASSWORD": "nope"})
    for _ in range(3):
        scrape(f"{exp.url}/metrics")
    assert simulator.counts[LOGIN] == 3


def test_expired_api_key_is_reported_as_expired(start_exporter: Any) -> None:
    config = SimulatorConfig(seed=2, integrations=5, errors=5, users={},
                             api_keys={"old-key-value": time.time() - 60})
    with Simulator(config) as sim:
        exp = start_exporter(f"--polarity.url={sim.url}", env={"POLARITY_API_KEY": "old-key-value"})
        samples = scrape(f"{exp.url}/metrics")
        requests_made = sum(sim.counts.values())
    assert samples["polarity_up"][labels()] == 0
    assert "API key was rejected" in exp.log() and "expired" in exp.log()
    assert "old-key-value" not in exp.log()
    assert requests_made <= 2  # integrations and errors, each once: no retry loop


def test_shutdown_logs_out(simulator: Simulator, start_exporter: Any) -> None:
    exp = start_exporter(f"--polarity.url={simulator.url}", env=PASSWORD_ENV)
    scrape(f"{exp.url}/metrics")
    assert exp.stop() == 0
    assert simulator.counts[LOGOUT] == 1
    assert "logged out" in exp.log()


def test_debug_log_holds_no_secret(simulator: Simulator, start_exporter: Any) -> None:
    exp = start_exporter(f"--polarity.url={simulator.url}", "--log.level=debug",
                         "--polarity.page-size=5", env=PASSWORD_ENV)
    scrape(f"{exp.url}/metrics")
    simulator.revoke_tokens()
    scrape(f"{exp.url}/metrics")
    exp.stop()
    log = exp.log()
    assert "level=debug" in log
    assert SIM_PASSWORD not in log
    assert "Bearer" not in log and "eyJ" not in log  # no token (JWTs start with eyJ)

"""The exporter's own HTTP endpoint: routes, formats, timeouts, shutdown."""

from __future__ import annotations

import gzip
import time
from typing import Any

import pytest
import requests
from conftest import PASSWORD_ENV, SIM_PASSWORD, SIM_USER, ExporterProcess, require_tool
from reference import labels, parse, scrape

from polarity_exporter import __version__
from polarity_exporter.simulator import Simulator, SimulatorConfig
from polarity_exporter.web import MIN_TIMEOUT


@pytest.fixture
def exporter(module_exporter: ExporterProcess) -> ExporterProcess:
    """The module's exporter: these tests only read from it."""
    return module_exporter


@pytest.fixture
def simulator(module_simulator: Simulator) -> Simulator:
    """The simulator behind `exporter`."""
    return module_simulator


def test_landing_page_names_version_metrics_and_server(exporter: ExporterProcess,
                                                       simulator: Simulator) -> None:
    response = requests.get(exporter.url + "/", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    assert __version__ in response.text
    assert 'href="/metrics"' in response.text
    assert simulator.url in response.text


def test_health_and_readiness_do_not_call_polarity(exporter: ExporterProcess,
                                                   simulator: Simulator) -> None:
    before = sum(simulator.counts.values())
    assert requests.get(exporter.url + "/-/healthy", timeout=10).status_code == 200
    assert requests.get(exporter.url + "/-/ready", timeout=10).status_code == 200
    assert sum(simulator.counts.values()) == before


@pytest.mark.parametrize("path", ["/metrics/", "/favicon.ico", "/-/reload", "/api/integrations"])
def test_unknown_paths_are_404(exporter: ExporterProcess, path: str) -> None:
    assert requests.get(exporter.url + path, timeout=10).status_code == 404


def test_post_is_not_allowed(exporter: ExporterProcess) -> None:
    assert requests.post(exporter.url + "/metrics", timeout=10).status_code == 405


def test_metrics_are_gzipped_when_asked(exporter: ExporterProcess) -> None:
    response = requests.get(exporter.url + "/metrics", headers={"Accept-Encoding": "gzip"},
                            timeout=30, stream=True)
    assert response.headers["Content-Encoding"] == "gzip"
    body = gzip.decompress(response.raw.read())
    assert parse(body.decode())["polarity_up"][labels()] == 1


def test_metrics_are_plain_without_gzip(exporter: ExporterProcess) -> None:
    response = requests.get(exporter.url + "/metrics", headers={"Accept-Encoding": "identity"},
                            timeout=30)
    assert "Content-Encoding" not in response.headers
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")


def test_openmetrics_when_asked(exporter: ExporterProcess) -> None:
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    response = requests.get(exporter.url + "/metrics", timeout=30,
                            headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")
    names = {family.name for family in text_string_to_metric_families(response.text)}
    assert {"polarity_up", "polarity_integration_running"} <= names


def test_telemetry_path_is_configurable(simulator: Simulator, start_exporter: Any) -> None:
    exp = start_exporter(f"--polarity.url={simulator.url}", "--web.telemetry-path=/custom/metrics",
                         env=PASSWORD_ENV)
    assert scrape(exp.url + "/custom/metrics")["polarity_up"][labels()] == 1
    assert requests.get(exp.url + "/metrics", timeout=10).status_code == 404


@pytest.mark.timing
def test_scrape_finishes_inside_prometheus_timeout(start_exporter: Any) -> None:
    # Every request to this simulator takes 0.6 s: the listing alone cannot fit in 1 s.
    config = SimulatorConfig(seed=2, integrations=30, errors=5, latency=0.6,
                             users={SIM_USER: SIM_PASSWORD})
    with Simulator(config) as sim:
        exp = start_exporter(f"--polarity.url={sim.url}", "--polarity.page-size=5",
                             "--polarity.max-concurrency=1", env=PASSWORD_ENV)
        started = time.monotonic()
        response = requests.get(exp.url + "/metrics", timeout=30,
                                headers={"X-Prometheus-Scrape-Timeout-Seconds": "1.5"})
        elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert elapsed < 1.5
    assert parse(response.text)["polarity_up"][labels()] == 0
    assert "deadline" in exp.log()


def test_promtool_check_metrics_is_clean(exporter: ExporterProcess) -> None:
    import subprocess

    promtool = require_tool("promtool")
    body = exporter.metrics().text
    result = subprocess.run([promtool, "check", "metrics"], input=body, text=True,
                            capture_output=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == ""


def test_sigterm_finishes_an_inflight_scrape(start_exporter: Any) -> None:
    import threading

    config = SimulatorConfig(seed=2, integrations=5, errors=5, latency=0.5,
                             users={SIM_USER: SIM_PASSWORD})
    with Simulator(config) as sim:
        exp = start_exporter(f"--polarity.url={sim.url}", env=PASSWORD_ENV)
        result: dict[str, Any] = {}
        scraping = threading.Thread(
            target=lambda: result.update(response=requests.get(exp.url + "/metrics", timeout=30)))
        scraping.start()
        # Wait until the scrape has reached Polarity before asking the exporter to stop.
        deadline = time.monotonic() + 10
        while not sim.counts[("POST", "/api/users/login")] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert exp.stop() == 0
        scraping.join()
        assert result["response"].status_code == 200
        assert parse(result["response"].text)["polarity_up"][labels()] == 1
        assert sim.counts[("POST", "/api/users/logout")] == 1


def test_scrape_timeout_metric_is_the_header_less_the_offset(exporter: ExporterProcess) -> None:
    response = requests.get(exporter.url + "/metrics", timeout=30,
                            headers={"X-Prometheus-Scrape-Timeout-Seconds": "7"})
    # 7 s less the 0.5 s offset, less the 1 s kept to encode the answer, less the moment the
    # request waited for a worker
    timeout = parse(response.text)["polarity_scrape_timeout_seconds"][labels()]
    assert 5.4 < timeout <= 5.5


def test_scrape_timeout_metric_falls_back_to_the_flag(exporter: ExporterProcess) -> None:
    # --polarity.timeout (10 s) less the 1 s kept to encode the answer (and the moment the
    # request waited for a worker)
    timeout = scrape(exporter.url + "/metrics")["polarity_scrape_timeout_seconds"][labels()]
    assert 8.9 < timeout <= 9


def test_time_queued_for_a_worker_counts_against_the_scrape_deadline() -> None:
    from polarity_exporter.web import ExporterApp, Landing
    from polarity_exporter.wsgi import RECEIVED

    app = ExporterApp(lambda _timeout: [], telemetry_path="/metrics", default_timeout=10.0,
                      timeout_offset=0.5, landing=Landing("x", "0", "x"))
    header = {"HTTP_X_PROMETHEUS_SCRAPE_TIMEOUT_SECONDS": "7"}
    waited = {**header, RECEIVED: time.monotonic() - 2.0}  # arrived 2 s ago
    assert app.scrape_timeout(header) == 6.5
    assert 4.4 < app.scrape_timeout(waited) <= 4.5
    long_ago = {**header, RECEIVED: time.monotonic() - 60.0}
    assert app.scrape_timeout(long_ago) == MIN_TIMEOUT  # still a usable deadline

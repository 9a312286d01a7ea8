"""Several Polarity servers from one exporter (--config.file): /probe?target=NAME answers a
configured target's metrics; a probe never carries a URL; reloads replace the target set
safely; targets are isolated from each other. Real simulators over HTTP throughout."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from conftest import (
    CREDS,
    PASSWORD_ENV,
    SIM_PASSWORD,
    SIM_USER,
    ExporterLauncher,
    clean_env,
    free_port,
    wait_until_ready,
)
from inproc import Running, Scrape, running_exporter
from reference import parse

from polarity_exporter import __version__, metrics
from polarity_exporter.simulator import Simulator, SimulatorConfig
from polarity_exporter.web import MAX_RELOAD_WAITERS

LOGIN = ("POST", "/api/users/login")
LOGOUT = ("POST", "/api/users/logout")
INLINE_SECRET = "inline-secret-4b1d"  # an inline password in the file: never in a log line


def make_sim(seed: int, integrations: int, **extra: Any) -> Simulator:
    return Simulator(SimulatorConfig(seed=seed, integrations=integrations, errors=40,
                                     users={SIM_USER: SIM_PASSWORD, "other": INLINE_SECRET},
                                     **extra))


@pytest.fixture
def sims() -> Iterator[dict[str, Simulator]]:
    """Three servers with different datasets: prod, lab, emea."""
    started = {name: make_sim(seed, size) for name, seed, size in
               (("prod", 1, 7), ("lab", 2, 11), ("emea", 3, 5))}
    for sim in started.values():
        sim.start()
    yield started
    for sim in started.values():
        sim.stop()


def poll(check: Callable[[], bool], timeout: float) -> None:
    """Wait until `check()` holds (what the simulators count, in another thread), for at most
    `timeout` seconds; the test's assertions say what must then be true."""
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:
        time.sleep(0.01)


def requests_made(sims: dict[str, Simulator]) -> int:
    return sum(sum(sim.counts.values()) for sim in sims.values())


class TargetsFile:
    """The --config.file of a test, rewritten by the test to drive reloads."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "targets.yml"
        self.secret = directory / "password"
        self.secret.write_text(SIM_PASSWORD + "\n")
        self.secret.chmod(0o600)

    def write(self, sims: dict[str, Simulator], **overrides: dict[str, Any]) -> None:
        targets = {name: {"url": sim.url, "username": SIM_USER,
                          "password_file": str(self.secret), "timeout": 5}
                   for name, sim in sims.items()}
        for name, values in overrides.items():
            targets[name] = {**targets[name], **values}
        self.path.write_text(yaml.safe_dump({"targets": targets}))


@pytest.fixture
def targets(tmp_path: Path, sims: dict[str, Simulator]) -> TargetsFile:
    file = TargetsFile(tmp_path)
    file.write(sims)
    return file


@pytest.fixture
def fleet(targets: TargetsFile) -> Iterator[Running]:
    with running_exporter(None, None, targets_file=str(targets.path)) as exp:
        yield exp


def ids(scrape: Scrape) -> set[str]:
    return {dict(key)["integration_id"] for key in scrape.series("polarity_integration_info")}


def reload(exp: Running) -> requests.Response:
    return exp.session.post(f"{exp.url}/-/reload", timeout=10)


# --- probes by name ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["prod", "lab", "emea"])
def test_a_probe_answers_the_named_targets_metrics(fleet: Running, sims: dict[str, Simulator],
                                                   name: str) -> None:
    scrape = fleet.probe(name)
    assert scrape.response.status_code == 200
    assert scrape.up == 1
    assert ids(scrape) == {item["id"] for item in sims[name].dataset.integrations}


def test_a_probe_touches_only_its_own_server(fleet: Running, sims: dict[str, Simulator]) -> None:
    fleet.probe("lab")
    assert sum(sims["lab"].counts.values()) > 0
    assert sum(sims["prod"].counts.values()) == sum(sims["emea"].counts.values()) == 0


def test_a_probe_has_the_families_and_labels_of_a_single_server_metrics(
        fleet: Running, sims: dict[str, Simulator]) -> None:
    probed = fleet.probe("prod").response.text
    with running_exporter(sims["prod"].url, CREDS) as single:
        served = single.scrape().response.text

    def shape(text: str) -> set[tuple[str, frozenset[str]]]:
        samples = parse(text)
        return {(name, frozenset(k for k, _ in key)) for name, series in samples.items()
                if not name.startswith("process_") for key in series}

    assert shape(probed) == shape(served)


def test_the_probe_deadline_comes_from_the_scrape_timeout_header(fleet: Running) -> None:
    scrape = fleet.probe("prod", timeout=2.0)
    assert 0 < (scrape.value("polarity_scrape_timeout_seconds") or 0) < 2.0 - 0.5


# --- 400s: a probe never chooses where the exporter connects -----------------------------------

BAD_QUERIES = {
    "missing": "",
    "empty": "target=",
    "unknown": "target=staging",
    "repeated": "target=prod&target=lab",
    "repeated-same": "target=prod&target=prod",
    "url": "target=https://polarity.example.com",
    "url-encoded": "target=http%3A%2F%2F127.0.0.1%3A1%2F",
    "scheme-relative": "target=//evil.example.com",
    "host-port": "target=127.0.0.1:8443",
    "path": "target=prod/../lab",
    "other-parameter-only": "module=prod",
    "garbage": "target=%zz&&&=",
    "very-long": "target=" + "a" * 5000,
}


@pytest.mark.parametrize("query", BAD_QUERIES.values(), ids=BAD_QUERIES.keys())
def test_a_bad_probe_is_a_400_with_one_line_and_no_upstream_traffic(
        fleet: Running, sims: dict[str, Simulator], query: str) -> None:
    before = requests_made(sims)
    response = fleet.session.get(f"{fleet.url}/probe?{query}", timeout=10)
    assert response.status_code == 400
    assert response.text.endswith("\n") and response.text.count("\n") == 1
    assert len(response.text) < 200
    assert requests_made(sims) == before


def test_without_a_config_file_probe_is_not_found(sim: Simulator) -> None:
    with running_exporter(sim.url, CREDS) as exp:
        assert exp.session.get(f"{exp.url}/probe?target=x", timeout=10).status_code == 404


# --- /metrics: the exporter's own --------------------------------------------------------------

def test_metrics_without_a_polarity_url_are_the_exporters_own(fleet: Running) -> None:
    fleet.probe("prod")
    scrape = fleet.scrape()
    assert scrape.response.status_code == 200
    assert "polarity_up" not in scrape.samples
    assert scrape.value("polarity_exporter_build_info", version=__version__) == 1
    assert scrape.value("polarity_exporter_config_last_reload_successful") == 1
    probes = {dict(k)["target"]: v for k, v in
              scrape.series("polarity_exporter_probes_total").items()}
    assert probes == {"prod": 1, "lab": 0, "emea": 0}
    assert "process_cpu_seconds_total" in scrape.samples


def test_fleet_families_are_in_the_catalogue_with_their_types(fleet: Running) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    text = fleet.scrape().response.text
    served = {(f.name + "_total" if f.type == "counter" else f.name): f.type
              for f in text_string_to_metric_families(text)}
    for family in metrics.CATALOGUE:
        if family.scope == "fleet":
            assert served[family.name] == family.kind


def test_a_probe_answering_up_zero_counts_as_a_failure(tmp_path: Path,
                                                       sims: dict[str, Simulator]) -> None:
    file = TargetsFile(tmp_path)
    file.write(sims, lab={"password_file": None, "password": "wrong"})
    with running_exporter(None, None, targets_file=str(file.path)) as exp:
        assert exp.probe("lab").up == 0
        assert exp.probe("prod").up == 1
        scrape = exp.scrape()
    assert scrape.value("polarity_exporter_probe_failures_total", target="lab") == 1
    assert scrape.value("polarity_exporter_probe_failures_total", target="prod") == 0
    assert scrape.value("polarity_exporter_probes_total", target="lab") == 1


def test_metrics_with_a_polarity_url_keep_serving_that_server(
        targets: TargetsFile, sims: dict[str, Simulator], sim: Simulator) -> None:
    with running_exporter(sim.url, CREDS, targets_file=str(targets.path)) as exp:
        scrape = exp.scrape()
        assert scrape.up == 1
        assert ids(scrape) == {item["id"] for item in sim.dataset.integrations}
        assert exp.probe("emea").up == 1
    assert requests_made({"prod": sims["prod"], "lab": sims["lab"]}) == 0


# --- isolation ----------------------------------------------------------------------------------

@contextmanager
def hung_fleet(tmp_path: Path, sims: dict[str, Simulator]) -> Iterator[tuple[Simulator, Running]]:
    """The fleet's servers plus `hung`, one that takes 30 s to answer, and an exporter over all."""
    with make_sim(9, 5, latency=30.0) as hung:
        file = TargetsFile(tmp_path)
        file.write({**sims, "hung": hung})
        with running_exporter(None, None, targets_file=str(file.path)) as exp:
            yield hung, exp


@pytest.mark.timing
def test_a_hung_target_answers_up_zero_in_time_and_delays_no_other(
        tmp_path: Path, sims: dict[str, Simulator]) -> None:
    with hung_fleet(tmp_path, sims) as (hung, exp):
        results: dict[str, Scrape] = {}
        hung_probe = threading.Thread(
            target=lambda: results.__setitem__("hung", exp.probe("hung", timeout=2.0)))
        hung_probe.start()
        # Until the hung server has the probe's first request.
        poll(lambda: hung.counts[LOGIN] > 0, 5)
        with requests.Session() as other:
            started = time.monotonic()
            answer = other.get(f"{exp.url}/probe", params={"target": "prod"},
                               headers={"X-Prometheus-Scrape-Timeout-Seconds": "2"},
                               timeout=10)
            elapsed = time.monotonic() - started
        hung_probe.join(10)
    assert answer.status_code == 200 and parse(answer.text)["polarity_up"][frozenset()] == 1
    assert elapsed < 1.0
    assert results["hung"].up == 0
    assert results["hung"].elapsed < 2.0


# --- reload -------------------------------------------------------------------------------------

def test_reload_adds_a_target(fleet: Running, targets: TargetsFile,
                              sims: dict[str, Simulator]) -> None:
    with make_sim(4, 3) as apac:
        targets.write({**sims, "apac": apac})
        assert reload(fleet).status_code == 200
        assert fleet.probe("apac").up == 1


def test_reload_removes_a_target_and_logs_it_out(fleet: Running, targets: TargetsFile,
                                                 sims: dict[str, Simulator]) -> None:
    assert fleet.probe("emea").up == 1
    targets.write({"prod": sims["prod"], "lab": sims["lab"]})
    assert reload(fleet).status_code == 200
    assert fleet.probe("emea").response.status_code == 400
    # Logged out by a background thread: no event to wait on.
    poll(lambda: sims["emea"].counts[LOGOUT] > 0, 10)
    assert sims["emea"].counts[LOGOUT] == 1
    assert "emea" not in {dict(k)["target"] for k in
                          fleet.scrape().series("polarity_exporter_probes_total")}


def test_reload_keeps_the_session_of_an_unchanged_target(fleet: Running, targets: TargetsFile,
                                                         sims: dict[str, Simulator]) -> None:
    fleet.probe("prod")
    targets.write(sims)  # the same file, written again
    assert reload(fleet).status_code == 200
    assert fleet.probe("prod").up == 1
    assert sims["prod"].counts[LOGIN] == 1
    assert sims["prod"].counts[LOGOUT] == 0


def test_reload_with_changed_credentials_logs_in_afresh(fleet: Running, targets: TargetsFile,
                                                       sims: dict[str, Simulator]) -> None:
    fleet.probe("lab")
    targets.write(sims, lab={"username": "other", "password_file": None,
                             "password": INLINE_SECRET})
    assert reload(fleet).status_code == 200
    assert fleet.probe("lab").up == 1
    assert sims["lab"].counts[LOGIN] == 2


BROKEN = {
    "not-yaml": "targets: [",
    "unknown-key": "targets:\n  prod:\n    url: http://127.0.0.1:1\n    pasword: x\n",
    "no-url": "targets:\n  prod:\n    username: u\n    password: p\n",
    "empty": "",
    "nul-in-a-file-path": 'targets:\n  prod:\n    url: http://127.0.0.1:1\n    username: u\n'
                          '    password_file: "pw\\0x"\n',
}


@pytest.mark.parametrize("text", BROKEN.values(), ids=BROKEN.keys())
def test_a_broken_reload_keeps_the_last_good_targets(fleet: Running, targets: TargetsFile,
                                                     text: str) -> None:
    before = fleet.scrape().value("polarity_exporter_config_last_reload_success_timestamp_seconds")
    targets.path.write_text(text)
    response = reload(fleet)
    assert response.status_code == 500
    assert response.text.startswith("reload failed: ") and response.text.count("\n") == 1
    scrape = fleet.scrape()
    assert scrape.value("polarity_exporter_config_last_reload_successful") == 0
    assert scrape.value("polarity_exporter_config_last_reload_success_timestamp_seconds") \
        == before
    assert fleet.probe("prod").up == 1  # the last good set is still served
    assert len(fleet.logs.matching("reload failed")) == 1


def test_a_good_reload_after_a_broken_one_is_successful_again(
        fleet: Running, targets: TargetsFile, sims: dict[str, Simulator]) -> None:
    targets.path.write_text("targets: [")
    assert reload(fleet).status_code == 500
    targets.write(sims)
    assert reload(fleet).status_code == 200
    assert fleet.scrape().value("polarity_exporter_config_last_reload_successful") == 1


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_reload_wants_post(fleet: Running, method: str) -> None:
    response = fleet.session.request(method, f"{fleet.url}/-/reload", timeout=10)
    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"


def test_no_secret_reaches_a_log_line_through_probes_and_reloads(
        fleet: Running, targets: TargetsFile, sims: dict[str, Simulator]) -> None:
    targets.write(sims, lab={"username": "other", "password_file": None,
                             "password": INLINE_SECRET})
    reload(fleet)
    fleet.probe("lab")
    targets.write(sims, lab={"password_file": None, "password": INLINE_SECRET + "x"})
    reload(fleet)
    fleet.probe("lab")  # a failed login
    targets.path.write_text(f"targets:\n  lab:\n    password: {INLINE_SECRET}\n")
    reload(fleet)
    text = fleet.logs.text()
    assert INLINE_SECRET not in text and SIM_PASSWORD not in text
    assert "Bearer" not in text


# --- the process: flags, SIGHUP -----------------------------------------------------------------

def test_a_broken_config_file_stops_the_exporter_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "targets.yml"
    path.write_text("targets:\n  lab:\n    url: https://polarity.example.com\n    timeout: x\n"
                    f"    password: {INLINE_SECRET}\n    username: u\n")
    result = subprocess.run([sys.executable, "-m", "polarity_exporter",
                             f"--config.file={path}"], capture_output=True, text=True,
                            timeout=30, env=clean_env())
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and '"lab"' in lines[0] and "timeout" in lines[0]
    assert INLINE_SECRET not in result.stderr + result.stdout


def test_sighup_reloads_the_config_file(tmp_path: Path, targets: TargetsFile,
                                        sims: dict[str, Simulator]) -> None:
    launch = ExporterLauncher(tmp_path)
    exp = launch(f"--config.file={targets.path}", env=PASSWORD_ENV)
    try:
        targets.write({"prod": sims["prod"]})
        exp.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        status = 200
        while status != 400 and time.monotonic() < deadline:
            status = requests.get(f"{exp.url}/probe", params={"target": "lab"},
                                  timeout=10).status_code
            time.sleep(0.05)
        assert status == 400
        assert requests.get(f"{exp.url}/probe", params={"target": "prod"},
                            timeout=10).status_code == 200
        assert exp.proc.poll() is None
    finally:
        launch.stop_all()
    assert "targets loaded" in exp.log()


def test_the_config_file_flag_has_its_environment_variable(tmp_path: Path,
                                                           targets: TargetsFile) -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "polarity_exporter",
                             f"--web.listen-address=127.0.0.1:{port}"],
                            env=clean_env({"POLARITY_EXPORTER_CONFIG_FILE": str(targets.path)}),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_ready(f"http://127.0.0.1:{port}/-/ready", proc)
        assert requests.get(f"http://127.0.0.1:{port}/probe", params={"target": "prod"},
                            timeout=10).status_code == 200
    finally:
        proc.terminate()
        proc.wait(20)
    assert os.path.exists(targets.path)


# --- found by review: reload clients, sessions, hung targets, odd files -----------------------

@pytest.mark.parametrize("body", [b"", b"{}"], ids=["empty-body", "json-body"])
def test_reload_accepts_a_post_with_a_content_length_and_basic_auth_headers(
        fleet: Running, body: bytes) -> None:
    # Content-Length is not the last header line here, as Go's and Python's clients send it.
    response = requests.post(f"{fleet.url}/-/reload", data=body, auth=("any", "thing"),
                             headers={"Content-Type": "application/json"}, timeout=10)
    assert response.status_code == 200, response.text


def test_a_reload_during_a_login_leaves_no_session_open(fleet: Running, targets: TargetsFile,
                                                       sims: dict[str, Simulator]) -> None:
    lab = sims["lab"]

    def slow_login(request: Any, response: Any) -> Any:
        if request.path == "/api/users/login":
            time.sleep(1.0)  # the session exists on the server; the exporter has no token yet
        return response

    lab.faults = slow_login
    results: list[Scrape] = []
    probe = threading.Thread(target=lambda: results.append(fleet.probe("lab", timeout=5.0)))
    probe.start()
    poll(lambda: lab.counts[LOGIN] > 0, 5)  # until the login is on its way
    targets.write(sims, lab={"timeout": 6})  # a changed target: its server is retired
    assert reload(fleet).status_code == 200
    probe.join(10)
    assert results[0].up == 1  # the retired server finished the probe it had in flight
    # ... and that probe counts for the target, whose counters outlive its old server.
    assert fleet.scrape().value("polarity_exporter_probes_total", target="lab") == 1
    # Logged out by the retiring thread: no event to wait on.
    poll(lambda: lab.counts[LOGOUT] >= lab.counts[LOGIN], 10)
    assert lab.counts[LOGIN] == lab.counts[LOGOUT] == 1


@pytest.mark.timing
def test_many_probes_of_a_hung_target_leave_workers_for_the_others(
        tmp_path: Path, sims: dict[str, Simulator]) -> None:
    with hung_fleet(tmp_path, sims) as (hung, exp):
        def probe_hung() -> int:
            with requests.Session() as session:
                return session.get(f"{exp.url}/probe", params={"target": "hung"},
                                   headers={"X-Prometheus-Scrape-Timeout-Seconds": "3"},
                                   timeout=30).status_code

        pool = [threading.Thread(target=probe_hung) for _ in range(40)]
        for thread in pool:
            thread.start()
        poll(lambda: hung.counts[LOGIN] > 0, 5)
        started = time.monotonic()
        healthy = exp.probe("prod", timeout=3.0)
        elapsed = time.monotonic() - started
        for thread in pool:
            thread.join(30)
        answered_at_once = exp.logs.matching("too many probes waiting")
    assert healthy.up == 1 and elapsed < 1.0
    assert answered_at_once


def test_a_fifo_as_the_config_file_fails_the_reload_and_the_next_one_works(
        fleet: Running, targets: TargetsFile, sims: dict[str, Simulator]) -> None:
    targets.path.unlink()
    os.mkfifo(targets.path)
    response = reload(fleet)
    assert response.status_code == 500 and "not a regular file" in response.text
    targets.path.unlink()
    targets.write(sims)
    assert reload(fleet).status_code == 200


def test_concurrent_reloads_all_answer_and_the_newest_file_wins(
        fleet: Running, targets: TargetsFile, sims: dict[str, Simulator]) -> None:
    with make_sim(5, 3) as apac:
        targets.write({**sims, "apac": apac})
        statuses: list[int] = []
        posts = [threading.Thread(target=lambda: statuses.append(reload(fleet).status_code))
                 for _ in range(MAX_RELOAD_WAITERS)]
        for post in posts:
            post.start()
        for post in posts:
            post.join(30)
        targets.write({"apac": apac})
        assert reload(fleet).status_code == 200  # made after the last write: it reads it
        assert statuses == [200] * MAX_RELOAD_WAITERS
        assert fleet.probe("apac").up == 1
        assert fleet.probe("prod").response.status_code == 400


def test_a_query_string_too_long_is_refused_not_cut(fleet: Running,
                                                    sims: dict[str, Simulator]) -> None:
    before = requests_made(sims)
    response = fleet.session.get(f"{fleet.url}/probe?target=prod&pad=" + "x" * 5000, timeout=10)
    assert response.status_code == 400
    assert requests_made(sims) == before


def test_sighup_without_a_config_file_does_not_stop_the_exporter(
        tmp_path: Path, sim: Simulator) -> None:
    launch = ExporterLauncher(tmp_path)
    exp = launch(f"--polarity.url={sim.url}", env=PASSWORD_ENV)
    try:
        exp.proc.send_signal(signal.SIGHUP)
        assert exp.metrics().status_code == 200  # answered after the signal was handled
        assert exp.proc.poll() is None
    finally:
        launch.stop_all()


def test_a_reload_that_fails_unexpectedly_is_a_failed_reload_and_the_next_one_works(
        fleet: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    target_fleet = fleet.exporter.fleet
    assert target_fleet is not None
    apply = target_fleet._apply

    def broken(_configs: Any) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(target_fleet, "_apply", broken)
    response = reload(fleet)
    assert response.status_code == 500 and "unexpected RuntimeError" in response.text
    assert fleet.scrape().value("polarity_exporter_config_last_reload_successful") == 0
    monkeypatch.setattr(target_fleet, "_apply", apply)
    assert reload(fleet).status_code == 200  # the reload thread lived on


def test_reload_requests_beyond_a_few_waiting_are_refused_at_once(
        fleet: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    target_fleet = fleet.exporter.fleet
    assert target_fleet is not None
    load, release = target_fleet._load, threading.Event()

    def stuck() -> Any:
        release.wait(30)  # a config file on a hung mount
        return load()

    monkeypatch.setattr(target_fleet, "_load", stuck)
    statuses: list[int] = []
    posts = [threading.Thread(target=lambda: statuses.append(reload(fleet).status_code))
             for _ in range(8)]
    for post in posts:
        post.start()
    # The refused ones answer at once; the waiting ones need `release`.
    poll(lambda: len(statuses) >= 8 - MAX_RELOAD_WAITERS, 10)
    refused = list(statuses)
    release.set()
    for post in posts:
        post.join(30)
    assert refused == [503] * (8 - MAX_RELOAD_WAITERS)
    assert sorted(statuses) == [200] * MAX_RELOAD_WAITERS + [503] * (8 - MAX_RELOAD_WAITERS)


# Issue 20, finding 10: RSS grew across reloads because a retired Server sat in a reference
# cycle, freed only by the (rarely run) cyclic GC. With the GC off, closing must free it.

def test_20_10_a_closed_server_is_freed_without_the_cyclic_gc(sim: Simulator) -> None:
    import gc
    import weakref

    from polarity_exporter.config import CollectorConfig, PolarityConfig
    from polarity_exporter.servers import SHUTDOWN_LOGOUT_SECONDS, Server

    gc.disable()
    try:
        server = Server(PolarityConfig(url=sim.url, credentials=CREDS), CollectorConfig(), 0.0)
        assert server(5.0)  # a scrape: its session, pools and families are in use
        server.close()
        ref = weakref.ref(server)
        del server
        poll(lambda: ref() is None, SHUTDOWN_LOGOUT_SECONDS)  # a thread may still hold it
        assert ref() is None, [type(r).__name__ for r in gc.get_referrers(ref())]
    finally:
        gc.enable()


def test_every_thread_leaves_the_exporters_signals_to_the_main_thread(
        tmp_path: Path, targets: TargetsFile, sims: dict[str, Simulator]) -> None:
    """A SIGHUP the kernel delivered to another thread left the main thread asleep: the reload
    happened only at the next SIGTERM (a flake of test_sighup_reloads_the_config_file). Every
    thread blocks SIGHUP, SIGINT and SIGTERM; the main thread takes them with sigwait."""
    launch = ExporterLauncher(tmp_path)
    exp = launch(f"--config.file={targets.path}", env=PASSWORD_ENV)
    try:
        assert requests.get(f"{exp.url}/probe", params={"target": "lab"},
                            timeout=10).status_code == 200  # the pools' threads exist now
        tasks = list(Path(f"/proc/{exp.proc.pid}/task").iterdir())
        assert len(tasks) > 3
        wanted = sum(1 << (signum - 1) for signum in (signal.SIGHUP, signal.SIGINT,
                                                     signal.SIGTERM))
        for task in tasks:
            if task.name == str(exp.proc.pid):
                continue  # the main thread: in sigwait, which unblocks the set it waits for
            blocked = re.search(r"SigBlk:\s+([0-9a-f]+)", (task / "status").read_text())
            assert blocked and int(blocked.group(1), 16) & wanted == wanted, task.name
    finally:
        launch.stop_all()

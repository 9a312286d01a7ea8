"""Threads that do not grow with targets (issue 19): pages and errors bodies of every Polarity
server share the fleet-wide pools of pools.py. A real exporter process probes 200 targets at
once against real simulators; its thread count is read from /proc while it does."""

from __future__ import annotations

import contextlib
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
import yaml
from conftest import SIM_PASSWORD, SIM_USER, ExporterLauncher
from reference import parse

from polarity_exporter import httpserver, pools
from polarity_exporter.simulator import Simulator, SimulatorConfig
from polarity_exporter.simulator import faults as F

TARGETS = 200
SIMULATORS = 4
THREAD_CEILING = 64
# Each probe's deadline: what Prometheus would announce for a 10 s scrape timeout.
SCRAPE_TIMEOUT = 10.0


def credentials(directory: Path) -> dict[str, str]:
    """A target's credential keys, the password in a file of its own."""
    password = directory / "password"
    password.write_text(SIM_PASSWORD)
    password.chmod(0o600)
    return {"username": SIM_USER, "password_file": str(password)}


def threads_of(pid: int) -> int:
    found = re.search(r"Threads:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())
    assert found
    return int(found.group(1))


def test_the_pools_and_workers_fit_under_the_ceiling_by_design() -> None:
    # main, the HTTP loop, the deadline watchdog and the reload thread, plus the pools: fetches,
    # an errors download beside each, and the later pages.
    assert 4 + httpserver.WORKERS + 2 * pools.FETCHES + pools.PAGES <= THREAD_CEILING


def test_two_hundred_targets_probed_at_once_are_all_up_within_64_threads(
        tmp_path: Path, start_exporter: ExporterLauncher) -> None:
    sims = [Simulator(SimulatorConfig(seed=seed, integrations=5, errors=10,
                                      users={SIM_USER: SIM_PASSWORD}))
            for seed in range(SIMULATORS)]
    for sim in sims:
        sim.start()
    try:
        creds = credentials(tmp_path)
        targets = {f"t{n:03d}": {"url": sims[n % SIMULATORS].url, **creds}
                   for n in range(TARGETS)}
        config = tmp_path / "targets.yml"
        config.write_text(yaml.safe_dump({"targets": targets}))
        exp = start_exporter(f"--config.file={config}")
        answers: dict[str, float | None] = {}
        peak = [threads_of(exp.proc.pid)]
        start = threading.Barrier(TARGETS + 1)

        def probe(name: str) -> None:
            start.wait()
            response = requests.get(f"{exp.url}/probe", params={"target": name},
                                    headers={"X-Prometheus-Scrape-Timeout-Seconds":
                                             str(SCRAPE_TIMEOUT)}, timeout=SCRAPE_TIMEOUT)
            answers[name] = parse(response.text)["polarity_up"].get(frozenset()) \
                if response.status_code == 200 else None

        clients = [threading.Thread(target=probe, args=(name,)) for name in targets]
        for client in clients:
            client.start()
        start.wait()
        while any(client.is_alive() for client in clients):
            peak.append(threads_of(exp.proc.pid))
            clients[-1].join(0.05)
        for client in clients:
            client.join()
        peak.append(threads_of(exp.proc.pid))
    finally:
        for sim in sims:
            sim.stop()
    down = sorted(name for name in targets if answers.get(name) != 1)
    assert not down, f"{len(down)} probes not up: {down[:5]}"
    print(f"peak threads: {max(peak)}")
    assert max(peak) <= THREAD_CEILING


def _probe(url: str, name: str, timeout: float) -> tuple[float | None, float]:
    started = time.monotonic()
    response = requests.get(f"{url}/probe", params={"target": name}, timeout=timeout + 5,
                            headers={"X-Prometheus-Scrape-Timeout-Seconds": str(timeout)})
    up = parse(response.text)["polarity_up"].get(frozenset()) \
        if response.status_code == 200 else None
    return up, time.monotonic() - started


def test_targets_whose_later_pages_hang_starve_no_other_target(
        tmp_path: Path, start_exporter: ExporterLauncher) -> None:
    """Two targets whose every page after the first, and errors body, hang (one with as many
    pages at once as the page threads): the other targets' probes stay up and in time."""
    hung_timeout, timeout = 20.0, 5.0
    later_pages = F.on(F.INTEGRATIONS)
    hang = F.chain(F.hang(60, lambda r: later_pages(r) and r.query.get("page[number]") != ["1"]),
                   F.hang(60, F.on(F.ERRORS)))
    bad = [Simulator(SimulatorConfig(seed=n, integrations=200, errors=10,
                                     users={SIM_USER: SIM_PASSWORD})) for n in range(2)]
    good = Simulator(SimulatorConfig(seed=9, integrations=5, errors=10,
                                     users={SIM_USER: SIM_PASSWORD}))
    for sim in (*bad, good):
        sim.start()
    try:
        creds = credentials(tmp_path)
        targets = {f"bad{n}": {"url": sim.url, **creds, "page_size": 1, "timeout": hung_timeout,
                               "max_concurrency": pools.PAGES if n == 0 else 10}
                   for n, sim in enumerate(bad)}
        targets |= {f"ok{n}": {"url": good.url, **creds} for n in range(4)}
        config = tmp_path / "targets.yml"
        config.write_text(yaml.safe_dump({"targets": targets}))
        exp = start_exporter(f"--config.file={config}")
        for n in range(4):
            assert _probe(exp.url, f"ok{n}", timeout)[0] == 1  # logged in
        for sim in bad:
            sim.faults = hang
        def probe_hung(name: str) -> None:
            with contextlib.suppress(requests.RequestException):  # cut off when the test ends
                _probe(exp.url, name, hung_timeout)

        hung = [threading.Thread(target=probe_hung, args=(name,), daemon=True)
                for name in ("bad0", "bad1")]
        for thread in hung:
            thread.start()
        # Until the hung targets ask for as many later pages as there are body threads.
        deadline = time.monotonic() + 10
        while sum(sim.counts[("GET", F.INTEGRATIONS)] for sim in bad) < \
                2 + pools.PAGES and time.monotonic() < deadline:
            time.sleep(0.02)
        with ThreadPoolExecutor(4) as probes:
            answers = list(probes.map(lambda n: _probe(exp.url, f"ok{n}", timeout), range(4)))
    finally:
        for sim in (*bad, good):
            sim.stop()
    assert [up for up, _ in answers] == [1, 1, 1, 1]
    assert max(seconds for _, seconds in answers) < timeout


def test_servers_retired_while_every_fetch_thread_is_held_are_logged_out_at_shutdown(
        tmp_path: Path, start_exporter: ExporterLauncher) -> None:
    """A reload retires four logged-in targets while hung fetches hold every fetch thread, so
    their logouts wait in the queue; SIGTERM then logs them out itself."""
    hung, healthy = Simulator(SimulatorConfig(seed=1, integrations=5, errors=5,
                                              users={SIM_USER: SIM_PASSWORD})), \
        Simulator(SimulatorConfig(seed=2, integrations=5, errors=5,
                                  users={SIM_USER: SIM_PASSWORD}))
    hung.faults = F.hang(60, F.on(F.INTEGRATIONS))
    for sim in (hung, healthy):
        sim.start()
    try:
        creds = credentials(tmp_path)
        bad = {f"bad{n}": {"url": hung.url, **creds, "timeout": 60}
               for n in range(pools.FETCHES + 1)}
        good = {f"ok{n}": {"url": healthy.url, **creds} for n in range(4)}
        config = tmp_path / "targets.yml"
        config.write_text(yaml.safe_dump({"targets": bad | good}))
        exp = start_exporter(f"--config.file={config}", "--web.shutdown-timeout=1")
        for name in good:
            assert _probe(exp.url, name, 5.0)[0] == 1  # logged in

        def probe_hung(name: str) -> None:
            with contextlib.suppress(requests.RequestException):  # cut off by the exit
                _probe(exp.url, name, 30.0)

        for name in bad:
            threading.Thread(target=probe_hung, args=(name,), daemon=True).start()
        deadline = time.monotonic() + 10
        while hung.counts[("GET", F.INTEGRATIONS)] < pools.FETCHES and \
                time.monotonic() < deadline:  # every fetch thread is held
            time.sleep(0.02)
        config.write_text(yaml.safe_dump({"targets": bad}))  # the healthy four are retired
        assert requests.post(f"{exp.url}/-/reload", timeout=10).status_code == 200
        assert exp.stop() == 0
    finally:
        for sim in (hung, healthy):
            sim.stop()
    assert healthy.counts[("POST", "/api/users/logout")] == 4

"""Threads that do not grow with targets (issue 19): pages and errors bodies of every Polarity
server share the fleet-wide pools of pools.py. A real exporter process probes 200 targets at
once against real simulators; its thread count is read from /proc while it does."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import requests
import yaml
from conftest import SIM_PASSWORD, SIM_USER, ExporterLauncher
from reference import parse

from polarity_exporter import httpserver, pools
from polarity_exporter.simulator import Simulator, SimulatorConfig

TARGETS = 200
SIMULATORS = 4
THREAD_CEILING = 64
# Each probe's deadline: what Prometheus would announce for a 10 s scrape timeout.
SCRAPE_TIMEOUT = 10.0


def threads_of(pid: int) -> int:
    found = re.search(r"Threads:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())
    assert found
    return int(found.group(1))


def test_the_pools_and_workers_fit_under_the_ceiling_by_design() -> None:
    # main, the HTTP loop, the deadline watchdog and the reload thread, plus the three pools.
    assert 4 + httpserver.WORKERS + pools.FETCHES + pools.BODIES <= THREAD_CEILING


def test_two_hundred_targets_probed_at_once_are_all_up_within_64_threads(
        tmp_path: Path, start_exporter: ExporterLauncher) -> None:
    sims = [Simulator(SimulatorConfig(seed=seed, integrations=5, errors=10,
                                      users={SIM_USER: SIM_PASSWORD}))
            for seed in range(SIMULATORS)]
    for sim in sims:
        sim.start()
    try:
        password = tmp_path / "password"
        password.write_text(SIM_PASSWORD)
        password.chmod(0o600)
        targets = {f"t{n:03d}": {"url": sims[n % SIMULATORS].url, "username": SIM_USER,
                                 "password_file": str(password)} for n in range(TARGETS)}
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

"""Shared fixtures: a real simulator over HTTP, a real exporter process, and tool lookup.

Tests that need an external tool call `require_tool`: outside CI a missing tool skips the test,
under CI=true it fails, so a green CI never hides a skipped check.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from inproc import Certs, Running, make_certs, running_exporter

from polarity_exporter.client import PolarityClient
from polarity_exporter.config import Password, PolarityConfig
from polarity_exporter.simulator import Simulator, SimulatorConfig

REPO = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# Credentials of the simulator's default account, used across the tests: as the exporter's
# config (in-process exporters) and as its environment (exporter processes).
SIM_USER = "exporter"
SIM_PASSWORD = "correct horse battery staple"
CREDS = Password(SIM_USER, SIM_PASSWORD)
PASSWORD_ENV = {"POLARITY_USERNAME": SIM_USER, "POLARITY_PASSWORD": SIM_PASSWORD}


@pytest.fixture(autouse=True)
def one_timing_test_at_a_time(request: pytest.FixtureRequest,
                              tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Tests that bound a time (marked `timing`) run one after another across the xdist
    workers, never two at once loading the cores against each other: each holds a lock file
    in the session's temporary directory, which all workers share. (xdist's own `loadgroup`
    cannot do this here: it renames tests in a way pytest 9.2 no longer reads.)"""
    if request.node.get_closest_marker("timing") is None:
        yield
        return
    lock = tmp_path_factory.getbasetemp().parent / "timing.lock"
    with lock.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
        yield


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any POLARITY_* setting of the caller's, plus
    `extra`: an exporter started by a test sees only what the test gives it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLARITY_")}
    env.update(extra or {})
    return env


def require_tool(name: str) -> str:
    """Path of an executable: skip when it is missing, but fail under CI."""
    venv_bin = Path(sys.executable).parent / name
    path = str(venv_bin) if venv_bin.exists() else shutil.which(name)
    if path is None:
        message = f"{name} is not installed"
        if IN_CI:
            pytest.fail(f"{message}, and CI must run this check")
        pytest.skip(message)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process(proc: subprocess.Popen[Any], timeout: float = 15) -> int:
    """SIGTERM, then SIGKILL if it does not exit in time; returns the exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def wait_until_ready(url: str, proc: subprocess.Popen[str] | None = None,
                     timeout: float = 20) -> None:
    """Poll a readiness URL; fail early if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before it was ready")
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} not ready after {timeout}s")


def _simulator() -> Iterator[Simulator]:
    """A small, seeded simulator (SimulatorConfig's defaults) with one password account."""
    with Simulator(SimulatorConfig(users={SIM_USER: SIM_PASSWORD})) as sim:
        yield sim


# One simulator per test, under two names: `simulator` in the process tests, `sim` in the
# in-process ones.
simulator = pytest.fixture(_simulator, name="simulator")
sim = pytest.fixture(_simulator, name="sim")
# One per module, for modules whose tests only read the same dataset.
module_simulator = pytest.fixture(_simulator, name="module_simulator", scope="module")


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """A throwaway CA with server and client certificates for 127.0.0.1 (inproc.make_certs)."""
    return make_certs(require_tool("openssl"), tmp_path_factory.mktemp("certs"))


@pytest.fixture
def exp(sim: Simulator) -> Iterator[Running]:
    """An exporter served in this process (tests/inproc.py), scraping `sim`."""
    with running_exporter(sim.url, CREDS) as running:
        yield running


@dataclass
class ExporterProcess:
    """A running `python -m polarity_exporter` with its log captured to a file."""

    proc: subprocess.Popen[str]
    url: str
    log_path: Path
    args: list[str] = field(default_factory=list)

    def metrics(self, **kwargs: object) -> requests.Response:
        return requests.get(f"{self.url}/metrics", timeout=30, **kwargs)  # type: ignore[arg-type]

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> int:
        return stop_process(self.proc)


class ExporterLauncher:
    """Starts `python -m polarity_exporter` processes, each ready to scrape, and stops them."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._started: list[ExporterProcess] = []

    def __call__(self, *flags: str, env: dict[str, str] | None = None,
                 ready: bool = True) -> ExporterProcess:
        port = free_port()
        log_path = self._directory / f"exporter-{port}.log"
        args = [sys.executable, "-m", "polarity_exporter",
                f"--web.listen-address=127.0.0.1:{port}", *flags]
        with log_path.open("w") as log_file:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT,
                                    env=clean_env(env), text=True)
        exp = ExporterProcess(proc=proc, url=f"http://127.0.0.1:{port}", log_path=log_path,
                              args=args)
        self._started.append(exp)
        if ready:
            wait_until_ready(f"{exp.url}/-/ready", proc)
        return exp

    def stop_all(self) -> None:
        for exp in self._started:
            exp.stop()


@pytest.fixture
def start_exporter(tmp_path: Path) -> Iterator[ExporterLauncher]:
    """Factory: start_exporter(*flags, env={...}) -> ExporterProcess, ready to scrape."""
    launcher = ExporterLauncher(tmp_path)
    yield launcher
    launcher.stop_all()


@pytest.fixture(scope="module")
def module_exporter(module_simulator: Simulator,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExporterProcess]:
    """One exporter process for a module, password login to `module_simulator`."""
    launcher = ExporterLauncher(tmp_path_factory.mktemp("exporter"))
    yield launcher(f"--polarity.url={module_simulator.url}", env=PASSWORD_ENV)
    launcher.stop_all()


@contextmanager
def simulator_and_client(page_size: int = 1000, integrations: int = 25, errors: int = 80,
                         ) -> Iterator[tuple[Simulator, PolarityClient]]:
    """A simulator of the test account (its dataset of this size) and a client of it, for
    tests of the client and the collector in this process; closed when the block ends."""
    config = SimulatorConfig(users={SIM_USER: SIM_PASSWORD}, integrations=integrations,
                             errors=errors)
    with Simulator(config) as sim:
        client = PolarityClient(PolarityConfig(url=sim.url,
                                               credentials=Password(SIM_USER, SIM_PASSWORD),
                                               page_size=page_size, timeout=5))
        try:
            yield sim, client
        finally:
            sim.faults = None
            client.close()

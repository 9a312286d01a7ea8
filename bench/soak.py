"""Soak: thousands of scrapes against the simulator with faults interleaved.

Checks that every scrape is answered (HTTP 200 with polarity_up), that polarity_up tells the
truth for the fault in force, and that neither resident memory nor open file descriptors grow
beyond a stated bound after a warm-up. The simulator and the exporter (wired by the same
`build_exporter` the CLI uses) run in this process, so RSS and fds cover both; scrapes go over
real HTTP.

    python bench/soak.py                      # long form: 20000 scrapes
    python bench/soak.py --scrapes 1500       # the short form CI runs (tests/test_soak.py)

Prints one JSON line; exits 1 if a bound is exceeded or a scrape went unanswered.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import requests

from polarity_exporter.config import CollectorConfig, Config, Password, PolarityConfig, ServerConfig
from polarity_exporter.exporter import build_exporter
from polarity_exporter.simulator import FaultHook, Simulator, SimulatorConfig
from polarity_exporter.simulator import faults as F

USER, PASSWORD = "soak", "soak-password"
HTML = b"<html><body>maintenance</body></html>"


@dataclass(frozen=True)
class Fault:
    name: str
    up: int  # what polarity_up must say while this fault is in force
    hook: Callable[[Simulator], FaultHook | None]


# Cheap faults (no waiting on a deadline), so thousands of scrapes fit in seconds; the slow
# ones (hangs, trickles) have their own tests in tests/test_faults.py.
FAULTS: tuple[Fault, ...] = (
    Fault("none", 1, lambda sim: None),
    Fault("listing 500", 0, lambda sim: F.status(500, F.on(F.INTEGRATIONS))),
    Fault("errors 500", 1, lambda sim: F.status(500, F.on(F.ERRORS))),
    Fault("listing html", 0, lambda sim: F.body(HTML, F.on(F.INTEGRATIONS), "text/html")),
    Fault("errors truncated", 1, lambda sim: F.truncate(0.5, F.on(F.ERRORS))),
    Fault("listing cut", 0, lambda sim: F.cut(50, F.on(F.INTEGRATIONS))),
    Fault("errors 403", 1, lambda sim: F.status(403, F.on(F.ERRORS))),
    Fault("total inflated", 0, lambda sim: F.inflate_total(3)),
    Fault("tokens revoked", 1, lambda sim: _revoke_once(sim)),
    Fault("login 503", 0, lambda sim: F.chain(_revoke_once(sim),
                                              F.status(503, F.on(F.LOGIN)))),
    Fault("login 429", 0, lambda sim: F.chain(_revoke_once(sim), F.status(
        429, F.on(F.LOGIN), headers={"Retry-After": "0"}))),
    Fault("errors deeply nested", 1, lambda sim: F.body(
        b'{"data":[' + b"[" * 50_000 + b"]" * 50_000 + b"]}", F.on(F.ERRORS))),
    Fault("errors numbers out of range", 1, lambda sim: F.body(
        b'{"data":[{"attributes":{"integration-id":"x","error-count":1e400}}]}',
        F.on(F.ERRORS))),
    Fault("listing 500 with a large body", 0, lambda sim: F.huge_body(
        500, 8, F.on(F.INTEGRATIONS))),
)


def _revoke_once(sim: Simulator) -> FaultHook:
    sim.revoke_tokens()
    return lambda request, response: response


def rss_kib() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@dataclass
class Report:
    scrapes: int
    answered: int = 0
    wrong_up: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    rss_start_kib: int = 0
    rss_end_kib: int = 0
    fds_start: int = 0
    fds_end: int = 0
    max_rss_growth_kib: int = 0
    max_fd_growth: int = 0

    @property
    def rss_growth_kib(self) -> int:
        return self.rss_end_kib - self.rss_start_kib

    @property
    def ok(self) -> bool:
        return (self.answered == self.scrapes and self.wrong_up == 0
                and self.rss_growth_kib <= self.max_rss_growth_kib
                and self.fds_end - self.fds_start <= self.max_fd_growth)

    def as_json(self) -> str:
        return json.dumps({**asdict(self), "rss_growth_kib": self.rss_growth_kib,
                           "ok": self.ok})


def soak(scrapes: int, warmup: int = 200, fault_every: int = 2, max_rss_growth_mib: float = 16,
         max_fd_growth: int = 8, integrations: int = 25, errors: int = 80) -> Report:
    """Run the soak; every `fault_every`-th scrape has the next fault of FAULTS in force."""
    logging.getLogger("polarity_exporter").setLevel(logging.CRITICAL)  # faults log by design
    report = Report(scrapes, max_rss_growth_kib=int(max_rss_growth_mib * 1024),
                    max_fd_growth=max_fd_growth)
    seen: Counter[str] = Counter()
    config = SimulatorConfig(users={USER: PASSWORD}, integrations=integrations, errors=errors)
    with Simulator(config) as sim:
        exporter = build_exporter(Config(
            polarity=PolarityConfig(url=sim.url, credentials=Password(USER, PASSWORD),
                                    timeout=5, page_size=10),
            collector=CollectorConfig(), web=ServerConfig(host="127.0.0.1", port=0)))
        exporter.serve()
        url = f"http://127.0.0.1:{exporter.port}/metrics"
        session = requests.Session()
        started = time.monotonic()
        try:
            for number in range(warmup + scrapes):
                if number == warmup:
                    gc.collect()
                    report.rss_start_kib, report.fds_start = rss_kib(), open_fds()
                fault = FAULTS[(number // fault_every) % len(FAULTS)] \
                    if number % fault_every == 0 else FAULTS[0]
                sim.faults = fault.hook(sim)
                up = _scrape(session, url)
                if number >= warmup:
                    seen[fault.name] += 1
                    report.answered += up is not None
                    report.wrong_up += up is not None and up != fault.up
        finally:
            session.close()
            exporter.close()
        gc.collect()
        report.rss_end_kib, report.fds_end = rss_kib(), open_fds()
    report.seconds = round(time.monotonic() - started, 2)
    report.faults = dict(seen)
    return report


def _scrape(session: requests.Session, url: str) -> int | None:
    """polarity_up of one scrape, or None if it was not answered properly."""
    try:
        response = session.get(url, timeout=10,
                               headers={"X-Prometheus-Scrape-Timeout-Seconds": "3"})
    except requests.RequestException:
        return None
    if response.status_code != 200:
        return None
    for line in response.text.splitlines():
        if line.startswith("polarity_up "):
            return int(float(line.split()[1]))
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scrapes", type=int, default=20000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--fault-every", type=int, default=2,
                        help="every Nth scrape has a fault in force (the next in the list)")
    parser.add_argument("--max-rss-growth-mib", type=float, default=16)
    parser.add_argument("--max-fd-growth", type=int, default=8)
    args = parser.parse_args(argv)
    report = soak(args.scrapes, args.warmup, args.fault_every, args.max_rss_growth_mib,
                  args.max_fd_growth)
    print(report.as_json())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())

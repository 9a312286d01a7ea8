"""Polarity servers as the exporter runs them: one `Server` per Polarity server (its client,
token, collector and shared fetch), and the `Fleet` of named targets behind /probe.

A target's runtime is its own: a hung or slow server holds only its own fetch thread and
connections, so it never delays another target's probe. Upstream connections are bounded per
target (at most --polarity.max-concurrency + 2, the client's pool), so in total by the sum over
the configured targets.

Reload (SIGHUP, POST /-/reload) replaces the target set:

    file read + checked (no lock) --ok--> swap under the lock (no I/O) --> retired servers
         |                                 unchanged: same Server, session and token     closed in
         +--invalid--> last good set kept   changed or new: a fresh Server               a thread
                       reload state 0       removed: retired                             (logout)

Reloads may overlap (a signal and a POST): each is numbered when it starts, and one that
finishes after a later one has been applied is dropped, so the newest file read always wins.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from prometheus_client.core import Metric
from prometheus_client.samples import Sample

from polarity_exporter import __version__, metrics
from polarity_exporter.client import PolarityClient
from polarity_exporter.collector import PolarityCollector, ScrapeResult
from polarity_exporter.config import CollectorConfig, ConfigError, PolarityConfig, redact_url
from polarity_exporter.scrapecache import SharedScrape

log = logging.getLogger(__name__)

Load = Callable[[], dict[str, PolarityConfig]]  # reads and checks the targets file


class Server:
    """One Polarity server: client (session, token), collector, and the fetch its concurrent
    scrapes share. Callable with a deadline in seconds -> the families to answer with."""

    def __init__(self, config: PolarityConfig, collector: CollectorConfig,
                 cache_ttl: float) -> None:
        self.config = config
        if config.insecure_skip_verify:
            log.warning("TLS certificate verification of Polarity is disabled",
                        extra={"server": config.url})
        parts = urlsplit(config.url)
        if parts.scheme == "http" and not _is_loopback(parts.hostname or ""):
            log.warning("credentials are sent to Polarity unencrypted over http://; use "
                        "https://", extra={"server": redact_url(config.url)})
        self.client = PolarityClient(config)
        self.collector = PolarityCollector(self.client, collector, cache_ttl)
        # Concurrent scrapes share one Polarity fetch; --cache.ttl also reuses a recent one.
        self.shared = SharedScrape(
            self.collector.scrape, ttl=cache_ttl, max_lifetime=config.timeout,
            late=lambda timeout: self.collector.build(ScrapeResult(timeout=timeout)))

    def __call__(self, timeout: float) -> list[Metric]:
        return self.shared(timeout)

    def close(self) -> None:
        """Stop its threads without waiting for a fetch in flight (each ends at its own
        deadline), then log out; the client refuses to log in again."""
        self.shared.close(wait=False)
        self.collector.close(wait=False)
        self.client.close()


@dataclass
class _Counts:
    probes: int = 0
    failures: int = 0  # probes that answered polarity_up 0


@dataclass
class _ReloadState:
    successful: bool = True
    last_success: float = field(default_factory=time.time)
    started: int = 0  # reloads started (numbering)
    applied: int = 0  # number of the newest reload applied


class Fleet:
    """The named targets of --config.file and what the exporter says of them on /metrics."""

    def __init__(self, load: Load, collector: CollectorConfig, cache_ttl: float,
                 clock: Callable[[], float] = time.time) -> None:
        self._load = load
        self._collector = collector
        self._cache_ttl = cache_ttl
        self._clock = clock
        self._lock = threading.Lock()  # guards the fields below; never held across I/O
        self._servers: dict[str, Server] = {}
        self._counts: dict[str, _Counts] = {}
        self._state = _ReloadState(last_success=clock())
        self._closed = False

    # --- targets --------------------------------------------------------------------------

    def start(self) -> None:
        """The first load: a ConfigError here stops the exporter (exit 2)."""
        self._apply(self._load(), self._begin())

    def get(self, name: str) -> Server | None:
        with self._lock:
            return self._servers.get(name)

    def names(self) -> list[str]:
        with self._lock:
            return list(self._servers)

    def reload(self) -> str | None:
        """Read the file again and apply it; None when it was applied, else the one-line reason
        it was not (the last good set stays)."""
        number = self._begin()
        try:
            configs = self._load()
        except ConfigError as exc:
            with self._lock:
                self._state.successful = False
            log.error("reload failed; keeping the last good targets", extra={"err": str(exc)})
            return str(exc)
        self._apply(configs, number)
        return None

    def _begin(self) -> int:
        with self._lock:
            self._state.started += 1
            return self._state.started

    def _apply(self, configs: dict[str, PolarityConfig], number: int) -> None:
        retired: list[Server] = []
        added: list[str] = []
        with self._lock:
            if self._closed or number < self._state.applied:
                return  # a later reload was applied meanwhile: its file is newer
            servers: dict[str, Server] = {}
            for name, config in configs.items():
                current = self._servers.get(name)
                if current is not None and current.config == config:
                    servers[name] = current  # its session and token are kept
                    continue
                if current is not None:
                    retired.append(current)
                servers[name] = Server(config, self._collector, self._cache_ttl)  # no I/O
                added.append(name)
            retired += [s for name, s in self._servers.items() if name not in configs]
            removed = [name for name in self._servers if name not in configs]
            self._servers = servers
            # Counters of removed targets go with them: the label set is the configured one.
            self._counts = {name: self._counts.get(name, _Counts()) for name in servers}
            self._state.successful, self._state.applied = True, number
            self._state.last_success = self._clock()
        log.info("targets loaded", extra={"targets": len(configs), "new_or_changed": len(added),
                                          "removed": len(removed)})
        _close_in_background(retired)

    # --- probes -------------------------------------------------------------------------

    def probe(self, name: str, timeout: float) -> list[Metric] | None:
        """The target's families, answered within `timeout`; None for an unknown name."""
        server = self.get(name)
        if server is None:
            return None
        families = server(timeout)
        up = _up(families)
        with self._lock:
            counts = self._counts.get(name)
            if counts is not None:  # not removed by a reload meanwhile
                counts.probes += 1
                counts.failures += not up
        return families

    def families(self) -> list[Metric]:
        """The exporter's own families for /metrics: reload state and per-target counters."""
        with self._lock:
            state = self._state
            counts = [(name, c.probes, c.failures) for name, c in self._counts.items()]
            successful, last_success = state.successful, state.last_success
        reloaded = metrics.CONFIG_RELOAD_SUCCESSFUL.new()
        reloaded.samples.append(Sample(reloaded.name, {}, 1.0 if successful else 0.0))
        when = metrics.CONFIG_RELOAD_TIMESTAMP.new()
        when.samples.append(Sample(when.name, {}, last_success))
        probes = metrics.PROBES.new()
        failures = metrics.PROBE_FAILURES.new()
        for name, total, failed in counts:
            labels = {"target": name}
            probes.samples.append(Sample(metrics.PROBES.name, labels, float(total)))
            failures.samples.append(Sample(metrics.PROBE_FAILURES.name, labels, float(failed)))
        return [reloaded, when, probes, failures]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            servers, self._servers = list(self._servers.values()), {}
        for server in servers:
            server.close()


def build_info() -> Metric:
    """polarity_exporter_build_info on its own, for a /metrics without a Polarity server."""
    family = metrics.BUILD_INFO.new()
    family.samples.append(Sample(family.name, {"version": __version__}, 1.0))
    return family


def _up(families: Iterable[Metric]) -> bool:
    for family in families:
        if family.name == metrics.UP.name:
            return any(sample.value == 1.0 for sample in family.samples)
    return False


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _close_in_background(servers: list[Server]) -> None:
    """Log retired servers out without holding up the reload that retired them (a logout
    waits for Polarity for up to 5 s)."""
    def retire() -> None:
        for server in servers:
            server.close()

    if servers:
        threading.Thread(target=retire, name="retire", daemon=True).start()

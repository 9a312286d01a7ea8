"""Polarity servers as the exporter runs them: one `Server` per Polarity server (its client,
token, collector and shared fetch), and the `Fleet` of named targets behind /probe.

A target's session, token and connections are its own; its threads come from the shared pools
(pools.py): a hung or slow server holds one fetch thread until its deadline, so it delays no
other target's probe while fewer than pools.FETCHES servers hang at once. Upstream connections
are bounded per target (at most --polarity.max-concurrency + 2, the client's pool), so in total
by the sum over the configured targets.

Reload (SIGHUP, POST /-/reload) replaces the target set:

    file read + checked (no lock) --ok--> swap under the lock (no I/O) --> retired servers
         |                                 unchanged: same Server, session and token     closed in
         +--invalid--> last good set kept   changed or new: a fresh Server               a thread
                       reload state 0       removed: retired                             (logout)

Reloads run one at a time on the `Reloader`'s thread, never on an HTTP worker: a request for
a reload made while one runs is served by the next one, which reads the file again, so the
newest file always wins and what /-/reload answers is what is in effect.

A retired server finishes the fetch it has in flight (bounded by that fetch's deadline), then
logs out: the probe waiting for it gets its answer, and no session is left open.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from prometheus_client.core import Metric
from prometheus_client.samples import Sample

from polarity_exporter import __version__, metrics, pools
from polarity_exporter.client import PolarityClient
from polarity_exporter.collector import PolarityCollector, ScrapeResult
from polarity_exporter.config import CollectorConfig, ConfigError, PolarityConfig, redact_url
from polarity_exporter.events import ErrorEvents
from polarity_exporter.fetchlog import FetchLog
from polarity_exporter.scrapecache import Scraped, SharedScrape

log = logging.getLogger(__name__)

Load = Callable[[], dict[str, PolarityConfig]]  # reads and checks the targets file
# Probes of one target that may wait for it at once (an HA pair scraping it, and retries); more
# are answered at once with polarity_up 0. A hung target holds an HTTP worker per waiting probe
# until its deadline: without a cap, forty probes of it would hold every worker.
MAX_WAITING_PROBES = 4
# Logging out of every target at shutdown, in parallel: at most this long in all.
SHUTDOWN_LOGOUT_SECONDS = 5.0
SHUTDOWN_LOGOUTS = 16  # logouts at once


class Server:
    """One Polarity server: client (session, token), collector, and the fetch its concurrent
    scrapes share. Callable with a deadline in seconds -> the families to answer with."""

    def __init__(self, config: PolarityConfig, collector: CollectorConfig,
                 cache_ttl: float, name: str = "") -> None:
        self.config = config
        self.name = name or config.url  # the target's name; the URL for --polarity.url
        self.retired = threading.Event()  # set when a reload replaced or removed it
        if config.insecure_skip_verify:
            log.warning("TLS certificate verification of Polarity is disabled",
                        extra={"server": config.url})
        parts = urlsplit(config.url)
        if parts.scheme == "http" and not _is_loopback(parts.hostname or ""):
            log.warning("credentials are sent to Polarity unencrypted over http://; use "
                        "https://", extra={"server": redact_url(config.url)})
        self.client = PolarityClient(config)
        events = config.error_events if config.error_events is not None else \
            collector.error_events
        self.collector = PolarityCollector(
            self.client, collector, cache_ttl, errors=config.errors,
            events=ErrorEvents(self.name) if events else None)
        # Concurrent scrapes share one Polarity fetch; --cache.ttl also reuses a recent one.
        self.shared = SharedScrape(self.collector.scrape, ttl=cache_ttl,
                                   max_lifetime=config.timeout,
                                   late=_late_answer(self.collector))

    def __call__(self, timeout: float) -> Scraped:
        return self.shared(timeout)

    def late(self, timeout: float) -> list[Metric]:
        """The answer when nothing can be asked of Polarity in time: polarity_up 0."""
        return _late_answer(self.collector)(timeout)

    def close(self) -> None:
        """Start no more fetches and log out now; the client refuses to log in again."""
        self.shared.close()
        self.client.close()

    def retire(self, logged_out: Callable[[], None]) -> None:
        """Start no more fetches; log out once the fetch in flight has ended (at its own
        deadline), so that the scrapes waiting for it get its answer, then call `logged_out`.
        Never blocks."""
        self.retired.set()

        def close() -> None:
            self.client.close()
            logged_out()

        def log_out() -> None:  # on a fetch thread: the reload must not wait for a logout
            pools.fetches.submit(close)

        self.shared.close(then=log_out)


@dataclass
class _Target:
    """A configured name: its current server, and what outlives a change of its config (the
    counters and the cap on waiting probes) until the name is removed."""

    server: Server
    probes: int = 0
    failures: int = 0  # probes that answered polarity_up 0
    waiting: threading.BoundedSemaphore = field(
        default_factory=lambda: threading.BoundedSemaphore(MAX_WAITING_PROBES))


@dataclass
class _ReloadState:
    successful: bool = True
    last_success: float = field(default_factory=time.time)


class Fleet:
    """The named targets of --config.file and what the exporter says of them on /metrics."""

    def __init__(self, load: Load, collector: CollectorConfig, cache_ttl: float,
                 clock: Callable[[], float] = time.time) -> None:
        self._load = load
        self._collector = collector
        self._cache_ttl = cache_ttl
        self._clock = clock
        self._lock = threading.Lock()  # guards the fields below; never held across I/O
        self._targets: dict[str, _Target] = {}
        self._state = _ReloadState(last_success=clock())
        self._closed = False
        self._retiring: set[Server] = set()  # retired, not yet logged out

    # --- targets --------------------------------------------------------------------------

    def start(self) -> None:
        """The first load: a ConfigError here stops the exporter (exit 2)."""
        self._apply(self._load())

    def reload(self) -> str | None:
        """Read the file again and apply it; None when it was applied, else the one-line reason
        it was not (the last good set stays). Called by the Reloader, one at a time."""
        try:
            self._apply(self._load())
        except Exception as exc:  # ConfigError, or a bug: either way the last good set stays
            reason = str(exc) if isinstance(exc, ConfigError) else \
                f"unexpected {type(exc).__name__}"
            with self._lock:
                self._state.successful = False
            log.error("reload failed; keeping the last good targets", extra={"err": reason},
                      exc_info=None if isinstance(exc, ConfigError) else exc)
            return reason
        return None

    def _apply(self, configs: dict[str, PolarityConfig]) -> None:
        retired: list[Server] = []
        with self._lock:
            if self._closed:
                return
            current = self._targets
            targets: dict[str, _Target] = {}
            # New servers first, so that a failure leaves the running set untouched. A
            # Server's constructor does no I/O: it is safe under the lock.
            fresh: dict[str, Server] = {}
            try:
                for name, config in configs.items():
                    kept = current.get(name)
                    if kept is None or kept.server.config != config:
                        fresh[name] = Server(config, self._collector, self._cache_ttl, name)
            except Exception:
                for server in fresh.values():
                    server.close()  # never logged in: nothing to log out
                raise
            for name in configs:
                kept = current.get(name)
                if name not in fresh:
                    assert kept is not None
                    targets[name] = kept  # its session, token and counters are kept
                elif kept is None:
                    targets[name] = _Target(fresh[name])
                else:  # changed: the same target (counters, probes waiting), a new server
                    retired.append(kept.server)
                    kept.server = fresh[name]
                    targets[name] = kept
            changed = len(fresh)
            removed = [name for name in current if name not in configs]
            retired += [current[name].server for name in removed]
            self._targets = targets  # counters of removed targets go with them
            # Until their logout (queued behind fetches in flight), shutdown logs them out.
            self._retiring.update(retired)
            self._state.successful = True
            self._state.last_success = self._clock()
        log.info("targets loaded", extra={"targets": len(configs), "new_or_changed": changed,
                                          "removed": len(removed)})
        for server in retired:
            server.retire(functools.partial(self._logged_out, server))

    def _logged_out(self, server: Server) -> None:
        with self._lock:
            self._retiring.discard(server)

    # --- probes -------------------------------------------------------------------------

    def probe(self, name: str,
              timeout_for: Callable[[Server], float]) -> tuple[Server, Scraped] | None:
        """The target's server and families, answered within `timeout_for(server)` (a scrape's
        deadline depends on the target's own timeout); None for an unknown name. The server is
        looked up once, so a reload meanwhile cannot mix two servers in one answer."""
        with self._lock:
            target = self._targets.get(name)
            if target is None:
                return None
            server = target.server
        deadline = timeout_for(server)
        if target.waiting.acquire(blocking=False):
            try:
                started = time.monotonic()
                scraped = server(deadline)
                if server.retired.is_set() and not _up(scraped.families):
                    # A reload replaced this server while the probe was on its way: it may
                    # have refused a new fetch. Ask its replacement, in the time that is left.
                    with self._lock:
                        replacement = target.server
                    if replacement is not server:
                        server = replacement
                        scraped = server(max(0.0, deadline - (time.monotonic() - started)))
            finally:
                target.waiting.release()
        else:
            log.warning("too many probes waiting for this target; answering polarity_up 0 at "
                        "once", extra={"target": name, "waiting": MAX_WAITING_PROBES})
            scraped = Scraped(server.late(deadline), FetchLog())
            scraped.log.add(f"{MAX_WAITING_PROBES} probes of this target were waiting already: "
                            "answered polarity_up 0 at once")
            scraped.log.outcome = "down: too many probes of this target waiting"
        up = _up(scraped.families)
        with self._lock:  # counted on the target probed, even if a reload replaced it since
            target.probes += 1
            target.failures += not up
        return server, scraped

    def families(self) -> list[Metric]:
        """The exporter's own families for /metrics: reload state and per-target counters."""
        with self._lock:
            state = self._state
            counts = [(name, t.probes, t.failures) for name, t in self._targets.items()]
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
        """Log out of every target, and of every retired server whose logout has not run yet,
        in parallel, for at most SHUTDOWN_LOGOUT_SECONDS."""
        with self._lock:
            self._closed = True
            servers = [target.server for target in self._targets.values()]
            servers += self._retiring  # a second logout of one is a no-op
            self._targets, self._retiring = {}, set()
        if not servers:
            return
        # Threads of their own: the shared fetch threads may all be held by hung fetches.
        logouts = ThreadPoolExecutor(min(len(servers), SHUTDOWN_LOGOUTS),
                                     thread_name_prefix="logout")
        done = [logouts.submit(server.close) for server in servers]
        logouts.shutdown(wait=False)
        wait(done, timeout=SHUTDOWN_LOGOUT_SECONDS)


class Reloader:
    """Reloads the fleet on its own thread, one reload at a time.

    `request()` asks for a reload and returns its number; `wait(number)` waits until a reload
    that started after the request has finished and returns its outcome. Requests made while a
    reload runs are all served by the next one, which reads the file again.
    """

    def __init__(self, fleet: Fleet) -> None:
        self._fleet = fleet
        self._cond = threading.Condition()
        self._requested = 0
        self._done = 0
        self._outcome: str | None = None
        threading.Thread(target=self._loop, name="reload", daemon=True).start()

    def request(self) -> int:
        with self._cond:
            self._requested += 1
            self._cond.notify_all()
            return self._requested

    def wait(self, number: int, timeout: float) -> tuple[bool, str | None]:
        """(finished in time, None or the reason the reload failed)."""
        with self._cond:
            finished = self._cond.wait_for(lambda: self._done >= number, timeout)
            return finished, self._outcome

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._requested > self._done)
                number = self._requested  # this reload serves every request so far
            try:
                outcome = self._fleet.reload()  # failures are its outcome
            except BaseException as exc:  # a bug: this thread must live for the next reload
                outcome = f"unexpected {type(exc).__name__}"
                log.error("reload failed unexpectedly", exc_info=exc, extra={"err": outcome})
            with self._cond:
                self._done, self._outcome = number, outcome
                self._cond.notify_all()


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


def _late_answer(collector: PolarityCollector) -> Callable[[float], list[Metric]]:
    """Server.late for its SharedScrape, holding the collector only. A bound method of the
    Server would make Server -> SharedScrape -> Server a reference cycle: a retired Server (its
    session, pools and last families) would then wait for the cyclic GC, which the exporter's
    GC threshold (memory.py) makes rare, and RSS grew across reloads (issue 20, finding 10)."""
    def late(timeout: float) -> list[Metric]:
        # Keeps what the fetch in flight may yet use: forgetting it here made that fetch
        # decode an errors body it held as the kept one (found by an attack).
        return collector.build(ScrapeResult(timeout=timeout), keep=False)
    return late

"""Wires the parts into a running exporter and serves until a signal.

client (Polarity API) -> collector (metric families) -> shared scrape (coalescing, optional
cache), per Polarity server (servers.py: the --polarity.url one, and the --config.file targets)
-> web app (routes) -> threaded HTTP(S) server.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from dataclasses import dataclass
from typing import Any

import click
from prometheus_client import ProcessCollector

from polarity_exporter import __version__
from polarity_exporter.client import PolarityClient
from polarity_exporter.config import Config, ConfigError
from polarity_exporter.fetchlog import FetchLog
from polarity_exporter.history import History
from polarity_exporter.httpserver import BoundedServer
from polarity_exporter.memory import release_free_memory
from polarity_exporter.scrapecache import Scraped
from polarity_exporter.servers import Fleet, Reloader, Server, build_info
from polarity_exporter.targets import load_targets
from polarity_exporter.web import ExporterApp, Landing, bind

log = logging.getLogger("polarity_exporter")


@dataclass
class Exporter:
    """The exporter wired together and bound to its port; serve() starts answering."""

    server: BoundedServer
    app: ExporterApp
    polarity: Server | None  # --polarity.url: the server /metrics serves
    fleet: Fleet | None  # --config.file: the targets /probe serves
    reloader: Reloader | None  # and what reloads them
    scheme: str

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    @property
    def client(self) -> PolarityClient:
        assert self.polarity is not None
        return self.polarity.client

    def serve(self) -> threading.Thread:
        thread = threading.Thread(target=self.server.serve_forever, name="http", daemon=True)
        thread.start()
        self.app.ready.set()
        return thread

    def close(self, grace: float = 10.0) -> None:
        """Stop accepting, close idle connections, let scrapes in flight finish for up to
        `grace` seconds, then log out of Polarity. Fetches still running are not waited for:
        each ends at its own deadline, and the client refuses to log in again once closed."""
        self.app.ready.clear()
        self.server.shutdown(grace)
        if self.polarity is not None:
            self.polarity.close()
        if self.fleet is not None:
            self.fleet.close()


def build_exporter(config: Config) -> Exporter:
    """Wire the exporter; a ConfigError (exit 2) when the targets file or the port is bad."""
    security: Any = config.web.security
    if security is not None:
        from polarity_exporter.weblive import LiveWebConfig  # bcrypt, PyYAML: only when asked

        # Read again when the file or a certificate it names changes (exporter-toolkit does).
        security = LiveWebConfig(config.web.security_file, security)
    fleet: Fleet | None = None
    reloader: Reloader | None = None
    if config.targets_file is not None:
        path = config.targets_file
        fleet = Fleet(lambda: load_targets(path), config.collector, config.cache_ttl)
        fleet.start()
        reloader = Reloader(fleet)
    polarity = Server(config.polarity, config.collector, config.cache_ttl) \
        if config.polarity is not None else None
    process = ProcessCollector(registry=None)

    def scrape(timeout: float) -> Scraped:
        # /metrics: the --polarity.url server's families, or only the build info; with
        # --config.file also the reload state and probe counters; the process always.
        if polarity is not None:
            scraped = polarity(timeout)
        else:
            scraped = Scraped([build_info()], FetchLog())
            scraped.log.add("no --polarity.url: /metrics asks no Polarity server; the targets "
                            "of --config.file answer at /probe?target=NAME")
        families = scraped.families
        if fleet is not None:
            families = [*families, *fleet.families()]
        return Scraped([*families, *process.collect()], scraped.log)

    timeouts = config.polarity.timeout if config.polarity is not None else 10.0
    landing = config.polarity.url if config.polarity is not None else \
        f"the targets of {config.targets_file} (/probe?target=NAME)"
    app = ExporterApp(scrape, telemetry_path=config.web.telemetry_path,
                      default_timeout=timeouts, timeout_offset=config.web.timeout_offset,
                      landing=Landing("Polarity Exporter", __version__, landing),
                      security=security, after_scrape=release_free_memory,
                      encoded=polarity.shared.encoded if polarity is not None else None,
                      fleet=fleet, reloader=reloader, history=History(config.history_limit),
                      history_target=config.web.telemetry_path if polarity is not None else None)
    tls = security is not None and security.tls
    try:
        server = bind(app, config.web.host, config.web.port)
    except OSError as exc:
        for part in (polarity, fleet):
            if part is not None:
                part.close()
        raise ConfigError(f"cannot listen on {config.web.host}:{config.web.port}: "
                          f"{exc.strerror or exc}") from None
    return Exporter(server, app, polarity, fleet, reloader, "https" if tls else "http")


# The signals the exporter acts on: blocked in every thread (block_signals, at the entry point,
# before any thread starts; threads inherit the mask) and taken by the main thread with sigwait.
# With handlers instead, a signal the kernel delivered to another thread left the main thread
# asleep in its wait: a SIGHUP reload then happened only at the next SIGTERM.
SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})


def block_signals() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)


def run(config: Config) -> None:
    """Serve until SIGTERM or SIGINT, reloading on SIGHUP, then finish in-flight scrapes and
    log out."""
    block_signals()  # the entry point did before any thread started; here for other callers
    exporter = build_exporter(config)
    security = config.web.security
    exporter.serve()
    host = config.web.host or "localhost"
    host = f"[{host}]" if ":" in host else host
    url = f"{exporter.scheme}://{host}:{exporter.port}{config.web.telemetry_path}"
    log.info("listening", extra={"address": f"{config.web.host}:{exporter.port}",
                                 "metrics": url, "version": __version__,
                                 "tls": exporter.scheme == "https",
                                 "basic_auth": bool(security and security.basic_auth_users),
                                 "cache_ttl": config.cache_ttl})
    click.echo(f"polarity-exporter {__version__}: metrics at {url}")
    while (signum := signal.sigwait(SIGNALS)) == signal.SIGHUP:
        # The reload runs on its own thread: it reads files. Without --config.file there is
        # nothing to reload, and SIGHUP is ignored.
        if exporter.reloader is not None:
            exporter.reloader.request()
    log.info("shutting down", extra={"signal": signal.Signals(signum).name})
    exporter.close(config.web.shutdown_timeout)
    # Fetches still in flight are not waited for: each would end only at its own deadline (up
    # to --polarity.timeout), past the shutdown timeout Kubernetes grants. The process ends
    # here, as a Go exporter's does when main returns, without joining the pools' threads.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


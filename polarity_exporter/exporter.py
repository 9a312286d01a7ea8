"""Wires the parts into a running exporter and serves until a signal.

client (Polarity API) -> collector (metric families) -> shared scrape (coalescing, optional
cache) -> web app (routes) -> threaded HTTP(S) server.
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass
from types import FrameType

import click
from prometheus_client import Metric, ProcessCollector

from polarity_exporter import __version__
from polarity_exporter.client import PolarityClient
from polarity_exporter.collector import PolarityCollector, ScrapeResult
from polarity_exporter.config import Config, ConfigError
from polarity_exporter.httpserver import BoundedServer
from polarity_exporter.memory import release_free_memory
from polarity_exporter.scrapecache import SharedScrape
from polarity_exporter.web import ExporterApp, Landing, bind

log = logging.getLogger("polarity_exporter")


@dataclass
class Exporter:
    """The exporter wired together and bound to its port; serve() starts answering."""

    server: BoundedServer
    app: ExporterApp
    client: PolarityClient
    collector: PolarityCollector
    shared: SharedScrape
    scheme: str

    @property
    def port(self) -> int:
        return int(self.server.server_port)

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
        self.shared.close(wait=False)
        self.collector.close(wait=False)
        self.client.close()


def build_exporter(config: Config) -> Exporter:
    polarity = config.polarity
    security = config.web.security
    if polarity.insecure_skip_verify:
        log.warning("TLS certificate verification of Polarity is disabled",
                    extra={"server": polarity.url})
    client = PolarityClient(polarity)
    collector = PolarityCollector(client, config.collector, config.cache_ttl)
    process = ProcessCollector(registry=None)
    # Concurrent scrapes share one Polarity fetch; --cache.ttl also reuses a recent one.
    shared = SharedScrape(collector.scrape, ttl=config.cache_ttl, max_lifetime=polarity.timeout,
                          late=lambda timeout: collector.build(ScrapeResult(timeout=timeout)))

    def scrape(timeout: float) -> list[Metric]:
        return [*shared(timeout), *process.collect()]

    app = ExporterApp(scrape, telemetry_path=config.web.telemetry_path,
                      default_timeout=polarity.timeout, timeout_offset=config.web.timeout_offset,
                      landing=Landing("Polarity Exporter", __version__, polarity.url),
                      security=security, after_scrape=release_free_memory,
                      encoded=shared.encoded)
    tls = security.ssl_context() if security is not None else None
    try:
        server = bind(app, config.web.host, config.web.port, tls=tls)
    except OSError as exc:
        shared.close(wait=False)
        collector.close(wait=False)
        client.close()
        raise ConfigError(f"cannot listen on {config.web.host}:{config.web.port}: "
                          f"{exc.strerror or exc}") from None
    return Exporter(server, app, client, collector, shared, "https" if tls else "http")


def run(config: Config) -> None:
    """Serve until SIGTERM or SIGINT, then finish in-flight scrapes and log out."""
    exporter = build_exporter(config)
    security = config.web.security
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("shutting down", extra={"signal": signal.Signals(signum).name})
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
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
    stop.wait()
    exporter.close(config.web.shutdown_timeout)

"""Helpers for the hardening tests: a real exporter served in this process, and test certificates.

The exporter is wired by `exporter.build_exporter`, the same code `polarity-exporter` runs,
and answers real HTTP on 127.0.0.1; only the process boundary is skipped, so that dozens of
fault scenarios start in milliseconds instead of a second each. Its log lines are captured in
the exporter's own logfmt format.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from reference import Samples, parse

from polarity_exporter.config import (
    ApiKey,
    CollectorConfig,
    Config,
    Credentials,
    Password,
    PolarityConfig,
    ServerConfig,
)
from polarity_exporter.exporter import Exporter, build_exporter
from polarity_exporter.logs import LogfmtFormatter

TIMEOUT_HEADER = "X-Prometheus-Scrape-Timeout-Seconds"


class LogCapture(logging.Handler):
    """Every record of the exporter's loggers, formatted exactly as the exporter prints them."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(LogfmtFormatter())
        self.lines: list[str] = []
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.lines.append(self.format(record))

    def text(self) -> str:
        return "\n".join(self.lines)

    def matching(self, *needles: str) -> list[str]:
        return [line for line in self.lines if all(n in line for n in needles)]


@dataclass
class Scrape:
    response: requests.Response
    samples: Samples
    elapsed: float

    def value(self, metric: str, **labels: str) -> float | None:
        return self.samples.get(metric, {}).get(frozenset(labels.items()))

    @property
    def up(self) -> float | None:
        return self.value("polarity_up")

    def success(self, collector: str) -> float | None:
        return self.value("polarity_scrape_collector_success", collector=collector)

    def series(self, name: str) -> dict[frozenset[tuple[str, str]], float]:
        return self.samples.get(name, {})


@dataclass
class Running:
    exporter: Exporter
    url: str
    logs: LogCapture
    session: requests.Session = field(default_factory=requests.Session)

    def scrape(self, timeout: float = 2.0, path: str = "/metrics", **kwargs: Any) -> Scrape:
        """GET /metrics (or `path`) as Prometheus does, with its scrape-timeout header."""
        headers = {TIMEOUT_HEADER: str(timeout), **kwargs.pop("headers", {})}
        started = time.monotonic()
        response = self.session.get(f"{self.url}{path}", headers=headers,
                                    timeout=timeout + 5, **kwargs)
        elapsed = time.monotonic() - started
        samples = parse(response.text) if response.status_code == 200 else {}
        return Scrape(response, samples, elapsed)

    def probe(self, target: str, timeout: float = 2.0, **kwargs: Any) -> Scrape:
        """GET /probe?target=NAME as Prometheus does with the README's relabelling."""
        return self.scrape(timeout, "/probe", params={"target": target}, **kwargs)


def password(user: str, secret: str) -> Password:
    return Password(user, secret)


def api_key(key: str) -> ApiKey:
    return ApiKey(key)


@contextmanager
def running_exporter(url: str | None, credentials: Credentials | None, *, timeout: float = 3.0,
                     page_size: int = 200, max_concurrency: int = 10, ca_file: str | None = None,
                     insecure: bool = False, security: Any = None, cache_ttl: float = 0.0,
                     offset: float = 0.5, targets_file: str | None = None,
                     collector: CollectorConfig | None = None, history_limit: int = 100,
                     proxy_url: str | None = None,
                     security_file: str | None = None) -> Iterator[Running]:
    """An exporter bound to a free port on 127.0.0.1, serving until the block ends: for the
    server at `url` on /metrics, and the targets of `targets_file` on /probe."""
    capture = LogCapture()
    logger = logging.getLogger("polarity_exporter")
    previous = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(capture)
    polarity = None
    if url is not None:
        assert credentials is not None
        polarity = PolarityConfig(url=url, credentials=credentials, ca_file=ca_file,
                                  insecure_skip_verify=insecure, timeout=timeout,
                                  page_size=page_size, max_concurrency=max_concurrency,
                                  proxy_url=proxy_url)
    config = Config(
        polarity=polarity,
        collector=collector or CollectorConfig(),
        web=ServerConfig(host="127.0.0.1", port=0, timeout_offset=offset, security=security,
                         security_file=security_file),
        cache_ttl=cache_ttl,
        targets_file=targets_file,
        history_limit=history_limit,
    )
    try:
        exporter = build_exporter(config)
    except BaseException:
        logger.removeHandler(capture)
        logger.setLevel(previous)
        raise
    exporter.serve()
    running = Running(exporter, f"{exporter.scheme}://127.0.0.1:{exporter.port}", capture)
    try:
        yield running
    finally:
        running.session.close()
        exporter.close()
        logger.removeHandler(capture)
        logger.setLevel(previous)


# --- certificates -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Certs:
    ca: Path  # CA certificate that signed server and client
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_client_cert: Path  # signed by a CA the server does not trust
    other_client_key: Path
    self_signed_cert: Path  # a self-signed server certificate, its own trust anchor
    self_signed_key: Path


def make_certs(openssl: str, directory: Path) -> Certs:
    """A throwaway CA, server and client certificates for 127.0.0.1 (EC P-256, 2 days)."""
    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, cwd=directory)

    key_args = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    san = "subjectAltName=IP:127.0.0.1,DNS:localhost"
    for ca in ("ca", "other-ca"):
        run("req", "-x509", *key_args, "-keyout", f"{ca}.key", "-out", f"{ca}.pem",
            "-days", "2", "-subj", f"/CN={ca}")
    (directory / "server.ext").write_text(san + "\n")
    (directory / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name, ca, ext in (("server", "ca", "server.ext"), ("client", "ca", "client.ext"),
                          ("other-client", "other-ca", "client.ext")):
        run("req", *key_args, "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={name}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", ext)
    run("req", "-x509", *key_args, "-keyout", "self.key", "-out", "self.pem", "-days", "2",
        "-subj", "/CN=polarity.test", "-addext", san)
    d = directory
    return Certs(d / "ca.pem", d / "server.pem", d / "server.key", d / "client.pem",
                 d / "client.key", d / "other-client.pem", d / "other-client.key",
                 d / "self.pem", d / "self.key")

"""`--web.config.file`: the Prometheus exporter-toolkit web configuration, read the same way.

Operators of Go exporters already have these files; the same YAML works here:

    tls_server_config: {cert_file | cert, key_file | key, client_ca_file | client_ca,
                        client_auth_type, client_allowed_sans, min_version, max_version}
    http_server_config: {http2, headers}
    basic_auth_users: {username: bcrypt-hash}
    rate_limit: {interval, burst}

The file is read again when it, or a file it names, changes (weblive.py), as the toolkit does.

Unknown keys are an error (a typo must not silently turn security off). Keys the toolkit knows
but this exporter does not implement are an error too, naming the key. Relative paths are
relative to the file's directory, as in the toolkit.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import ssl
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from polarity_exporter import safeyaml
from polarity_exporter.config import ConfigError

TLS_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
                "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
# Python's ssl module verifies any client certificate it asks for, so the toolkit's two modes
# that accept an unverified certificate (RequestClientCert, RequireAnyClientCert) cannot be
# offered honestly; they are rejected rather than silently made stricter or looser.
CLIENT_AUTH = {"NoClientCert": ssl.CERT_NONE, "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
               "RequireAndVerifyClientCert": ssl.CERT_REQUIRED}
# The toolkit allows these response headers only, some with fixed values.
HEADER_VALUES: dict[str, tuple[str, ...]] = {
    "strict-transport-security": (), "x-content-type-options": ("nosniff",),
    "x-frame-options": ("deny", "sameorigin"), "x-xss-protection": (),
    "content-security-policy": (),
}
# Every key the file takes, with what it means: the parser accepts exactly these, and
# docs/endpoint.md's reference is generated from them (docs/generate_references.py).
KEY_DOCS: dict[str, str] = {
    "tls_server_config": "TLS for the endpoint; absent: plain HTTP",
    "tls_server_config.cert_file": "Server certificate (PEM) file; relative paths are relative "
                                   "to this file",
    "tls_server_config.key_file": "Its private key (PEM) file",
    "tls_server_config.cert": "The server certificate as inline PEM, instead of `cert_file`",
    "tls_server_config.key": "The private key as inline PEM, instead of `key_file`; never shown "
                             "in an error",
    "tls_server_config.client_ca_file": "CA bundle that verifies client certificates",
    "tls_server_config.client_ca": "The client CA bundle as inline PEM, instead of "
                                   "`client_ca_file`",
    "tls_server_config.client_auth_type": "`NoClientCert` (default; `RequireAndVerifyClientCert` "
                                          "when a client CA is given), "
                                          "`VerifyClientCertIfGiven` or "
                                          "`RequireAndVerifyClientCert`",
    "tls_server_config.client_allowed_sans": "List: a client certificate must name one of "
                                             "these (DNS, e-mail, IP or URI SAN, exactly); "
                                             "needs `RequireAndVerifyClientCert`",
    "tls_server_config.min_version": "`TLS10`, `TLS11`, `TLS12` (default) or `TLS13`",
    "tls_server_config.max_version": "As `min_version`; default: the newest",
    "http_server_config": "HTTP settings",
    "http_server_config.http2": "`true` or `false`; accepted for the toolkit's files, HTTP/1.1 "
                                "is served either way",
    "http_server_config.headers": "Response headers, of the toolkit's allowed set: "
                                  "`Strict-Transport-Security`, `X-Content-Type-Options` "
                                  "(`nosniff`), `X-Frame-Options` (`deny`, `sameorigin`), "
                                  "`X-XSS-Protection`, `Content-Security-Policy`",
    "basic_auth_users": "Mapping of username to bcrypt hash (cost 4 to 16); every path but "
                        "`/-/healthy` and `/-/ready` then needs one of them",
    "rate_limit": "A token bucket shared by all clients; past it, 429, before authentication",
    "rate_limit.interval": "Go duration (`1s`, `100ms`): one more request allowed per interval; "
                           "`0` is no limit",
    "rate_limit.burst": "Requests allowed at once, 1 to 1000000 (0 only with no interval)",
}


def _section_keys(section: str) -> set[str]:
    return {key.split(".", 1)[1] for key in KEY_DOCS if key.startswith(section + ".")}


_TLS_KEYS = _section_keys("tls_server_config")
_TLS_UNSUPPORTED = {"cipher_suites", "curve_preferences", "prefer_server_cipher_suites"}
_HTTP_KEYS = _section_keys("http_server_config")
_TOP_KEYS = {key for key in KEY_DOCS if "." not in key}
_RATE_LIMIT_KEYS = _section_keys("rate_limit")
# Go durations as the toolkit's rate_limit.interval takes them (time.ParseDuration: "1s",
# "100ms", "1m30s", ".5s", "+1s", "0"; µ as U+00B5 or U+03BC).
_NUMBER = r"(?:\d+\.?\d*|\.\d+)"
_UNITS = r"(ns|us|\u00b5s|\u03bcs|ms|s|m|h)"
_DURATION = re.compile(rf"\+?(?:{_NUMBER}{_UNITS})+|\+?0")
_DURATION_PART = re.compile(rf"({_NUMBER}){_UNITS}")
_SECONDS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6, "ms": 1e-3, "s": 1.0,
            "m": 60.0, "h": 3600.0}
# Go's durations end at 2^63 ns (about 292 years); a longer one is an error there too.
MAX_DURATION = (2**63 - 1) / 1e9
# bcrypt's costs; past 16 a single check takes seconds of CPU (each step doubles it), which
# would let anyone with a wrong password hold the workers. Costs 10-12 are usual.
BCRYPT_COSTS = range(4, 17)
_BCRYPT = re.compile(r"\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}")


@dataclass(frozen=True)
class TLSSettings:
    cert_file: str | None
    key_file: str | None
    client_ca_file: str | None = None
    client_auth_type: str = "NoClientCert"
    min_version: str = "TLS12"
    max_version: str | None = None
    # The toolkit's inline PEM alternatives to the three files (a key is a secret: no repr).
    cert: str | None = None
    key: str | None = field(default=None, repr=False)
    client_ca: str | None = None
    client_allowed_sans: tuple[str, ...] = ()

    @property
    def files(self) -> tuple[str, ...]:
        """The files this TLS setup reads: a change to any of them is a change of config."""
        return tuple(f for f in (self.cert_file, self.key_file, self.client_ca_file) if f)

    def context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = TLS_VERSIONS[self.min_version]
        if self.max_version:
            context.maximum_version = TLS_VERSIONS[self.max_version]
        if self.cert is None and self.key is None:
            assert self.cert_file and self.key_file
            context.load_cert_chain(self.cert_file, self.key_file)
        else:
            _load_inline_chain(context, self)
        if self.client_ca_file:
            context.load_verify_locations(cafile=self.client_ca_file)
        if self.client_ca:
            context.load_verify_locations(cadata=self.client_ca)
        context.verify_mode = CLIENT_AUTH[self.client_auth_type]
        return context

    def allows(self, peer: dict[str, Any] | None) -> bool:
        """client_allowed_sans: the verified client certificate names one of them among its
        DNS names, e-mail addresses, IP addresses or URIs, compared exactly, as the toolkit
        checks. Without a certificate, nothing is allowed (the parser insists on
        RequireAndVerifyClientCert, so this is a second line)."""
        if not self.client_allowed_sans:
            return True
        if not peer:
            return False
        allowed = {_canonical(name) for name in self.client_allowed_sans}
        # Other kinds (dirName, otherName, registeredID) come as tuples or odd text: never
        # compared, so a directory name cannot pass for a DNS name.
        return any(kind in _SAN_KINDS and isinstance(value, str) and _canonical(value) in allowed
                   for kind, value in _pairs(peer.get("subjectAltName")))


_SAN_KINDS = frozenset({"DNS", "email", "IP Address", "URI"})


def _pairs(value: Any) -> list[tuple[Any, Any]]:
    """The (kind, value) pairs of getpeercert()'s subjectAltName, whatever shape it has."""
    if not isinstance(value, tuple | list):
        return []
    return [item for item in value if isinstance(item, tuple) and len(item) == 2]


def _canonical(name: str) -> str:
    """An IP address in one spelling (Python writes IPv6 SANs uncompressed); else as is."""
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return name


def _load_inline_chain(context: ssl.SSLContext, tls: TLSSettings) -> None:
    """Python's ssl loads a certificate chain from files only. The inline PEM goes to an
    anonymous in-memory file (memfd_create, read as /proc/self/fd/N): nothing on a disk, and it
    works on a read-only root filesystem, as the chart runs. Where memfd is missing (not
    Linux), a private temporary directory (0700, files 0600) for the moment of loading."""
    with contextlib.ExitStack() as stack:
        paths = []
        for name, inline, path in (("cert.pem", tls.cert, tls.cert_file),
                                   ("key.pem", tls.key, tls.key_file)):
            if inline is None:
                assert path is not None
                paths.append(path)
            else:
                paths.append(stack.enter_context(_private_file(name, inline)))
        context.load_cert_chain(paths[0], paths[1])


@contextlib.contextmanager
def _private_file(name: str, text: str) -> Iterator[str]:
    """A path to `text` that only this process can read, gone when the block ends."""
    memfd = getattr(os, "memfd_create", None)
    fd = -1
    if memfd is not None and os.path.isdir("/proc/self/fd"):
        try:
            fd = memfd(f"polarity-exporter-{name}", os.MFD_CLOEXEC)
        except OSError:
            fd = -1
    if fd >= 0:
        try:
            data = text.encode("utf-8")
            while data:
                data = data[os.write(fd, data):]
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="polarity-exporter-tls-") as directory:
        target = os.path.join(directory, name)
        handle = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        yield target


@dataclass(frozen=True)
class WebSecurity:
    """What the exporter's own endpoint enforces, as plain data; the web app builds its
    BasicAuth (with its lock and cache of checked credentials) from `basic_auth_users`."""

    tls: TLSSettings | None = None
    basic_auth_users: dict[str, bytes] = field(default_factory=dict, repr=False)
    headers: dict[str, str] = field(default_factory=dict)
    rate_limit: RateLimitSettings | None = None

    def ssl_context(self) -> ssl.SSLContext | None:
        return self.tls.context() if self.tls else None


@dataclass(frozen=True)
class RateLimitSettings:
    """rate_limit: at most `burst` requests at once, refilled one per `interval` seconds."""

    interval: float
    burst: int


def load_web_config(path: str) -> WebSecurity:
    """Read and check the file; any problem is a ConfigError naming the file and the key."""
    where = f"--web.config.file {path}"
    # The targets file's reader: bounded size and depth, a regular file only, no aliases, and
    # no key given twice (PyYAML keeps the last: a second basic_auth_users could empty it).
    document = safeyaml.parse_yaml(safeyaml.read_config(path, where), where)
    base = Path(path).resolve().parent
    try:
        return _parse(document, base)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _mapping(value: Any, name: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ConfigError(f"{name} must be a mapping")
    return value


def _check_keys(section: dict[str, Any], allowed: set[str], name: str,
                unsupported: frozenset[str] | set[str] = frozenset()) -> None:
    for key in section:
        if key in unsupported:
            raise ConfigError(f"{name}.{key} is not supported by polarity-exporter")
        if key not in allowed:
            raise ConfigError(f"unknown key {key!r} in {name}")


def _string(section: dict[str, Any], key: str, name: str) -> str | None:
    value = section.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{name}.{key} must be a string")
    return value


def _parse(document: Any, base: Path) -> WebSecurity:
    top = _mapping(document, "the file")
    _check_keys(top, _TOP_KEYS, "the file")
    tls = _parse_tls(_mapping(top.get("tls_server_config"), "tls_server_config"), base)
    http = _mapping(top.get("http_server_config"), "http_server_config")
    _check_keys(http, _HTTP_KEYS, "http_server_config")
    if not isinstance(http.get("http2", True), bool):
        raise ConfigError("http_server_config.http2 must be true or false")
    headers = _parse_headers(_mapping(http.get("headers"), "http_server_config.headers"))
    users = _parse_users(_mapping(top.get("basic_auth_users"), "basic_auth_users"))
    limit = _parse_rate_limit(_mapping(top.get("rate_limit"), "rate_limit"))
    return WebSecurity(tls=tls, basic_auth_users=users, headers=headers, rate_limit=limit)


def _parse_rate_limit(section: dict[str, Any]) -> RateLimitSettings | None:
    """The toolkit's rate_limit; absent, or a zero interval or burst: no limit."""
    _check_keys(section, _RATE_LIMIT_KEYS, "rate_limit")
    if not section:
        return None
    interval = parse_duration(section.get("interval", "0s"), "rate_limit.interval")
    burst = section.get("burst", 0)
    if isinstance(burst, bool) or not isinstance(burst, int) or not 0 <= burst <= 1_000_000:
        raise ConfigError("rate_limit.burst must be an integer from 0 to 1000000")
    if interval <= 0:
        return None
    if burst == 0:
        # The toolkit's limiter with a burst of 0 refuses every request; that is never meant.
        raise ConfigError("rate_limit.burst must be at least 1 when interval is set (a burst "
                          "of 0 would refuse every request)")
    return RateLimitSettings(interval, burst)


def parse_duration(value: Any, name: str) -> float:
    """A Go duration ("1s", "250ms", "1m30s") in seconds."""
    if value == 0 and not isinstance(value, bool):
        return 0.0
    if not isinstance(value, str) or not _DURATION.fullmatch(value):
        raise ConfigError(f"{name} must be a duration such as 1s, 250ms or 1m30s")
    seconds = sum(float(n) * _SECONDS[unit] for n, unit in _DURATION_PART.findall(value))
    if seconds > MAX_DURATION:
        raise ConfigError(f"{name} is longer than Go's longest duration (about 292 years)")
    return seconds


def _parse_tls(section: dict[str, Any], base: Path) -> TLSSettings | None:
    name = "tls_server_config"
    _check_keys(section, _TLS_KEYS, name, _TLS_UNSUPPORTED)
    files = {key: _string(section, key, name) for key in ("cert_file", "key_file",
                                                          "client_ca_file")}
    cert, key, client_ca = (str(base / f) if f else None for f in files.values())
    inline = {key: _string(section, key, name) for key in ("cert", "key", "client_ca")}
    for given, file_key in zip(inline, files, strict=True):
        if inline[given] and files[file_key]:
            raise ConfigError(f"{name}: give {given} or {file_key}, not both")
    has_cert, has_key = bool(cert or inline["cert"]), bool(key or inline["key"])
    auth_type = _string(section, "client_auth_type", name)
    min_version = _string(section, "min_version", name) or "TLS12"
    max_version = _string(section, "max_version", name)
    sans = _sans(section.get("client_allowed_sans"), name)
    if not has_cert and not has_key:
        if section.keys() - {"cert_file", "key_file", "cert", "key"}:
            raise ConfigError(f"{name} needs cert_file and key_file (or cert and key)")
        return None
    if not has_cert or not has_key:
        raise ConfigError(f"{name} needs both a certificate and a key (cert_file or cert, "
                          "key_file or key)")
    for version, key_name in ((min_version, "min_version"), (max_version, "max_version")):
        if version is not None and version not in TLS_VERSIONS:
            raise ConfigError(f"{name}.{key_name} {version!r} is not one of "
                              f"{', '.join(TLS_VERSIONS)}")
    has_ca = bool(client_ca or inline["client_ca"])
    if auth_type is None:
        # As in the toolkit: a client CA without an explicit type means "verify clients".
        auth_type = "RequireAndVerifyClientCert" if has_ca else "NoClientCert"
    if auth_type not in CLIENT_AUTH:
        raise ConfigError(f"{name}.client_auth_type {auth_type!r} is not supported; use one of "
                          f"{', '.join(CLIENT_AUTH)}")
    if auth_type != "NoClientCert" and not has_ca:
        raise ConfigError(f"{name}.client_ca_file (or client_ca) is required for "
                          f"client_auth_type {auth_type}")
    if sans and auth_type != "RequireAndVerifyClientCert":
        # With VerifyClientCertIfGiven a client could leave its certificate out and pass.
        raise ConfigError(f"{name}.client_allowed_sans needs client_auth_type "
                          "RequireAndVerifyClientCert and a client CA")
    for path in (cert, key, client_ca):
        if path is not None:
            _regular_file(path, name)
    settings = TLSSettings(cert, key, client_ca, auth_type, min_version, max_version,
                           inline["cert"], inline["key"], inline["client_ca"], sans)
    try:
        settings.context()  # fail at start, not on the first connection
    except (OSError, ssl.SSLError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
        raise ConfigError(f"{name}: cannot load the certificate, key or client CA: "
                          f"{reason}") from None
    return settings


def _regular_file(path: str, name: str) -> None:
    """A FIFO or a device named as a certificate would hang the reload: refused at once."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # loading it says why, as for any unreadable file
    if not stat.S_ISREG(mode):
        raise ConfigError(f"{name}: {path} is not a regular file")


def _sans(value: Any, name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{name}.client_allowed_sans must be a list of names")
    return tuple(value)


def _parse_headers(section: dict[str, Any]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for header, value in section.items():
        allowed = HEADER_VALUES.get(header.lower())
        if allowed is None:
            raise ConfigError(f"http_server_config.headers: {header!r} cannot be configured; "
                              f"allowed: {', '.join(HEADER_VALUES)}")
        if not isinstance(value, str) or "\n" in value or "\r" in value:
            raise ConfigError(f"http_server_config.headers.{header} must be a one-line string")
        if allowed and value.lower() not in allowed:
            raise ConfigError(f"http_server_config.headers.{header} must be one of "
                              f"{', '.join(allowed)}")
        headers[header] = value
    return headers


def _parse_users(section: dict[str, Any]) -> dict[str, bytes]:
    users: dict[str, bytes] = {}
    for username, hashed in section.items():
        if ":" in username or not username:
            # Not echoed: "alice:$2b$..." written as one key carries the hash.
            raise ConfigError("basic_auth_users: a username is empty or has a colon")
        if not isinstance(hashed, str) or not _BCRYPT.fullmatch(hashed):
            # Never echo the value: someone may have put a plain password here by mistake.
            raise ConfigError(f"basic_auth_users.{username} is not a bcrypt hash")
        if int(hashed[4:6]) not in BCRYPT_COSTS:
            raise ConfigError(f"basic_auth_users.{username}: bcrypt cost {hashed[4:6]} is outside "
                              f"{BCRYPT_COSTS.start}-{BCRYPT_COSTS.stop - 1}")
        users[username] = hashed.encode()
    return users

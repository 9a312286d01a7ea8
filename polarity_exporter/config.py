"""Validated configuration: what the CLI hands to the rest of the exporter.

Secrets live only in `ApiKey.key` and `Password.password`; both are excluded from `repr` so that a
config object printed in a log line or a traceback never shows them.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import MISSING, dataclass, field, fields
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:  # webconfig needs bcrypt and PyYAML: loaded only when a file is given
    from polarity_exporter.webconfig import WebSecurity

DEFAULT_PORT = 10119


class ConfigError(ValueError):
    """Invalid configuration; the message is one line meant for the operator."""


@dataclass(frozen=True)
class ApiKey:
    key: str = field(repr=False)


@dataclass(frozen=True)
class Password:
    username: str
    password: str = field(repr=False)


Credentials = ApiKey | Password


@dataclass(frozen=True)
class PolarityConfig:
    url: str
    credentials: Credentials
    ca_file: str | None = None
    insecure_skip_verify: bool = False
    timeout: float = 10.0
    page_size: int = 200
    max_concurrency: int = 10
    # An upstream proxy for this server (http or https URL; CONNECT for https servers). It may
    # hold credentials, so it is left out of repr. None: the environment's HTTPS_PROXY/NO_PROXY.
    proxy_url: str | None = field(default=None, repr=False)
    # Per target only (the targets file): None follows the flags (CollectorConfig).
    errors: bool | None = None  # `collectors:` without "errors": no errors request at all
    error_events: bool | None = None


# --- the per-server numbers: one schema for the flags and the targets file ---------------------

_DEFAULTS = {f.name: f.default for f in fields(PolarityConfig) if f.default is not MISSING}
COLLECTORS = ("integrations", "errors")  # the parts of a scrape; integrations is never off
# Prometheus allows scrape timeouts of minutes; past this, a setting is a mistake.
MAX_TIMEOUT = 300.0


@dataclass(frozen=True)
class Setting:
    """A per-server number: the targets file's key, the flag `--polarity.<key>` (dashes for
    underscores), its type and inclusive range, PolarityConfig's default, and the one message
    both give for a bad value."""

    key: str
    kind: type[int] | type[float]
    low: float
    high: float
    help: str

    @property
    def flag(self) -> str:
        return "--polarity." + self.key.replace("_", "-")

    @property
    def default(self) -> int | float:
        value = _DEFAULTS[self.key]
        assert isinstance(value, int | float)
        return value

    @property
    def rule(self) -> str:
        kind = "an integer" if self.kind is int else "a number"
        return f"must be {kind} from {self.low:g} to {self.high:g}"

    def check(self, value: object) -> int | float:
        """The value as this setting's type, or ConfigError(rule): a bool, text, a float for an
        integer, NaN, infinities and integers beyond a float's range are all refused."""
        if isinstance(value, bool) or not isinstance(value, int | float) or \
                (self.kind is int and not isinstance(value, int)):
            raise ConfigError(self.rule)
        try:
            number = self.kind(value)
        except OverflowError:
            raise ConfigError(self.rule) from None
        if not self.low <= number <= self.high:  # False for NaN too
            raise ConfigError(self.rule)
        return number

    def parse(self, text: str) -> int | float:
        """A flag's or an environment variable's text, checked as `check` does."""
        try:
            value: int | float = int(text) if self.kind is int else float(text)
        except ValueError:
            raise ConfigError(self.rule) from None
        return self.check(value)


# The keys of a target in the targets file: text, a switch, and the numbers above.
TARGET_STRINGS = ("url", "username", "username_file", "password", "password_file", "api_key",
                  "api_key_file", "ca_file", "proxy_url")
SETTINGS = (
    Setting("timeout", float, 0.1, MAX_TIMEOUT,
            "Seconds: connect and read timeout, and the scrape deadline when Prometheus sends no "
            "X-Prometheus-Scrape-Timeout-Seconds header."),
    Setting("page_size", int, 1, 10000, "Integrations per page when listing."),
    Setting("max_concurrency", int, 1, 64, "Pages of integrations fetched at once."),
)


@dataclass(frozen=True)
class CollectorConfig:
    max_codes: int = 20
    max_label_length: int = 128
    # Integration ids that only the errors endpoint names (not in the listing): at most this many
    # series; the rest fold into integration_id="other".
    max_orphan_ids: int = 100
    errors: bool = True  # --no-collector.errors: no errors request, no metrics that need it
    error_events: bool = False  # --log.error-events


@dataclass(frozen=True)
class ServerConfig:
    """The exporter's own HTTP endpoint (the TLS and auth file's content is in `security`)."""

    host: str = ""
    port: int = DEFAULT_PORT
    telemetry_path: str = "/metrics"
    timeout_offset: float = 0.5
    shutdown_timeout: float = 10.0  # seconds scrapes in flight may take to finish on SIGTERM
    security: WebSecurity | None = None  # from --web.config.file: TLS and basic auth
    security_file: str | None = None  # that file, read again when it changes (weblive.py)


@dataclass(frozen=True)
class Config:
    polarity: PolarityConfig | None  # --polarity.url: the server /metrics serves
    collector: CollectorConfig = CollectorConfig()
    web: ServerConfig = ServerConfig()
    cache_ttl: float = 0.0  # seconds a finished scrape's result may be reused; 0: never
    # --config.file: the named targets /probe serves, read at start and on every reload (so
    # the path, not its content, is configuration).
    targets_file: str | None = None
    history_limit: int = 100  # recent scrapes kept for the landing page (history.py)


def normalize_url(url: str) -> str:
    """Check a Polarity base URL and strip any trailing slash. Errors never repeat a password
    given in the URL."""
    try:
        parts = urlsplit(url.strip())
        hostname, _ = parts.hostname, parts.port  # both raise ValueError when malformed
    except ValueError as exc:
        raise ConfigError(f"--polarity.url {redact_url(url)!r} is not a valid URL "
                          f"({exc})") from None
    if parts.username or parts.password or "@" in parts.netloc:
        # A password in the URL would end up in process arguments and logs.
        raise ConfigError("--polarity.url must not contain credentials; use the credential flags")
    if parts.scheme not in ("http", "https") or not hostname:
        raise ConfigError(f"--polarity.url {redact_url(url)!r} is not an http(s) URL with a "
                          "host")
    if parts.query or parts.fragment:
        raise ConfigError(f"--polarity.url {redact_url(url)!r} must not have a query or "
                          "fragment")
    return url.strip().rstrip("/")


def redact_url(url: str) -> str:
    """The URL with anything before an "@" in its authority replaced, for messages."""
    scheme, sep, rest = url.strip().partition("://")
    if not sep:
        scheme, rest = "", scheme
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        authority = "***@" + authority.rsplit("@", 1)[1]
    return f"{scheme}{sep}{authority}{slash}{path}"[:200]


def check_proxy_url(url: str, named: str) -> str:
    """An upstream proxy URL: http:// or https://, a host, an optional port and credentials,
    nothing else. Messages never quote it: it may carry a password."""
    try:
        parts = urlsplit(url.strip())
        hostname, _ = parts.hostname, parts.port
    except ValueError:
        raise ConfigError(f"{named} is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not hostname:
        raise ConfigError(f"{named} must be an http:// or https:// URL with a host (socks is "
                          "not supported)")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(f"{named} must be scheme://[user:password@]host[:port], without a "
                          "path or query")
    if any(ch.isspace() or not ch.isprintable() for ch in url.strip()):
        raise ConfigError(f"{named} must not contain spaces or control characters")
    return url.strip().rstrip("/")


def has_credentials(url: str) -> bool:
    return "@" in urlsplit(url.strip()).netloc


_PRINTABLE = re.compile(r"[\x21-\x7e]+")
_LISTEN = re.compile(r"^(?:\[(?P<v6>[0-9a-fA-F:.]+)\]|(?P<host>[^:\[\]]*)):(?P<port>\d{1,5})$")


def parse_listen_address(address: str) -> tuple[str, int]:
    """`host:port`, `:port` or `[v6]:port`, as Go exporters accept it."""
    match = _LISTEN.match(address.strip())
    if not match:
        raise ConfigError(f"--web.listen-address {address!r} is not host:port")
    port = int(match["port"])
    if not 0 < port < 65536:
        raise ConfigError(f"--web.listen-address {address!r}: port must be 1-65535")
    return match["v6"] or match["host"] or "", port


# Secret files are checked to be regular files of at most this size before they are read:
# `--polarity.password-file /dev/zero` must fail, not fill the memory.
MAX_SECRET_BYTES = 64 << 10


def check_regular_file(path: str, limit: int, named: str) -> None:
    """Raise unless `path` is a regular file (a symlink to one, as in a Kubernetes Secret
    volume, is fine) of at most `limit` bytes; `named` says which file in messages."""
    try:
        info = os.stat(path)
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "invalid path"
        raise ConfigError(f"cannot read {named}: {reason}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"{named} is not a regular file")
    if info.st_size > limit:
        raise ConfigError(f"{named} is larger than {limit} bytes")


def read_secret_file(path: str, named: str) -> str:
    """A secret file's content (a regular file of at most MAX_SECRET_BYTES, UTF-8), without
    the trailing newline editors add. `named` says which file: the targets file's messages
    never name the path, as a password pasted where its file's path belongs would show.

    Opened without blocking and checked on the open file: a FIFO swapped in after a check of
    the path would otherwise block the (re)load in open() for good."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "invalid path"
        raise ConfigError(f"cannot read {named}: {reason}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # before fdopen, which refuses directories
            raise ConfigError(f"{named} is not a regular file")
        data = os.read(fd, MAX_SECRET_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read {named}: {exc.strerror or 'read error'}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_SECRET_BYTES:  # st_size can lie (/proc files say 0)
        raise ConfigError(f"{named} is larger than {MAX_SECRET_BYTES} bytes")
    try:
        value = data.decode("utf-8").rstrip("\r\n")
    except ValueError:
        raise ConfigError(f"cannot read {named}: not UTF-8 text") from None
    if not value:
        raise ConfigError(f"{named} is empty")
    return value


def choose_credentials(
    *,
    api_key: str | None,
    api_key_file: str | None,
    username: str | None,
    password: str | None,
    password_file: str | None,
) -> Credentials:
    """Pick exactly one kind of credential; reject ambiguous or partial configurations."""
    if api_key_file:
        api_key = read_secret_file(api_key_file, f"--polarity.api-key-file {api_key_file}")
    if password_file:
        password = read_secret_file(password_file, f"--polarity.password-file {password_file}")
    # Secrets made with `echo` into a file, an environment variable or a Kubernetes Secret end
    # in a newline: never part of a key or password.
    api_key = api_key.strip() if api_key else api_key
    password = password.rstrip("\r\n") if password else password
    if api_key and not _PRINTABLE.fullmatch(api_key):
        raise ConfigError("the API key has characters an HTTP header cannot carry (spaces, "
                          "control or non-ASCII characters)")
    has_key = bool(api_key)
    has_password = bool(username) or bool(password)
    if has_key and has_password:
        raise ConfigError("give either an API key or a username and password, not both")
    if has_key:
        assert api_key
        return ApiKey(api_key)
    if not has_password:
        raise ConfigError(
            "no credentials: set --polarity.api-key-file (or POLARITY_API_KEY), or "
            "--polarity.username with --polarity.password-file (or POLARITY_PASSWORD)"
        )
    if not username:
        raise ConfigError("a password was given but no --polarity.username")
    if not password:
        raise ConfigError(
            f"no password for user {username!r}: set --polarity.password-file or POLARITY_PASSWORD"
        )
    return Password(username, password)


TARGET_KEYS = (*TARGET_STRINGS, "insecure_skip_verify", "collectors", "error_events",
               *(setting.key for setting in SETTINGS))
# What each key of a target means, for the reference in docs/configuration.md (generated by
# docs/generate_references.py; a key without an entry here fails a test): the flag or environment
# variable it mirrors, its default, and its value. The numbers come from SETTINGS.
TARGET_KEY_DOCS: dict[str, tuple[str, str, str]] = {
    "url": ("--polarity.url", "required", "`http://` or `https://` base URL with a host; no "
            "credentials, query or fragment, no spaces. A trailing `/` is dropped"),
    "api_key_file": ("--polarity.api-key-file", "", "File holding an API key; surrounding "
                     "whitespace is dropped"),
    "api_key": ("POLARITY_API_KEY", "", "The API key inline"),
    "username": ("--polarity.username", "", "Account for password login"),
    "username_file": ("", "", "File holding the username (as a Kubernetes Secret mounts it); "
                      "its trailing newline is dropped"),
    "password_file": ("--polarity.password-file", "", "File holding the password; its trailing "
                      "newline is dropped"),
    "password": ("POLARITY_PASSWORD", "", "The password inline"),
    "ca_file": ("--polarity.ca-file", "the default CAs", "PEM bundle that signed the server's "
                "certificate; loaded when the file is read"),
    "insecure_skip_verify": ("--polarity.insecure-skip-verify", "`false`", "`true` or `false` "
                             "(a YAML boolean, not a string)"),
    "proxy_url": ("--polarity.proxy-url", "the environment's", "Upstream proxy, as the flag; "
                  "may hold credentials (keep the file secret)"),
    "collectors": ("--no-collector.errors", "as the flag", "List of the parts to run: "
                   "`[integrations, errors]`, or `[integrations]` for status only"),
    "error_events": ("--log.error-events", "as the flag", "`true` or `false`: log this "
                     "target's error records as events"),
    **{setting.key: (setting.flag, f"`{setting.default:g}`",
                     f"{setting.help} Must be {setting.rule.removeprefix('must be ')}")
       for setting in SETTINGS},
}

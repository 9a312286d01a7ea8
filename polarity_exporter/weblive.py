"""The `--web.config.file` as in effect: read again when it changes, as exporter-toolkit does,
and the state built from it (TLS context, basic-auth checker, rate limiter).

The toolkit reads its file on every request, so a certificate that cert-manager rotates on disk
is used from the next connection on, without a restart. Here each request and each new TLS
connection looks at the file and at the certificate files it names (os.stat: size, mtime,
inode; a few microseconds), and reads them again only when one changed:

    in effect (version n) --a file changed--> read + check, no lock held --ok--> version n+1
                                                        |
                                                        +--invalid--> version n kept; one error
                                                                      line per change

A change between TLS and plain HTTP cannot take effect on a listening socket: it is refused
like an invalid file (restart to apply it). What did not change keeps its state: the cache of
verified basic-auth credentials and the rate limiter's bucket.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from polarity_exporter.basicauth import BasicAuth
from polarity_exporter.config import ConfigError
from polarity_exporter.webconfig import RateLimitSettings, WebSecurity, load_web_config

log = logging.getLogger(__name__)

Stamp = tuple[tuple[int, int, int, int], ...]


class RateLimiter:
    """A token bucket: `burst` requests at once, one more every `interval` seconds (Go's
    rate.NewLimiter(rate.Every(interval), burst), which the toolkit uses)."""

    def __init__(self, settings: RateLimitSettings,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens = float(settings.burst)
        self._at = clock()

    def allow(self) -> bool:
        now = self._clock()
        with self._lock:
            refill = (now - self._at) / self.settings.interval
            self._tokens = min(float(self.settings.burst), self._tokens + refill)
            self._at = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            return False


@dataclass(frozen=True)
class WebState:
    """One version of the file, with what is built from it."""

    security: WebSecurity
    context: ssl.SSLContext | None
    basic_auth: BasicAuth | None
    limiter: RateLimiter | None


def _stamp(paths: tuple[str, ...]) -> Stamp:
    stamps = []
    for path in paths:
        try:
            info = os.stat(path)
            stamps.append((info.st_size, info.st_mtime_ns, info.st_ino, info.st_ctime_ns))
        except OSError:
            stamps.append((-1, -1, -1, -1))
    return tuple(stamps)


def _watched(path: str | None, security: WebSecurity) -> tuple[str, ...]:
    files = security.tls.files if security.tls is not None else ()
    return ((path,) if path else ()) + files


class LiveWebConfig:
    """The web config in effect; `current()` is called for every request and new connection."""

    def __init__(self, path: str | None, first: WebSecurity) -> None:
        self.path = path  # None: given in code (tests), never read again
        self._lock = threading.Lock()  # guards the fields below; never held across I/O
        self._state = _build(first, None)
        self._stamp = _stamp(_watched(path, first))
        self._reading = False  # one reader at a time; the others use the version in effect

    @property
    def tls(self) -> bool:
        return self._state.security.tls is not None

    def current(self) -> WebState:
        with self._lock:
            state, watched, seen = self._state, self._stamp, self._reading
        if self.path is None or seen:
            return state
        stamp = _stamp(_watched(self.path, state.security))
        if stamp == watched:
            return state
        with self._lock:
            if self._reading:
                return self._state
            self._reading = True
        try:
            return self._reload(stamp)
        finally:
            with self._lock:
                self._reading = False

    def _reload(self, stamp: Stamp) -> WebState:
        assert self.path is not None
        old = self._state
        try:
            security = load_web_config(self.path)
            if (security.tls is None) != (old.security.tls is None):
                raise ConfigError("switching between TLS and plain HTTP needs a restart")
            # Stamps are always taken before the reads they describe: a file written while it
            # is read then differs from its stamp, and is read again on the next request. The
            # config file's is `stamp`; certificate files it newly names are stamped here,
            # before _build reads them.
            watched = _watched(self.path, security)
            if watched != _watched(self.path, old.security):
                stamp = stamp[:1] + _stamp(watched[1:])
            state = _build(security, old)
        except Exception as exc:  # whatever the file holds, the server goes on
            reason = str(exc) if isinstance(exc, ConfigError | OSError | ssl.SSLError) \
                else f"cannot be used ({type(exc).__name__})"
            log.error("web config reload failed; keeping the one in effect",
                      extra={"file": self.path, "err": reason})
            with self._lock:
                self._stamp = stamp  # said once per change, not on every request
            return old
        with self._lock:
            self._state = state
            self._stamp = stamp
        log.info("web config reloaded", extra={"file": self.path})
        return state

    def context(self) -> ssl.SSLContext:
        """The TLS context for a new connection (httpserver.py)."""
        context = self.current().context
        assert context is not None
        return context

    def allows_peer(self, peer: dict[str, object] | None) -> bool:
        """client_allowed_sans, for a connection's verified client certificate."""
        tls = self.current().security.tls
        return tls is None or tls.allows(peer)


def _build(security: WebSecurity, old: WebState | None) -> WebState:
    """The state of a version; what did not change is kept from the old one."""
    context = security.ssl_context()
    auth = None
    if security.basic_auth_users:
        same = old is not None and old.basic_auth is not None and \
            old.security.basic_auth_users == security.basic_auth_users
        auth = old.basic_auth if same and old is not None else BasicAuth(security.basic_auth_users)
    limiter = None
    if security.rate_limit is not None:
        same = old is not None and old.limiter is not None and \
            old.limiter.settings == security.rate_limit
        limiter = old.limiter if same and old is not None else RateLimiter(security.rate_limit)
    return WebState(security, context, auth, limiter)

"""HTTP to one Polarity server: the session, TLS, and one request inside the deadline.

Every byte of an exchange (connect, TLS handshake, status line, headers, chunk sizes, body, error
bodies) is held to the scrape deadline: the exchange's sockets are registered with a deadline
`Guard` (deadline.py), which cuts them when the deadline passes. Socket timeouts remain only as
the idle limit between two bytes (--polarity.timeout). Bodies are read by bodies.py; retries and
429s are decided by retries.py.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from typing import Any
from urllib.parse import quote, quote_plus, unquote, urlsplit

import requests
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from polarity_exporter.bodies import error_detail
from polarity_exporter.config import Password, PolarityConfig
from polarity_exporter.deadline import WATCHDOG, Deadline, guarding, watch_current
from polarity_exporter.errors import (
    DeadlineExceeded,
    PolarityError,
    describe_exception,
    one_line,
    scrub,
)
from polarity_exporter.retries import RateLimit, RetryPolicy

log = logging.getLogger(__name__)

JSONAPI = "application/vnd.api+json"


# --- connections that register their sockets with the deadline guard ---------------------------

class _Guarded:
    """Registers the connection's socket with this thread's deadline guard."""

    sock: Any

    def _new_conn(self) -> Any:
        sock = super()._new_conn()  # type: ignore[misc]
        watch_current(sock)  # before the TLS handshake, which reads from this socket
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:
        watch_current(self.sock)  # a kept-alive connection: already connected
        super().request(*args, **kwargs)  # type: ignore[misc]


class _GuardedHTTPConnection(_Guarded, HTTPConnection):
    pass


class _GuardedHTTPSConnection(_Guarded, HTTPSConnection):
    pass


class _GuardedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


_GUARDED_POOLS = {"http": _GuardedHTTPPool, "https": _GuardedHTTPSPool}


class _GuardedAdapter(requests.adapters.HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _GUARDED_POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = _GUARDED_POOLS
        return manager


class _Bearer(requests.auth.AuthBase):
    # An explicit auth object also stops requests from applying ~/.netrc over our header.
    def __init__(self, token: str | None) -> None:
        self._token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        if self._token:
            request.headers["Authorization"] = f"Bearer {self._token}"
        return request


def redirect_note(response: requests.Response, scrub: Callable[[str], str]) -> str:
    """" to <scheme://host/path>" for a redirect: where Polarity sent us (query dropped: it may
    carry a token; secrets scrubbed before the host is lower-cased and the text cut)."""
    location = response.headers.get("Location")
    if not location:
        return ""
    try:
        parts = urlsplit(one_line(scrub(location)))
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return " to an invalid Location"
    target = f"{parts.scheme}://{host}{port}{parts.path}" if parts.scheme else parts.path
    return f" to {target[:200]!r}"


def _exchange_line(method: str, path: str, params: dict[str, str] | None, outcome: str,
                   response: requests.Response | None, seconds: float) -> str:
    """One request for the fetch's log: never a header or a request body (credentials)."""
    query = "?" + "&".join(f"{k}={v}" for k, v in params.items()) if params else ""
    read = 0
    if response is not None:
        with suppress(Exception):  # urllib3: bytes read off the wire, before decompression
            read = int(response.raw.tell())
    return f"{method} {path}{query} -> {outcome}, {read} bytes, {seconds * 1000:.0f} ms"


# --- the transport ----------------------------------------------------------------------------

class Transport:
    """Requests to one Polarity server on a shared keep-alive session; safe across threads."""

    def __init__(self, config: PolarityConfig) -> None:
        self.config = config
        self.base_url = config.url
        self.rate_limit = RateLimit()
        self.retry = RetryPolicy()
        self._session = requests.Session()
        self._session.headers.update({"Content-Type": JSONAPI, "Accept": JSONAPI,
                                      "User-Agent": "polarity-exporter"})
        # The environment's proxy settings (HTTPS_PROXY, NO_PROXY, …) are read once, for this
        # one server: with trust_env, requests reads and parses the environment again on every
        # request (hundreds of lookups each). trust_env also brought ~/.netrc and
        # REQUESTS_CA_BUNDLE, which must not apply here anyway.
        # An explicit proxy_url (--polarity.proxy-url, or the target's) replaces them, NO_PROXY
        # included, as Go's http.ProxyURL does.
        self._session.proxies = requests.utils.get_environ_proxies(config.url) \
            if config.proxy_url is None else {"http": config.proxy_url,
                                              "https": config.proxy_url}
        self._session.trust_env = False
        # Passed on every request, not set on the session: requests lets REQUESTS_CA_BUNDLE or
        # CURL_CA_BUNDLE in the environment override a session's verify, which would silently
        # replace --polarity.ca-file and re-enable verification under --insecure-skip-verify.
        self._verify: str | bool = config.ca_file or not config.insecure_skip_verify
        # What this exporter sends that a server or proxy could echo in its error text.
        self._secrets = _sent_secrets(config, self._session.proxies.values())
        self._tokens: deque[tuple[str, ...]] = deque(maxlen=4)  # the last few session tokens
        adapter = _GuardedAdapter(pool_connections=1, pool_maxsize=config.max_concurrency + 2)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)

    @contextmanager
    def exchange(self, method: str, path: str, deadline: Deadline, what: str, *,
                 token: str | None, params: dict[str, str] | None = None,
                 json_body: Any = None) -> Iterator[requests.Response]:
        """One HTTP exchange, streamed: the response is readable inside the block, every byte
        of it within the deadline. Connection failures become PolarityError."""
        self.rate_limit.wait(deadline, what)
        remaining = deadline.check(what)
        guard = WATCHDOG.arm(deadline)
        response: requests.Response | None = None
        started = time.monotonic()
        outcome = "no answer"
        try:
            with guarding(guard):
                response = self._request(method, path, deadline, what, token, params,
                                         json_body, connect_timeout=remaining)
            outcome = f"HTTP {response.status_code}"
            if guard.fired:
                # Cut while the headers arrived: http.client takes the end of the stream for
                # the end of the headers, so what looks like an answer is a fragment.
                deadline.check(what, "the response headers did not arrive in time")
            if response.status_code == 429:  # every later request of this server waits
                self.rate_limit.record(response)
                wait = one_line(self.scrub(response.headers.get("Retry-After", "-")))[:40]
                outcome += f", Retry-After {wait}"
            yield response
        except PolarityError as exc:
            outcome = f"{outcome}: {self.scrub(str(exc))}"
            raise
        finally:
            guard.disarm()  # before the connection can go back to the pool
            if response is not None:
                response.close()
            if deadline.log is not None:
                deadline.note(_exchange_line(method, path, params, outcome, response,
                                             time.monotonic() - started))

    def remember_token(self, token: str) -> None:
        """A session token Polarity issued: never repeated from a server's error text."""
        self._tokens.append(_forms([token]))

    def scrub(self, text: str) -> str:
        """`text`, as a server or proxy wrote it, with what this transport sent redacted."""
        # tuple() copies the deque in one step under the GIL: a login on another thread may
        # append to it meanwhile (iterating it directly raised "deque mutated").
        tokens = tuple(self._tokens)
        return scrub(text, (*self._secrets, *(form for forms in tokens for form in forms)))

    def _request(self, method: str, path: str, deadline: Deadline, what: str,
                 token: str | None, params: dict[str, str] | None, json_body: Any, *,
                 connect_timeout: float) -> requests.Response:
        try:
            return self._session.request(
                method, self.base_url + path, params=params,
                data=None if json_body is None else json.dumps(json_body),
                auth=_Bearer(token), timeout=(min(self.config.timeout, connect_timeout),
                                              self.config.timeout),
                stream=True, allow_redirects=False, verify=self._verify)
        except requests.RequestException as exc:
            deadline.check(what, f"no answer from {self.base_url}")
            raise PolarityError(f"{what}: cannot reach {self.base_url}: "
                                f"{describe_exception(exc, self.scrub)}") from None
        except (ValueError, UnicodeError) as exc:
            # http.client refusing a header value: its message quotes the header, which may be
            # the credential, so only the kind of error is named.
            raise PolarityError(f"{what}: the request could not be sent "
                                f"({type(exc).__name__} while building it)") from None

    def failure(self, response: requests.Response, deadline: Deadline, what: str) -> str:
        """"HTTP <status>[ redirect to …][: detail]" for an answer that is not a success."""
        status = response.status_code
        if 300 <= status < 400:
            return f"HTTP {status} redirect{redirect_note(response, self.scrub)}"
        detail = error_detail(response, deadline, what, self.scrub)
        return f"HTTP {status}" + (f": {detail}" if detail else "")

    def close(self) -> None:
        self._session.close()


def _sent_secrets(config: PolarityConfig, proxies: Iterable[str]) -> tuple[str, ...]:
    """The password or API key, and each proxy's credentials as sent: as written, decoded, and
    as the Basic value of Proxy-Authorization."""
    credentials = config.credentials
    secrets = [credentials.password if isinstance(credentials, Password) else credentials.key]
    for proxy in {config.proxy_url, *proxies} - {None}:
        try:
            parts = urlsplit(str(proxy))
            parts.port  # noqa: B018 - raises ValueError for a malformed proxy, as requests will
        except ValueError:
            continue  # requests refuses it on the first request, with a message of its own
        if parts.password:
            user, password = unquote(parts.username or ""), unquote(parts.password)
            secrets += [parts.password, password,
                        base64.b64encode(f"{user}:{password}".encode()).decode()]
    return _forms(secrets)


def _forms(secrets: Iterable[str]) -> tuple[str, ...]:
    """Each secret, and how it reads escaped in a URL (a Location that quotes the request), in
    JSON, in a URL quoting the JSON login body, with its whitespace runs as one space (text put
    on one line), in a repr (an exception quoting a status line), or as UTF-8 read as Latin-1
    (http.client reads headers so); longest first, so that no form is left half replaced."""
    variants = {variant for secret in secrets
                for variant in (secret, " ".join(secret.split()),
                                secret.encode("utf-8", "replace").decode("latin-1"))}
    forms = {form for secret in variants
             for escaped in (json.dumps(secret)[1:-1],)
             for form in (secret, quote(secret, safe=""), quote_plus(secret), escaped,
                          quote(escaped, safe=""), quote_plus(escaped), repr(secret)[1:-1])}
    return tuple(sorted(forms, key=len, reverse=True))


__all__ = ["JSONAPI", "DeadlineExceeded", "Transport", "redirect_note"]

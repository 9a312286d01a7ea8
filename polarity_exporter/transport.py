"""HTTP to one Polarity server: the session, TLS, one request inside the deadline, bounded bodies,
and the retry and rate-limit policies.

Every byte of an exchange (connect, TLS handshake, status line, headers, chunk sizes, body, error
bodies) is held to the scrape deadline: the exchange's sockets are registered with a deadline
`Guard` (deadline.py), which cuts them when the deadline passes. Socket timeouts remain only as
the idle limit between two bytes (--polarity.timeout).
"""

from __future__ import annotations

import codecs
import json
import logging
import math
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import requests
import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from polarity_exporter.config import PolarityConfig
from polarity_exporter.deadline import WATCHDOG, Deadline, guarding, watch_current
from polarity_exporter.errors import (
    DeadlineExceeded,
    PolarityError,
    ProtocolError,
    RateLimitedError,
)
from polarity_exporter.jsondecode import StreamGuard

log = logging.getLogger(__name__)

JSONAPI = "application/vnd.api+json"
# An error body is read only for its `detail`: a few KB hold it; the rest is never read.
ERROR_BODY_BYTES = 4096
# A login or refresh answer holds a token and little else.
TOKEN_BODY_BYTES = 64 * 1024
READ_BYTES = 64 * 1024
# What a streaming parser behind a StreamGuard is given at once.
STREAM_SLICE = 8 * 1024
# Retry-After beyond this is clamped: a server asking for hours (or `inf`) must not stop the
# exporter from ever asking again.
MAX_RETRY_AFTER = 600.0


def one_line(text: str) -> str:
    return " ".join(text.split())


_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-f]+>:?\s*")
_ERRNO = re.compile(r"\[Errno -?\d+\]\s*([^'\"\)]+)")


def describe_exception(exc: BaseException) -> str:
    """A short reason for a requests/urllib3 exception, without object reprs or URLs twice."""
    text = str(exc)
    if isinstance(exc, requests.exceptions.SSLError) or "CERTIFICATE_VERIFY_FAILED" in text:
        if "CERTIFICATE_VERIFY_FAILED" in text:
            return "TLS certificate verify failed (set --polarity.ca-file to the server's CA)"
        return "TLS handshake failed"
    timeouts = (requests.exceptions.Timeout, urllib3.exceptions.TimeoutError, TimeoutError)
    if isinstance(exc, timeouts):
        return "timed out"
    if any(marker in text for marker in ("Failed to resolve", "Name or service not known",
                                          "Temporary failure in name resolution",
                                          "nodename nor servname")):
        return "DNS lookup failed"
    errno = _ERRNO.search(text)
    if errno:
        return errno.group(1).strip()
    return one_line(_OBJECT_REPR.sub("", text))[:200] or type(exc).__name__


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


# --- bodies -----------------------------------------------------------------------------------

class BodyReader:
    """File-like view of a streamed response body, bounded in size, inside the deadline.

    The deadline guard cuts the socket when time is up; a read that fails then is reported as
    the deadline, not as a broken connection.
    """

    def __init__(self, response: requests.Response, deadline: Deadline, what: str, *,
                 limit: int, repair_utf8: bool = False, guard: StreamGuard | None = None) -> None:
        self._raw = response.raw
        self._raw.decode_content = True  # urllib3 bounds each decoded read to what was asked
        self._deadline = deadline
        self._what = what
        self._limit = limit
        # The streaming JSON parser rejects a whole body for one invalid UTF-8 byte; replacing
        # such bytes with U+FFFD keeps every other record. Done in read(), what the streaming
        # parser calls: bodies read whole (read_up_to) are decoded by their callers.
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace") if repair_utf8 else None
        self._guard = guard
        self._slice = STREAM_SLICE if guard is not None else READ_BYTES
        self._replay = memoryview(b"")
        self.total = 0

    def read(self, size: int = -1) -> bytes:
        if size == 0:  # ijson probes the stream's type with read(0)
            return b""
        if not self._replay:
            self._replay = memoryview(self._read_raw(READ_BYTES))
        # Handed out in slices: the guard's bound on nesting depends on what the parser is
        # given at once (see StreamGuard).
        step = min(size if size > 0 else READ_BYTES, self._slice)
        chunk, self._replay = bytes(self._replay[:step]), self._replay[step:]
        if self._utf8 is not None:
            chunk = self._repair(chunk, self._utf8)
        if self._guard is not None:
            self._guard.check(chunk)
        return chunk

    def _read_raw(self, size: int) -> bytes:
        self._deadline.check(self._what)
        try:
            chunk: bytes = self._raw.read1(min(size, READ_BYTES))
        except (urllib3.exceptions.HTTPError, requests.RequestException, OSError) as exc:
            self._deadline.check(self._what, "the response body did not arrive in time")
            raise PolarityError(f"{self._what}: reading the response failed: "
                                f"{describe_exception(exc)}") from None
        if not chunk:
            # A cut socket reads as the end of the body: tell the deadline from a short body.
            self._deadline.check(self._what, "the response body did not arrive in time")
        self.total += len(chunk)
        if self.total > self._limit:
            raise ProtocolError(f"{self._what}: response larger than {self._limit} bytes")
        return chunk

    @staticmethod
    def _repair(chunk: bytes, decoder: codecs.IncrementalDecoder) -> bytes:
        # ASCII needs no work unless a multi-byte sequence is pending from the last chunk.
        if chunk and chunk.isascii() and not decoder.getstate()[0]:
            return chunk
        return decoder.decode(chunk, final=not chunk).encode("utf-8")

    def read_up_to(self, limit: int) -> tuple[bytes, bool]:
        """Up to `limit` bytes; and whether that was the whole body."""
        chunks: list[bytes] = []
        size = 0
        while size < limit:
            chunk = self._read_raw(min(READ_BYTES, limit - size))
            if not chunk:
                return b"".join(chunks), True
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks), False

    def read_all(self) -> bytes:
        """The whole body; ProtocolError past the reader's limit."""
        body, _ = self.read_up_to(self._limit + 1)
        return body

    def replay(self, data: bytes) -> None:
        """Serve `data` (already read) before reading on: a body read ahead, then streamed."""
        self._replay = memoryview(data)


def check_json(response: requests.Response, what: str) -> None:
    content_type = response.headers.get("Content-Type", "")
    if "json" not in content_type.lower():
        raise ProtocolError(f"{what}: expected JSON, got Content-Type "
                            f"{one_line(content_type)[:80]!r}")


def error_detail(response: requests.Response, deadline: Deadline, what: str) -> str:
    """`errors[0].detail` (or the nested `errors[0].meta.errors[0].detail`, or `title`) of an
    error body, read only up to ERROR_BODY_BYTES and within the deadline; "" if none."""
    try:
        head, _ = BodyReader(response, deadline, what, limit=ERROR_BODY_BYTES) \
            .read_up_to(ERROR_BODY_BYTES)
    except PolarityError:
        return ""
    try:
        first = json.loads(head.decode("utf-8", errors="replace"))["errors"][0]
        nested = first.get("meta", {}).get("errors", [{}])[0].get("detail") \
            if isinstance(first.get("meta"), dict) else None
        detail = first.get("detail") or nested or first.get("title")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError, RecursionError):
        return ""
    return one_line(str(detail))[:200] if isinstance(detail, (str, int)) and detail else ""


# --- rate limits and retries ------------------------------------------------------------------

def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds a Retry-After header asks for (delta-seconds or an HTTP date), clamped to
    [0, MAX_RETRY_AFTER]; None when absent or unreadable."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        try:
            date = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        seconds = date.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds):
        return None
    return min(MAX_RETRY_AFTER, max(0.0, seconds))


class RateLimit:
    """Polarity's Retry-After, honoured by every request of one client until it passes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._until = 0.0  # monotonic

    def block(self, seconds: float) -> None:
        with self._lock:
            self._until = max(self._until, time.monotonic() + seconds)

    def remaining(self) -> float:
        with self._lock:
            return self._until - time.monotonic()

    def wait(self, deadline: Deadline, what: str) -> None:
        """Sleep out a block that fits in the deadline; fail at once if it does not."""
        blocked = self.remaining()
        if blocked <= 0:
            return
        if blocked + 0.1 >= deadline.remaining():
            raise RateLimitedError(f"{what}: Polarity asked to wait {math.ceil(blocked)}s more "
                                   "(HTTP 429 Retry-After); not calling it before then")
        time.sleep(blocked)


@dataclass(frozen=True)
class RetryPolicy:
    """Idempotent requests that met a transient failure are retried a few times, with back-off,
    only while the deadline leaves room."""

    max_retries: int = 2
    statuses: frozenset[int] = frozenset({502, 503, 504})
    # A 429 is retried at most once per request, after its Retry-After.
    max_rate_limit_retries: int = 1

    def backoff(self, attempt: int, deadline: Deadline) -> bool:
        """Sleep before retry number `attempt` (0-based); False when the deadline has no room."""
        if attempt >= self.max_retries:
            return False
        pause = 0.2 * 2**attempt
        if deadline.remaining() <= pause + 0.1:
            return False
        time.sleep(pause)
        return True


def redirect_note(response: requests.Response) -> str:
    """" to <scheme://host/path>" for a redirect: where Polarity sent us (query dropped: it may
    carry a token)."""
    location = response.headers.get("Location")
    if not location:
        return ""
    try:
        parts = urlsplit(one_line(location))
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return " to an invalid Location"
    target = f"{parts.scheme}://{host}{port}{parts.path}" if parts.scheme else parts.path
    return f" to {target[:200]!r}"


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
        self._session.proxies = requests.utils.get_environ_proxies(config.url)
        self._session.trust_env = False
        # Passed on every request, not set on the session: requests lets REQUESTS_CA_BUNDLE or
        # CURL_CA_BUNDLE in the environment override a session's verify, which would silently
        # replace --polarity.ca-file and re-enable verification under --insecure-skip-verify.
        self._verify: str | bool = config.ca_file or not config.insecure_skip_verify
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
        try:
            with guarding(guard):
                response = self._request(method, path, deadline, what, token, params,
                                         json_body, connect_timeout=remaining)
            if guard.fired:
                # Cut while the headers arrived: http.client takes the end of the stream for
                # the end of the headers, so what looks like an answer is a fragment.
                deadline.check(what, "the response headers did not arrive in time")
            yield response
        finally:
            guard.disarm()  # before the connection can go back to the pool
            if response is not None:
                response.close()

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
                                f"{describe_exception(exc)}") from None
        except (ValueError, UnicodeError) as exc:
            # http.client refusing a header value: its message quotes the header, which may be
            # the credential, so only the kind of error is named.
            raise PolarityError(f"{what}: the request could not be sent "
                                f"({type(exc).__name__} while building it)") from None

    def rate_limited(self, response: requests.Response, what: str) -> float | None:
        """Record a 429's Retry-After for every later request; returns the wait, if any."""
        wait = retry_after(response.headers.get("Retry-After"))
        if wait is not None:
            self.rate_limit.block(wait)
        return wait

    def failure(self, response: requests.Response, deadline: Deadline, what: str) -> str:
        """"HTTP <status>[ redirect to …][: detail]" for an answer that is not a success."""
        status = response.status_code
        if 300 <= status < 400:
            return f"HTTP {status} redirect{redirect_note(response)}"
        detail = error_detail(response, deadline, what)
        return f"HTTP {status}" + (f": {detail}" if detail else "")

    def close(self) -> None:
        self._session.close()


__all__ = ["JSONAPI", "BodyReader", "DeadlineExceeded", "RateLimit", "RetryPolicy", "Transport",
           "check_json", "describe_exception", "error_detail", "one_line", "retry_after"]

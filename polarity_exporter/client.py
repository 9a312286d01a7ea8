"""Polarity REST API client: authentication, paging, retries and the scrape deadline.

One client per Polarity server, kept for the life of the exporter, so that its keep-alive
connections and its login token are reused across scrapes. Every failure surfaces as a
`PolarityError` whose message is one line naming the cause (never a secret).
"""

from __future__ import annotations

import codecs
import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

import ijson
import requests
import urllib3

from polarity_exporter.config import ApiKey, Password, PolarityConfig

log = logging.getLogger(__name__)

JSONAPI = "application/vnd.api+json"
# Retries for idempotent requests that met a transient failure (connection error, 502-504).
MAX_RETRIES = 2
RETRY_STATUSES = frozenset({502, 503, 504})
# Paging guard: never fetch more pages than this, whatever total the server claims.
MAX_PAGES = 1000
# A page of integrations is small; a larger body is a broken or hostile server.
MAX_PAGE_BYTES = 64 * 1024 * 1024
# How much of a streamed body is kept to explain a malformed one.
HEAD_BYTES = 64 * 1024
# A 429 is retried at most once per request, after its Retry-After, and only inside the deadline.
MAX_RATE_LIMIT_RETRIES = 1


class PolarityError(Exception):
    """A failure talking to Polarity; str() is one line for the operator."""


class AuthError(PolarityError):
    """Credentials rejected: retrying will not help until the operator acts."""


class ForbiddenError(PolarityError):
    """HTTP 403: the account lacks a permission (expected for the errors endpoint)."""


class ProtocolError(PolarityError):
    """The server answered, but not with what the API documents."""


class DeadlineExceeded(PolarityError):
    """The scrape deadline ran out before Polarity answered."""


class RateLimitedError(PolarityError):
    """Polarity answered 429 and its Retry-After has not passed: retrying now would hammer it."""


class Deadline:
    """A point in time by which a scrape must be done (monotonic clock)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def remaining(self) -> float:
        return self.end - time.monotonic()

    def check(self, what: str, why: str = "") -> float:
        remaining = self.remaining()
        if remaining <= 0:
            because = f" ({why})" if why else ""
            raise DeadlineExceeded(f"{what}: scrape deadline of {self.seconds:.2f}s "
                                   f"exceeded{because}")
        return remaining


@dataclass
class Listing:
    """All integrations as listed, deduplicated by id, and whether the listing added up."""

    items: list[dict[str, Any]]
    complete: bool = True
    notes: list[str] = field(default_factory=list)


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


class _Bearer(requests.auth.AuthBase):
    # An explicit auth object also stops requests from applying ~/.netrc over our header.
    def __init__(self, token: str | None) -> None:
        self._token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        if self._token:
            request.headers["Authorization"] = f"Bearer {self._token}"
        return request


class _BodyReader:
    """File-like view of a streamed response that enforces the deadline on every read.

    The socket timeout is lowered to what is left of the deadline before each read, so a server
    that trickles its body cannot hold a scrape past the deadline.
    """

    def __init__(self, response: requests.Response, deadline: Deadline, what: str,
                 read_timeout: float, repair_utf8: bool = False) -> None:
        self._raw = response.raw
        # The streaming JSON parser rejects a whole body for one invalid UTF-8 byte; replacing
        # such bytes with U+FFFD keeps every other record (json.loads callers decode themselves).
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace") if repair_utf8 else None
        self._raw.decode_content = True
        self._deadline = deadline
        self._what = what
        self._read_timeout = read_timeout
        self.total = 0
        self.head = bytearray()

    def read(self, size: int = -1) -> bytes:
        if size == 0:  # ijson probes the stream's type with read(0)
            return b""
        remaining = self._deadline.check(self._what)
        sock = getattr(getattr(self._raw, "connection", None), "sock", None)
        if sock is not None:
            sock.settimeout(min(self._read_timeout, remaining))
        try:
            chunk: bytes = self._raw.read1(size if size > 0 else 65536)
        except (urllib3.exceptions.HTTPError, requests.RequestException, OSError) as exc:
            self._deadline.check(self._what, "the response body did not arrive in time")
            raise PolarityError(f"{self._what}: reading the response failed: "
                                f"{describe_exception(exc)}") from None
        self.total += len(chunk)
        if len(self.head) < HEAD_BYTES:
            self.head += chunk[: HEAD_BYTES - len(self.head)]
        if self._utf8 is not None:
            chunk = self._repair(chunk, self._utf8)
        return chunk

    @staticmethod
    def _repair(chunk: bytes, decoder: codecs.IncrementalDecoder) -> bytes:
        # ASCII needs no work unless a multi-byte sequence is pending from the last chunk.
        if chunk and chunk.isascii() and not decoder.getstate()[0]:
            return chunk
        return decoder.decode(chunk, final=not chunk).encode("utf-8")

    def read_all(self, limit: int) -> bytes:
        chunks = []
        while chunk := self.read(65536):
            chunks.append(chunk)
            if self.total > limit:
                raise ProtocolError(f"{self._what}: response larger than {limit} bytes")
        return b"".join(chunks)


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _error_detail(response: requests.Response) -> str:
    """The `detail` or `title` of a JSON:API error body, if the server sent one."""
    try:
        body = json.loads(response.content[:HEAD_BYTES])
        first = body["errors"][0]
        detail = first.get("detail") or first.get("title")
        return one_line(str(detail))[:200] if detail else ""
    except (ValueError, KeyError, IndexError, TypeError, AttributeError,
            requests.RequestException):
        return ""


def _check_json(response: requests.Response, what: str) -> None:
    content_type = response.headers.get("Content-Type", "")
    if "json" not in content_type.lower():
        raise ProtocolError(f"{what}: expected JSON, got Content-Type {content_type!r}")


def _decode_json(body: bytes, what: str,
                 object_hook: Callable[[dict[str, Any]], Any] | None = None) -> Any:
    try:
        # strict=False: a raw control character inside a string is kept (and later cleaned
        # from labels) instead of costing the whole page.
        return json.loads(body.decode("utf-8", errors="replace"), strict=False,
                          object_hook=object_hook)
    except ValueError as exc:
        raise ProtocolError(f"{what}: response is not valid JSON ({exc.args[0]})") from None


def _forget_error_refs(obj: dict[str, Any]) -> dict[str, Any]:
    """json object_hook for pages of integrations: keep only the length of each
    relationships.integration-errors.data list (its references become None).

    The exporter reads nothing else of them, and on a server with 100k error records they are
    100k small dicts per listing (~35 MB); dropped as each integration is decoded, they never
    pile up.
    """
    refs = obj.get("integration-errors")
    if type(refs) is dict:
        data = refs.get("data")
        if type(data) is list and data:
            refs["data"] = [None] * len(data)
    return obj


class PolarityClient:
    """Talks to one Polarity server; safe to share between threads."""

    def __init__(self, config: PolarityConfig) -> None:
        self.config = config
        self.base_url = config.url
        self._session = requests.Session()
        self._session.headers.update({"Content-Type": JSONAPI, "Accept": JSONAPI,
                                      "User-Agent": "polarity-exporter"})
        # Passed on every request, not set on the session: requests lets REQUESTS_CA_BUNDLE or
        # CURL_CA_BUNDLE in the environment override a session's verify, which would silently
        # replace --polarity.ca-file and re-enable verification under --insecure-skip-verify.
        self._verify: str | bool = config.ca_file or not config.insecure_skip_verify
        if config.insecure_skip_verify:
            # Warned about once at start-up instead of once per request.
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        pool = config.max_concurrency + 2
        adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=pool)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._pages = ThreadPoolExecutor(config.max_concurrency, thread_name_prefix="polarity-page")
        self._auth_lock = threading.Lock()
        self._token: str | None = None
        self._token_expires = 0.0  # wall-clock Unix seconds, as Polarity reports it
        self._token_lifetime = 0.0
        self._generation = 0  # bumped on every login, so concurrent 401s re-login only once
        self._blocked_until = 0.0  # monotonic; set by a 429 so that Polarity is not hammered

    # --- authentication -------------------------------------------------------------------

    @property
    def account(self) -> str:
        creds = self.config.credentials
        return f"user {creds.username!r}" if isinstance(creds, Password) else "the API key"

    def authenticate(self, deadline: Deadline) -> None:
        """Make sure a usable credential is at hand (logs in or refreshes when needed)."""
        self._credential(deadline)

    def _credential(self, deadline: Deadline) -> tuple[str, int]:
        creds = self.config.credentials
        if isinstance(creds, ApiKey):
            return creds.key, 0
        with self._auth_lock:
            if self._token is None:
                self._login(creds, deadline)
            elif self._token_due_for_refresh():
                self._refresh(creds, deadline)
            assert self._token is not None
            return self._token, self._generation

    def _token_due_for_refresh(self) -> bool:
        if not self._token_expires:
            return False  # no expiry known: rely on the 401 path
        # A minute ahead for real tokens (hours or days); halfway for short-lived ones.
        margin = min(60.0, 0.5 * self._token_lifetime)
        return time.time() >= self._token_expires - margin

    def _reauthenticate(self, generation: int, deadline: Deadline) -> None:
        creds = self.config.credentials
        assert isinstance(creds, Password)
        with self._auth_lock:
            if generation == self._generation:  # nobody else has logged in since our 401
                self._token = None
                self._login(creds, deadline)

    def _login(self, creds: Password, deadline: Deadline) -> None:
        what = f"login as {creds.username!r} at {self.base_url}"
        payload = {"identification": creds.username, "password": creds.password}
        response = self._send("POST", "/api/users/login", deadline, what, auth=_Bearer(None),
                              json_body=payload)
        with response:
            if response.status_code == 401:
                raise AuthError(f"{what} failed: invalid username or password (HTTP 401)")
            if response.status_code == 429:
                # A POST is never retried; just make sure nothing calls Polarity too early.
                wait = self._block_for(response)
                raise PolarityError(f"{what} failed: rate limited by Polarity (HTTP 429)"
                                    + (f", Retry-After {wait:.0f}s" if wait is not None else ""))
            if response.status_code != 200:
                raise PolarityError(f"{what} failed: HTTP {response.status_code}"
                                    f"{self._detail_suffix(response)}")
            self._store_token(response, deadline, what)
        log.info("logged in to Polarity", extra={"server": self.base_url,
                                                 "user": creds.username})

    def _refresh(self, creds: Password, deadline: Deadline) -> None:
        what = f"token refresh for {creds.username!r} at {self.base_url}"
        response = self._send("GET", "/api/users/refresh", deadline, what,
                              auth=_Bearer(self._token))
        with response:
            if response.status_code == 401:
                self._token = None
                self._login(creds, deadline)
                return
            if response.status_code != 200:
                # The current token is still valid for a while: keep it, try again next scrape.
                log.warning("token refresh failed", extra={"server": self.base_url,
                                                           "err": f"HTTP {response.status_code}"})
                return
            self._store_token(response, deadline, what)
        log.debug("refreshed Polarity token", extra={"server": self.base_url})

    def _store_token(self, response: requests.Response, deadline: Deadline, what: str) -> None:
        _check_json(response, what)
        body = _decode_json(_BodyReader(response, deadline, what, self.config.timeout)
                            .read_all(HEAD_BYTES), what)
        data = body.get("data") if isinstance(body, dict) else None
        token = data.get("token") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            raise ProtocolError(f"{what}: response has no data.token")
        expires = data.get("expiration_time") if isinstance(data, dict) else None
        valid_expiry = isinstance(expires, (int, float)) and not isinstance(expires, bool) \
            and math.isfinite(expires)
        self._token = token
        self._generation += 1
        self._token_expires = float(expires) if valid_expiry else 0.0  # type: ignore[arg-type]
        self._token_lifetime = max(0.0, self._token_expires - time.time())

    def close(self) -> None:
        """Log out (password logins only) and release connections and threads."""
        self._pages.shutdown(wait=True, cancel_futures=True)
        with self._auth_lock:
            token, self._token = self._token, None
        if token is not None:
            try:
                response = self._send("POST", "/api/users/logout",
                                      Deadline(min(self.config.timeout, 5.0)),
                                      f"logout from {self.base_url}", auth=_Bearer(token))
                response.close()
                if response.status_code == 200:
                    log.info("logged out of Polarity", extra={"server": self.base_url})
                else:
                    log.warning("logout failed", extra={"server": self.base_url,
                                                        "err": f"HTTP {response.status_code}"})
            except PolarityError as exc:
                log.warning("logout failed", extra={"server": self.base_url, "err": str(exc)})
        self._session.close()

    # --- requests ---------------------------------------------------------------------------

    def _detail_suffix(self, response: requests.Response) -> str:
        detail = _error_detail(response)
        return f": {detail}" if detail else ""

    def _send(self, method: str, path: str, deadline: Deadline, what: str, *,
              auth: requests.auth.AuthBase, params: dict[str, str] | None = None,
              json_body: Any = None) -> requests.Response:
        """One HTTP exchange, streamed; connection failures become PolarityError."""
        self._wait_for_rate_limit(deadline, what)
        remaining = deadline.check(what)
        timeout = min(self.config.timeout, remaining)
        try:
            return self._session.request(
                method, self.base_url + path, params=params,
                data=None if json_body is None else json.dumps(json_body),
                auth=auth, timeout=(timeout, timeout), stream=True, allow_redirects=False,
                verify=self._verify)
        except requests.RequestException as exc:
            deadline.check(what, f"no answer from {self.base_url}")
            raise PolarityError(f"{what}: cannot reach {self.base_url}: "
                                f"{describe_exception(exc)}") from None

    def _get(self, path: str, deadline: Deadline, what: str,
             params: dict[str, str] | None = None) -> requests.Response:
        """An authenticated, idempotent GET with bounded retries inside the deadline."""
        relogged = False
        retries = 0
        rate_limited = 0
        while True:
            token, generation = self._credential(deadline)
            try:
                response = self._send("GET", path, deadline, what, auth=_Bearer(token),
                                      params=params)
            except (DeadlineExceeded, RateLimitedError):
                raise
            except PolarityError:
                if retries >= MAX_RETRIES or not self._backoff(retries, deadline):
                    raise
                retries += 1
                continue
            status = response.status_code
            if status == 200:
                return response
            response.close()
            if status == 401:
                if isinstance(self.config.credentials, ApiKey):
                    detail = _error_detail(response) or "expired or revoked"
                    raise AuthError(f"{what}: the API key was rejected by {self.base_url} "
                                    f"({detail}, HTTP 401)")
                if relogged:
                    raise AuthError(f"{what}: still unauthorized after logging in again as "
                                    f"{self.account} (HTTP 401)")
                relogged = True
                log.info("Polarity token rejected, logging in again",
                         extra={"server": self.base_url})
                self._reauthenticate(generation, deadline)
                continue
            if status == 403:
                raise ForbiddenError(f"{what}: {self.account} is not allowed (HTTP 403)"
                                     f"{self._detail_suffix(response)}")
            if status == 429:
                self._rate_limited(response, deadline, what, rate_limited)
                rate_limited += 1
                continue
            if status in RETRY_STATUSES and retries < MAX_RETRIES \
                    and self._backoff(retries, deadline):
                retries += 1
                continue
            raise PolarityError(f"{what}: HTTP {status}{self._detail_suffix(response)}")

    def _backoff(self, attempt: int, deadline: Deadline) -> bool:
        """Sleep before a retry; False when the deadline leaves no room for one."""
        pause = 0.2 * 2**attempt
        if deadline.remaining() <= pause + 0.1:
            return False
        time.sleep(pause)
        return True

    def _block_for(self, response: requests.Response) -> float | None:
        """Honour a 429's Retry-After for every request of this client, not just this one."""
        wait = _retry_after(response)
        if wait is not None:
            with self._auth_lock:
                self._blocked_until = max(self._blocked_until, time.monotonic() + wait)
        return wait

    def _rate_limited(self, response: requests.Response, deadline: Deadline, what: str,
                      earlier: int) -> None:
        """After a 429: retry once after Retry-After if that fits in the deadline, else fail.

        The block applies to all requests (pages fetched in parallel, later scrapes), so a
        rate-limited Polarity is not called again before the time it asked for.
        """
        wait = self._block_for(response)
        if wait is None:
            raise RateLimitedError(f"{what}: rate limited by Polarity "
                                   "(HTTP 429, no Retry-After)")
        if earlier >= MAX_RATE_LIMIT_RETRIES:
            raise RateLimitedError(f"{what}: rate limited by Polarity again (HTTP 429), "
                                f"Retry-After {wait:.0f}s")
        if wait + 0.1 >= deadline.remaining():
            raise RateLimitedError(f"{what}: rate limited by Polarity (HTTP 429), Retry-After "
                                   f"{wait:.0f}s does not fit in the scrape deadline")

    def _wait_for_rate_limit(self, deadline: Deadline, what: str) -> None:
        """Sleep out a Retry-After that fits in the deadline; fail at once if it does not."""
        blocked = self._blocked_until - time.monotonic()
        if blocked <= 0:
            return
        if blocked + 0.1 >= deadline.remaining():
            raise RateLimitedError(f"{what}: Polarity asked to wait {blocked:.0f}s more "
                                f"(HTTP 429 Retry-After); not calling it before then")
        time.sleep(blocked)

    # --- integrations -----------------------------------------------------------------------

    def _get_page(self, number: int, deadline: Deadline) -> tuple[list[Any], int]:
        what = f"page {number} of /api/integrations"
        params = {"page[size]": str(self.config.page_size), "page[number]": str(number)}
        with self._get("/api/integrations", deadline, what, params) as response:
            _check_json(response, what)
            body = _decode_json(_BodyReader(response, deadline, what, self.config.timeout)
                                .read_all(MAX_PAGE_BYTES), what, _forget_error_refs)
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            raise ProtocolError(f"{what}: 'data' is not a list")
        meta = body.get("meta")
        page = meta.get("page") if isinstance(meta, dict) else None
        total = page.get("total") if isinstance(page, dict) else None
        if not isinstance(total, int) or isinstance(total, bool) or total < 0:
            raise ProtocolError(f"{what}: meta.page.total is missing or not a count")
        return data, total

    def list_integrations(self, deadline: Deadline) -> Listing:
        """Every integration, following pages; pages after the first are fetched concurrently."""
        first, total = self._get_page(1, deadline)
        # The server may cap the page size below what we asked for: page by what it returns.
        per_page = self.config.page_size
        if 0 < len(first) < min(per_page, total):
            per_page = len(first)
        pages = max(1, math.ceil(total / per_page))
        listing = Listing(items=[])
        if pages > MAX_PAGES:
            listing.complete = False
            listing.notes.append(f"total {total} needs {pages} pages; read only {MAX_PAGES}")
            pages = MAX_PAGES
        futures: list[Future[tuple[list[Any], int]]] = [
            self._pages.submit(self._get_page, number, deadline) for number in range(2, pages + 1)
        ]
        try:
            results = [(first, total)] + [future.result() for future in futures]
        finally:
            for future in futures:
                future.cancel()
        self._merge_pages(results, total, listing)
        return listing

    @staticmethod
    def _merge_pages(results: list[tuple[list[Any], int]], total: int, listing: Listing) -> None:
        seen: set[Any] = set()
        duplicates = 0
        for number, (items, page_total) in enumerate(results, start=1):
            if page_total != total:
                listing.complete = False
                listing.notes.append(f"total changed from {total} to {page_total} on page {number}")
            if not items and total:
                listing.complete = False
                listing.notes.append(f"page {number} was empty")
            for item in items:
                key = item.get("id") if isinstance(item, dict) else None
                if key is not None and not isinstance(key, (dict, list)):
                    if key in seen:
                        duplicates += 1
                        continue
                    seen.add(key)
                listing.items.append(item)
        if duplicates:
            listing.complete = False
            listing.notes.append(f"{duplicates} duplicate integration records ignored")
        if len(listing.items) != total:
            listing.complete = False
            listing.notes.append(f"listed {len(listing.items)} integrations, server said {total}")

    # --- errors -----------------------------------------------------------------------------

    def iter_errors(self, deadline: Deadline) -> Iterator[Any]:
        """Error records as they are parsed from the stream: the body is never held whole."""
        what = "/api/integrations/errors"
        with self._get("/api/integrations/errors", deadline, what) as response:
            _check_json(response, what)
            reader = _BodyReader(response, deadline, what, self.config.timeout, repair_utf8=True)
            count = 0
            try:
                for item in ijson.items(reader, "data.item", use_float=True):
                    count += 1
                    yield item
            except (ijson.JSONError, UnicodeDecodeError) as exc:
                # UnicodeDecodeError: ijson's C backend cannot decode a key holding an escaped
                # lone surrogate ("\udc00").
                raise ProtocolError(f"{what}: response is not valid JSON "
                                    f"({one_line(str(exc))[:120]})") from None
            if count == 0:
                self._explain_empty(reader, what)

    @staticmethod
    def _explain_empty(reader: _BodyReader, what: str) -> None:
        """Tell an empty `data` list from a body that has no `data` list at all."""
        if reader.total > len(reader.head):
            raise ProtocolError(f"{what}: {reader.total} bytes without a 'data' list of records")
        body = _decode_json(bytes(reader.head), what)
        if not isinstance(body, dict) or not isinstance(body.get("data"), list):
            raise ProtocolError(f"{what}: 'data' is not a list")

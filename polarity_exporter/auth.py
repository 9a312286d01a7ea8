"""Authentication with Polarity: the token's life as a small state machine.

    no token --login--> token valid --(expiry near)--> refreshing --> token valid
        ^                  |   ^                          |  (refresh failed: keep the token,
        |                  |   +--------------------------+   try again after a pause)
        +---(401 on use, or 401 on refresh)
    login answered 401 -> AuthError (tried again on the next scrape)
    login answered 429 -> the transport's RateLimit blocks every request until Retry-After

One lock guards the state and is never held across I/O: a thread decides what to do under the
lock, marks the state busy, releases the lock, talks to Polarity, and takes the lock again to
store the outcome. Threads that find a login in flight wait on the condition (which releases the
lock) until it ends or their own deadline passes; while a refresh is in flight they keep using
the current token. So concurrent 401s cause one login, and nothing can re-enter the lock.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import requests

from polarity_exporter.bodies import TOKEN_BODY_BYTES, BodyReader, check_json
from polarity_exporter.config import ApiKey, Credentials, Password
from polarity_exporter.deadline import Deadline
from polarity_exporter.errors import (
    AuthError,
    DeadlineExceeded,
    PolarityError,
    ProtocolError,
)
from polarity_exporter.jsondecode import decode_json
from polarity_exporter.transport import Transport

log = logging.getLogger(__name__)

# RFC 6750's b64token, generously: printable ASCII without spaces.
_TOKEN = re.compile(r"[\x21-\x7e]{1,8192}")
# After a failed refresh the current token is kept; the refresh is tried again after this long.
REFRESH_RETRY_SECONDS = 30.0
# A refresh may use at most this share of what is left of the scrape's deadline: the current
# token still works, so a slow or hung refresh must not cost the scrape.
REFRESH_SHARE = 0.25


class Authenticator:
    """The credential for requests to one server; safe to share between threads."""

    def __init__(self, transport: Transport, credentials: Credentials,
                 clock: Callable[[], float] = time.time) -> None:
        self._transport = transport
        self._credentials = credentials
        # Wall clock (Polarity states expiry as Unix time); tests replace it to age tokens.
        self.clock = clock
        self._cond = threading.Condition()
        self._token: str | None = None
        self._generation = 0  # bumped on every new token: a 401 invalidates only its own token
        self._expires = 0.0  # Unix seconds; 0: unknown, rely on the 401 path
        self._refresh_at = 0.0  # Unix seconds; 0: never
        self._busy: str | None = None  # "login" or "refresh" while a thread does that I/O
        self._logins = 0  # logins finished, successful or not
        self._login_error: PolarityError | None = None  # how the last one failed
        self._closed = False  # logged out for good: the exporter is shutting down

    @property
    def account(self) -> str:
        creds = self._credentials
        return f"user {creds.username!r}" if isinstance(creds, Password) else "the API key"

    @property
    def uses_api_key(self) -> bool:
        return isinstance(self._credentials, ApiKey)

    def credential(self, deadline: Deadline) -> tuple[str, int]:
        """A token (or the API key) to send, and its generation for `unauthorized`."""
        creds = self._credentials
        if isinstance(creds, ApiKey):
            return creds.key, 0
        while True:
            with self._cond:
                action = self._next_action(deadline)
                if action is None:
                    assert self._token is not None
                    return self._token, self._generation
                token = self._token
                self._busy = action
            error: PolarityError | None = None
            try:
                self._perform(action, token, creds, deadline)
            except PolarityError as exc:
                error = exc
                raise
            finally:
                with self._cond:
                    self._busy = None
                    if action == "login":
                        self._logins += 1
                        self._login_error = error
                    self._cond.notify_all()

    def _next_action(self, deadline: Deadline) -> str | None:
        """Under the lock: None to use the current token, else the I/O this thread must do."""
        waited_for: int | None = None  # the login in flight when this thread began to wait
        while True:
            if self._closed:
                raise PolarityError(f"{self._transport.base_url}: the exporter is shutting down")
            if self._token is not None:
                if self._busy == "refresh" or not self._refresh_due():
                    return None
                if self._busy is None:
                    return "refresh"
            elif waited_for is not None and self._logins > waited_for \
                    and self._login_error is not None:
                # The login this thread waited for failed: that is this request's answer too,
                # instead of one more login per waiting thread.
                raise type(self._login_error)(str(self._login_error))
            elif self._busy is None:
                return "login"
            if waited_for is None and self._busy == "login":
                waited_for = self._logins
            # Another thread is logging in: wait for its outcome, not longer than our deadline.
            remaining = deadline.remaining()
            if remaining <= 0:
                raise DeadlineExceeded(f"login as {self.account} at {self._transport.base_url}: "
                                       "scrape deadline exceeded waiting for the login in flight")
            self._cond.wait(remaining)

    def _refresh_due(self) -> bool:
        return bool(self._refresh_at) and self.clock() >= self._refresh_at

    def _perform(self, action: str, token: str | None, creds: Password,
                 deadline: Deadline) -> None:
        if action == "refresh":
            assert token is not None
            if self._refresh(token, creds, deadline):
                return
            with self._cond:  # the token was refused: log in instead (next loop round)
                if self._token == token:
                    self._token = None
            return
        self._login(creds, deadline)

    def unauthorized(self, generation: int, deadline: Deadline) -> None:
        """A request with the token of `generation` got 401: drop that token (once)."""
        deadline.note("HTTP 401 with the current token: logging in again")
        with self._cond:
            if generation == self._generation and self._token is not None:
                self._token = None
                log.info("Polarity token rejected, logging in again",
                         extra={"server": self._transport.base_url})

    # --- I/O (never under the lock) -----------------------------------------------------------

    def _login(self, creds: Password, deadline: Deadline) -> None:
        what = f"login as {creds.username!r} at {self._transport.base_url}"
        payload = {"identification": creds.username, "password": creds.password}
        with self._transport.exchange("POST", "/api/users/login", deadline, what, token=None,
                                      json_body=payload) as response:
            status = response.status_code
            if status == 401:
                raise AuthError(f"{what} failed: invalid username or password (HTTP 401)")
            if status == 429:  # not retried: the next scrape logs in again
                self._transport.rate_limit.refused(response, deadline, f"{what} failed")
            if status != 200:
                raise PolarityError(f"{what} failed: "
                                    f"{self._transport.failure(response, deadline, what)}")
            token, expires = self._read_token(response, deadline, what)
        self._store(token, expires)
        deadline.note(f"logged in as {creds.username!r}" + _expiry(expires))
        log.info("logged in to Polarity", extra={"server": self._transport.base_url,
                                                 "user": creds.username})

    def _refresh(self, token: str, creds: Password, deadline: Deadline) -> bool:
        """False if Polarity refused the token (log in instead); True otherwise."""
        what = f"token refresh for {creds.username!r} at {self._transport.base_url}"
        deadline = Deadline(max(0.0, deadline.remaining() * REFRESH_SHARE), log=deadline.log)
        try:
            with self._transport.exchange("GET", "/api/users/refresh", deadline, what,
                                          token=token) as response:
                if response.status_code == 401:
                    return False
                if response.status_code != 200:
                    raise PolarityError(self._transport.failure(response, deadline, what))
                new_token, expires = self._read_token(response, deadline, what)
        except PolarityError as exc:
            # The current token is still valid for a while: keep it, try again after a pause.
            with self._cond:
                self._refresh_at = self.clock() + REFRESH_RETRY_SECONDS
            err = self._transport.scrub(str(exc))
            log.warning("token refresh failed", extra={"server": self._transport.base_url,
                                                       "err": err})
            deadline.note(f"token refresh failed, keeping the current token: {err}")
            return True
        self._store(new_token, expires)
        deadline.note("token refreshed" + _expiry(expires))
        log.debug("refreshed Polarity token", extra={"server": self._transport.base_url})
        return True

    def _read_token(self, response: requests.Response, deadline: Deadline,
                    what: str) -> tuple[str, float]:
        check_json(response, what, self._transport.scrub)
        body = decode_json(BodyReader(response, deadline, what, limit=TOKEN_BODY_BYTES).read_all(),
                           what)
        data = body.get("data") if isinstance(body, dict) else None
        token = data.get("token") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            raise ProtocolError(f"{what}: response has no data.token")
        if not _TOKEN.fullmatch(token):
            # It would go into a header: http.client refuses line breaks and non-Latin-1. Never
            # echoed: it is a secret.
            raise ProtocolError(f"{what}: data.token has characters a bearer token cannot have")
        expires: Any = data.get("expiration_time") if isinstance(data, dict) else None
        valid = type(expires) in (int, float) and 0 < expires < 1e11  # Unix seconds, finite
        return token, float(expires) if valid else 0.0

    def _store(self, token: str, expires: float) -> None:
        now = self.clock()
        with self._cond:
            if self._closed:
                # Logged out while this login was on its way (a reload retired the server):
                # the new session is not kept, and is ended at once (after the lock is let go).
                late = token
            else:
                late = None
                self._store_locked(token, expires, now)
        if late is not None:
            self._end_session(late, Deadline(5.0))
            raise PolarityError("the exporter no longer uses this server (logged out)")

    def _store_locked(self, token: str, expires: float, now: float) -> None:
        self._transport.remember_token(token)
        self._token = token
        self._generation += 1
        if expires <= now:
            # Already past on arrival (clock skew): use it until Polarity says 401, then log in
            # once; refreshing it would only loop.
            self._refresh_at = 0.0
        else:
            # A minute ahead for real tokens (hours or days); halfway for short-lived ones.
            margin = min(60.0, 0.5 * (expires - now))
            self._refresh_at = expires - margin

    def logout(self, deadline: Deadline) -> None:
        """Invalidate the session token (password logins only) and refuse to log in again;
        failures are only logged."""
        with self._cond:
            token, self._token = self._token, None
            self._closed = True
            self._cond.notify_all()
        if token is not None:
            self._end_session(token, deadline)

    def _end_session(self, token: str, deadline: Deadline) -> None:
        what = f"logout from {self._transport.base_url}"
        try:
            with self._transport.exchange("POST", "/api/users/logout", deadline, what,
                                          token=token) as response:
                status = response.status_code
        except PolarityError as exc:
            log.warning("logout failed", extra={"server": self._transport.base_url,
                                                "err": str(exc)})
            return
        if status == 200:
            log.info("logged out of Polarity", extra={"server": self._transport.base_url})
        else:
            log.warning("logout failed", extra={"server": self._transport.base_url,
                                                "err": f"HTTP {status}"})


def _expiry(expires: float) -> str:
    if not expires:
        return " (no expiry given)"
    return time.strftime(" (token expires %Y-%m-%dT%H:%M:%SZ)", time.gmtime(expires))

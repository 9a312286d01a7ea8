"""Basic auth on the exporter's endpoint: `basic_auth_users` of the web config, checked with
bcrypt as exporter-toolkit checks them, at a bounded cost to the HTTP workers."""

from __future__ import annotations

import base64
import binascii
import hashlib
import threading
from dataclasses import dataclass, field

import bcrypt

# Successful checks are remembered so that bcrypt (deliberately slow) runs once per credential,
# not on every scrape; the key is a SHA-256 of the credential, never the credential itself.
_CACHE_LIMIT = 1024
BCRYPT_MAX_BYTES = 72
BCRYPT_CHECKS_AT_ONCE = 2  # of the HTTP workers, at most this many run bcrypt


@dataclass
class BasicAuth:
    """basic_auth_users: username -> bcrypt hash; checks take the same time for unknown users."""

    users: dict[str, bytes]
    _ok: set[bytes] = field(default_factory=set, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # bcrypt costs tens of ms of CPU per check by design: a client sending wrong passwords on
    # many connections must not hold every HTTP worker, so at most this many checks run at
    # once; past them a request is refused (401) at once. Credentials already verified are
    # answered from the cache above, without bcrypt, so Prometheus is not slowed by an attack.
    _checks: threading.BoundedSemaphore = field(
        default_factory=lambda: threading.BoundedSemaphore(BCRYPT_CHECKS_AT_ONCE), repr=False)
    _dummy: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # An unknown user is checked against the costliest real hash (and then refused), so it
        # takes as long as a wrong password, and nothing is hashed when the file is read: a
        # reload happens on the server's loop.
        self._dummy = max(self.users.values(), key=bcrypt_cost)

    def check(self, authorization: str | None) -> bool:
        credentials = _parse_basic(authorization)
        if credentials is None:
            return False
        username, password = credentials
        hashed = self.users.get(username)
        key = hashlib.sha256(b"\0".join([username.encode(), password, hashed or b""])).digest()
        with self._lock:
            if hashed is not None and key in self._ok:
                return True
        # Unknown users are checked against a dummy hash, so timing does not reveal which
        # usernames exist; bcrypt.checkpw compares in constant time. bcrypt reads only the first
        # 72 bytes of a password (bcrypt 5 raises on longer ones): compare those, as Go's
        # exporter-toolkit does, so a long password works and never costs a 500.
        if not self._checks.acquire(blocking=False):
            return False
        try:
            valid = bcrypt.checkpw(password[:BCRYPT_MAX_BYTES], hashed or self._dummy) \
                and hashed is not None
        finally:
            self._checks.release()
        if valid:
            with self._lock:
                if len(self._ok) >= _CACHE_LIMIT:
                    self._ok.clear()
                self._ok.add(key)
        return valid


def bcrypt_cost(hashed: bytes) -> int:
    """The cost of a hash that webconfig checked ("$2b$12$..." -> 12)."""
    return int(hashed[4:6])


def _parse_basic(header: str | None) -> tuple[str, bytes] | None:
    if not header or not header[:6].lower() == "basic ":
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    username, sep, password = decoded.partition(b":")
    if not sep:
        return None
    return username.decode("utf-8", "replace"), password

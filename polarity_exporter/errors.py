"""The failures of talking to Polarity: one exception per kind, str() one line for the operator.

Every module that talks to Polarity raises these and nothing else for expected failures, so the
collector can tell "Polarity said no" from a bug, and never shows a secret (messages name the
account and the server, never a password, token or key).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

import requests
import urllib3


class PolarityError(Exception):
    """A failure talking to Polarity; str() is one line for the operator."""


class AuthError(PolarityError):
    """Credentials rejected: retrying will not help until the operator acts."""


class ForbiddenError(PolarityError):
    """HTTP 403: the account lacks a permission (expected for the errors endpoint)."""


class ProtocolError(PolarityError):
    """The server answered, but not with what the API documents (or beyond the exporter's
    bounds: too large, too deeply nested)."""


class DeadlineExceeded(PolarityError):
    """The scrape deadline ran out before Polarity answered."""


class RateLimitedError(PolarityError):
    """Polarity answered 429 and its Retry-After has not passed: retrying now would hammer it."""


# --- how a failure reads ---

def one_line(text: str) -> str:
    """Text on one line, lone surrogates (which no encoder writes) as U+FFFD."""
    line = " ".join(text.split())
    return line if line.isprintable() or not _SURROGATES.search(line) \
        else _SURROGATES.sub("\ufffd", line)


_SURROGATES = re.compile("[\ud800-\udfff]")
# A credential a server or proxy may echo back in its error text: an Authorization or
# Proxy-Authorization value, "Bearer …" or "Basic …" (a run of 8 or more token characters).
_CREDENTIAL = re.compile(r"(?i)\b(bearer|basic)([\s_:=]+)[A-Za-z0-9._~+/=-]{8,}")
REDACTED = "<redacted>"


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """Server-written text with the secrets the exporter sent (passwords, keys, tokens, proxy
    credentials), and anything that looks like an Authorization value, replaced: a server that
    echoes the request's headers in its error text must not put them into logs, the debug
    output or the landing page. Call it on the text as the server wrote it, before it is put on
    one line or cut: a secret cut in two is no longer found, and its first part would leak.
    ASCII letters match in either case; `secrets` should hold each form a secret may take
    (transport._forms), since nothing else is matched loosely."""
    folded = text.translate(_ASCII_LOWER)  # the same length: its indexes are the text's
    spans: list[tuple[int, int]] = []
    for secret in sorted({form.translate(_ASCII_LOWER) for form in secrets
                          if len(form.strip()) >= MIN_SECRET}, key=len, reverse=True):
        # str.find is linear in the text and the secret (a regex of the secrets was not: a
        # server's 8 KiB token against a 64 KiB header took seconds, holding the GIL).
        at = folded.find(secret)
        while at >= 0:
            spans.append((at, at + len(secret)))
            at = folded.find(secret, at + len(secret))
    if spans:
        text = _redact(text, spans)
    return _CREDENTIAL.sub(lambda match: f"{match.group(1)}{match.group(2)}{REDACTED}", text)


# Shorter secrets are not looked for: "a" would redact every message (a server may issue any
# token). A form counts without its surrounding whitespace.
MIN_SECRET = 4
# ASCII letters only, so that the folded text keeps the text's length (str.lower() does not:
# "İ" becomes two characters). An echo may upper-case a secret, or write %2f for %2F.
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _redact(text: str, spans: list[tuple[int, int]]) -> str:
    """`text` with each span (overlapping ones merged) written as REDACTED."""
    parts, end = [], 0
    for start, stop in sorted(spans):
        if start > end:
            parts.append(text[end:start])
        if stop > end:
            if start >= end:
                parts.append(REDACTED)
            end = stop
    parts.append(text[end:])
    return "".join(parts)


_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-f]+>:?\s*")
_ERRNO = re.compile(r"\[Errno -?\d+\]\s*([^'\"\)]+)")
_TUNNEL = re.compile(r"Tunnel connection failed: (\d{3}[^'\"\)]*)")


def describe_exception(exc: BaseException, scrub: Callable[[str], str] = str) -> str:
    """A short reason for a requests/urllib3 exception, without object reprs or URLs twice;
    `scrub` sees the whole text (a proxy's reason may echo its credentials) before any cut."""
    text = scrub(str(exc))
    if isinstance(exc, requests.exceptions.SSLError) or "CERTIFICATE_VERIFY_FAILED" in text:
        if "CERTIFICATE_VERIFY_FAILED" in text:
            return "TLS certificate verify failed (set --polarity.ca-file to the server's CA)"
        return "TLS handshake failed"
    if isinstance(exc, requests.exceptions.ProxyError):
        # The upstream proxy, not Polarity: say so, with its status or the socket's reason.
        # (The message never carries the proxy's URL or credentials: only these parts of it.)
        tunnel = _TUNNEL.search(text)
        if tunnel:
            return f"the proxy refused the tunnel: {tunnel.group(1).strip()[:80]}"
        errno = _ERRNO.search(text)
        return "cannot connect to the proxy" + (f": {errno.group(1).strip()}" if errno else "")
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

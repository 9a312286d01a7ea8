"""The failures of talking to Polarity: one exception per kind, str() one line for the operator.

Every module that talks to Polarity raises these and nothing else for expected failures, so the
collector can tell "Polarity said no" from a bug, and never shows a secret (messages name the
account and the server, never a password, token or key).
"""

from __future__ import annotations


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

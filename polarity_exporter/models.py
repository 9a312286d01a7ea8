"""API JSON -> typed records.

Polarity's JSON is written by many hands (third-party integrations fill in error records), so
every field is read defensively. A field that cannot be read is reported to the caller through a
`Problems` counter instead of raising, so one bad record never costs the rest of the scrape.

Bodies in the documented shape take a faster road to the same records: documented.py.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from polarity_exporter.jsondecode import json_float
from polarity_exporter.memo import Memo

# Counter of unreadable fields, keyed by field name (a small fixed set: safe as a metric label).
Problems = Counter[str]


@dataclass(frozen=True, slots=True)
class Integration:
    id: str
    name: str
    acronym: str
    version: str
    status: str
    # Length of relationships.integration-errors.data: the error count seen without access to
    # the errors endpoint. None when the relationship is missing or malformed.
    error_refs: int | None


# Not frozen: one is built per error record (hundreds of thousands per scrape), and a frozen
# dataclass's __init__ costs several times more. Nothing mutates a record after parsing.
@dataclass(slots=True)
class ErrorRecord:
    integration_id: str
    code: str
    count: float | None
    occurred_on: float | None
    affected_users: tuple[str, ...]
    # Read only for error events (events.py), which say what Polarity said: None otherwise.
    text: ErrorText | None = None


@dataclass(frozen=True, slots=True)
class ErrorText:
    """A record's id, title and detail, cut to MAX_EVENT_TEXT characters (None when absent
    or not text)."""

    id: str | None
    title: str | None
    detail: str | None


# Titles and details kept for error events: they go into one log line each.
MAX_EVENT_TEXT = 1024


# Longest text kept from a field: one more than the longest label value allowed, so the label
# cleaner still sees that it was cut. A 40 MB name costs 4 KB past the parser.
MAX_TEXT = 4097
# Ids are cut to this many characters (Polarity's are about 40): two that agree this far are
# one id.
MAX_ID = 256
# Ids and statuses that are numbers: anything beyond int64 is not an id.
MAX_INT = 2**63


def _as_id(value: Any) -> str | None:
    # Ids are strings in Polarity, but a number is unambiguous enough to keep; 5 and "5" are
    # the same id (and the same label).
    if type(value) is str:
        return value[:MAX_TEXT] or None
    if type(value) is int and -MAX_INT < value < MAX_INT:
        return str(value)
    return None


def as_json_number(value: Decimal) -> Any:
    """A number the streaming reader (ijson) gives as Decimal, as the whole-body readers give
    the same text: a float, or OUT_OF_RANGE past a float's range. So 2.50 reads as 2.5, 1e20 as
    1e20 and 1.0000000000000001 as 1.0 on both paths."""
    return json_float(str(value))


def _as_text(value: Any) -> str | None:
    if type(value) is str:
        return value[:MAX_TEXT]
    if type(value) is int:
        return str(value) if -MAX_INT < value < MAX_INT else None
    if isinstance(value, Decimal):
        value = as_json_number(value)
    if type(value) is float and math.isfinite(value):
        # `status` arrives as a number from some integrations; keep its usual spelling.
        return str(int(value)) if value.is_integer() else str(value)
    return None


def _attributes(item: dict[str, Any]) -> dict[str, Any]:
    attrs = item.get("attributes")
    return attrs if isinstance(attrs, dict) else {}


def parse_integration(item: Any, problems: Problems,
                      max_text: int = MAX_TEXT) -> Integration | None:
    """One item of GET /api/integrations; None (and a counted problem) if it has no usable id."""
    if not isinstance(item, dict):
        problems["integration"] += 1
        return None
    integration_id = _as_id(item.get("id"))
    if integration_id is None:
        problems["id"] += 1
        return None
    attrs = _attributes(item)
    return build_integration(integration_id, _text_field(attrs, "name", problems),
                        _text_field(attrs, "acronym", problems),
                        _text_field(attrs, "version", problems), _as_text(attrs.get("status")),
                        _error_refs(item, problems), problems, max_text)


def build_integration(integration_id: str, name: str, acronym: str, version: str,
                 status: str | None, error_refs: int | None, problems: Problems,
                 max_text: int) -> Integration:
    """What both readers of the listing share: the cuts, and an unreadable status counted."""
    if status is None:
        problems["status"] += 1
    # Records outlive their page until the scrape is built: keep no more text than a label.
    return Integration(id=integration_id[:MAX_ID], name=name[:max_text],
                       acronym=acronym[:max_text], version=version[:max_text],
                       status=(status or "")[:max_text], error_refs=error_refs)


def _text_field(attrs: dict[str, Any], key: str, problems: Problems) -> str:
    """An optional text attribute: absent is "", present but unreadable is "" and counted."""
    value = attrs.get(key)
    if value is None:
        return ""
    text = _as_text(value)
    if text is None:
        problems[key] += 1
        return ""
    return text


def _error_refs(item: dict[str, Any], problems: Problems) -> int | None:
    relationships = item.get("relationships")
    if not isinstance(relationships, dict):
        return None
    errors = relationships.get("integration-errors")
    data = errors.get("data") if isinstance(errors, dict) else None
    if not isinstance(data, list):
        problems["relationships.integration-errors"] += 1
        return None
    return len(data)


def parse_error(item: Any, problems: Problems, text: bool = False) -> ErrorRecord | None:
    """One record of GET /api/integrations/errors; None only when its integration is unknown.

    Called for every record of a body outside the documented shape (documented.py reads
    the others) and of every streamed body: each field is first tried as the type Polarity
    documents, with one `type() is` check; the defensive readers run only for anything else.
    """
    if type(item) is not dict:
        problems["error"] += 1
        return None
    attrs = item.get("attributes")
    if type(attrs) is not dict:
        attrs = {}
    integration_id = attrs.get("integration-id")
    if type(integration_id) is not str or not integration_id:
        integration_id = _as_id(integration_id) or _relationship_id(item)
        if integration_id is None:
            problems["integration-id"] += 1
            return None
    count = attrs.get("error-count")
    if type(count) is int and 0 <= count <= _MAX_COUNT:
        count = float(count)
    else:
        count = _count(count, problems)
    record = build_record(integration_id, attrs.get("code"), count, attrs.get("occurred-on"),
                     _affected_users(attrs.get("meta"), problems), problems)
    if text:
        record.text = error_text(_as_id(item.get("id")), attrs.get("title"), attrs.get("detail"))
    return record


def error_text(ident: Any, title: Any, detail: Any) -> ErrorText:
    def cut(value: Any) -> str | None:
        text = _as_text(value)
        return text[:MAX_EVENT_TEXT] if text is not None else None
    return ErrorText(cut(ident), cut(title), cut(detail))


def parse_errors(items: Iterable[Any], problems: Problems,
                 text: bool = False) -> Iterator[ErrorRecord]:
    """`parse_error` over decoded records, leaving out those without an integration."""
    for item in items:
        record = parse_error(item, problems, text)
        if record is not None:
            yield record


def build_record(integration_id: str, code: Any, count: float | None, occurred_on: Any,
            affected_users: tuple[str, ...], problems: Problems) -> ErrorRecord:
    """What both readers of error records share: the cuts, the code and the timestamp."""
    if len(integration_id) > MAX_ID:
        integration_id = integration_id[:MAX_ID]
    if type(code) is not str:
        code = _as_text(code)
        if code is None:
            problems["code"] += 1
            code = ""
    elif len(code) > MAX_TEXT:
        code = code[:MAX_TEXT]
    return ErrorRecord(integration_id, code, count, read_timestamp(occurred_on, problems),
                       affected_users)


def _relationship_id(item: dict[str, Any]) -> str | None:
    relationships = item.get("relationships")
    integration = relationships.get("integration") if isinstance(relationships, dict) else None
    data = integration.get("data") if isinstance(integration, dict) else None
    return _as_id(data.get("id")) if isinstance(data, dict) else None


# Counts above 2**53 lose integer precision as floats: such a value is not a real count.
_MAX_COUNT = float(2**53)


def _count(value: Any, problems: Problems) -> float | None:
    """A non-negative whole number up to 2**53; anything else (1e400, -3, 2.5, "many", a
    20-digit count) is an unreadable field."""
    number: float | None = None
    if type(value) is int:
        number = float(value) if 0 <= value <= _MAX_COUNT else None
    elif type(value) is float or isinstance(value, Decimal):
        if isinstance(value, Decimal):
            value = as_json_number(value)
        if type(value) is float and math.isfinite(value) and 0 <= value <= _MAX_COUNT \
                and value == int(value):
            number = value
    elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit() \
            and len(value.strip()) <= 16:
        # ASCII only: str.isdigit() also accepts "²", which float() rejects.
        number = float(value.strip())
        if number > _MAX_COUNT:
            number = None
    if number is None:
        problems["error-count"] += 1
    return number


# A record's occurred-on stays the same from scrape to scrape, and parsing one costs about a
# microsecond: each distinct text is parsed once (memo.py: at most twice the limit, about 150
# bytes an entry).
TIMESTAMPS_LIMIT = 20_000


def parse_timestamp(value: str) -> float:
    """ISO 8601 as Polarity writes it: space or T, optional fraction, Z or an offset or none."""
    return TIMESTAMPS(value)


def _parse_timestamp(value: str) -> float:
    try:
        # Python 3.11 reads the usual forms (space or T, "Z", offsets) directly: one C call per
        # record on the hot path. The rest (a lower-case "z", padding) is normalised below.
        parsed = datetime.fromisoformat(value)
    except ValueError:
        parsed = _fromisoformat_lenient(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)  # Polarity stores UTC
    return parsed.timestamp()


def _fromisoformat_lenient(value: str) -> datetime:
    text = value.strip()
    if text.endswith(("z", "Z")):
        text = text[:-1] + "+00:00"
    return datetime.fromisoformat(text)


TIMESTAMPS: Memo[str, float] = Memo(_parse_timestamp, TIMESTAMPS_LIMIT)


def read_timestamp(value: Any, problems: Problems) -> float | None:
    if isinstance(value, str) and 10 <= len(value) <= 64:
        try:
            return parse_timestamp(value)
        except ValueError:
            pass
    problems["occurred-on"] += 1
    return None


def _affected_users(meta: Any, problems: Problems) -> tuple[str, ...]:
    # Affected users are reported "when known": an absent list is normal, a malformed one is not.
    if type(meta) is not dict:
        return ()
    users = meta.get("affected_users")
    if users is None:
        return ()
    if type(users) is not list:
        problems["meta.affected_users"] += 1
        return ()
    ids: list[str] = []
    for user in users:
        user_id = user.get("id") if type(user) is dict else None
        if type(user_id) is not str or not user_id:
            user_id = _as_id(user_id)
            if user_id is None:
                problems["meta.affected_users"] += 1
                continue
        ids.append(user_id)
    return tuple(ids)

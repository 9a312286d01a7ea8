"""Bodies in the documented shape, read in C by msgspec: the errors body and listing pages.

Almost every body is exactly what the API page describes. msgspec decodes such a body straight
into the few fields the exporter reads, in C, skipping everything else (stack traces, HTTP
details, titles) without building it. Each field is typed as narrowly as the documentation
allows, so a body msgspec accepts holds only values that models.py's generic readers read the
same way; a body with anything else anywhere is refused whole, and the caller decodes it
generically. Both readers end in models.build_record / build_integration, and they agree on
every body the first accepts (tests/test_models.py: every field x every deviation).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Final

import msgspec

from polarity_exporter.jsondecode import too_dense
from polarity_exporter.models import (
    MAX_ID,
    MAX_INT,
    MAX_TEXT,
    TIMESTAMPS,
    ErrorRecord,
    Integration,
    Problems,
    build_integration,
    build_record,
    error_text,
    read_timestamp,
)

_NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]


class _User(msgspec.Struct, gc=False):
    id: _NonEmpty


class _ErrorMeta(msgspec.Struct, gc=False):
    affected_users: list[_User] | None = None


class _ErrorAttributes(msgspec.Struct, gc=False,
                       rename={"integration_id": "integration-id", "count": "error-count",
                               "occurred_on": "occurred-on"}):
    integration_id: _NonEmpty
    # Integrations raise errors whose code is a number. Within int64 only: beyond it the
    # generic decoder gives some integers as floats, which read differently.
    code: str | Annotated[int, msgspec.Meta(ge=1 - MAX_INT, le=MAX_INT - 1)]
    count: Annotated[int, msgspec.Meta(ge=0, le=2**53)]
    occurred_on: str
    meta: _ErrorMeta | None = None


class _ErrorItem(msgspec.Struct, gc=False):
    attributes: _ErrorAttributes


class _ErrorsBody(msgspec.Struct, gc=False):
    data: list[_ErrorItem]


# With error events on, the id, title and detail too (as documented: strings; anything else
# sends the body to the generic reader, which reads them as text).
class _TextAttributes(_ErrorAttributes, gc=False):
    title: str | None = None
    detail: str | None = None


class _TextItem(msgspec.Struct, gc=False):
    attributes: _TextAttributes
    id: str | None = None


class _TextBody(msgspec.Struct, gc=False):
    data: list[_TextItem]


_ERRORS_BODY: Final = msgspec.json.Decoder(_ErrorsBody)


# A page of the listing in the documented shape, likewise. Each error reference becomes an
# empty struct (counted, nothing of it read); the page passed jsondecode's density check first,
# so there are at most a few of them per hundred bytes of page.
class _Ref(msgspec.Struct, gc=False):
    pass


class _ErrorRefs(msgspec.Struct, gc=False):
    data: list[_Ref]


class _Relationships(msgspec.Struct, gc=False, rename={"errors": "integration-errors"}):
    errors: _ErrorRefs


_Int64 = Annotated[int, msgspec.Meta(ge=1 - MAX_INT, le=MAX_INT - 1)]


class _IntegrationAttributes(msgspec.Struct, gc=False):
    name: str | None = None
    acronym: str | None = None
    version: str | None = None
    status: str | _Int64 | None = None


class _IntegrationItem(msgspec.Struct, gc=False):
    id: _NonEmpty
    attributes: _IntegrationAttributes | None = None
    relationships: _Relationships | None = None


class _PageCount(msgspec.Struct, gc=False):
    total: Annotated[int, msgspec.Meta(ge=0, le=MAX_INT - 1)]


class _PageMeta(msgspec.Struct, gc=False):
    page: _PageCount


class _ListingPage(msgspec.Struct, gc=False):
    data: list[_IntegrationItem]
    meta: _PageMeta


_LISTING_PAGE: Final = msgspec.json.Decoder(_ListingPage)
_NO_ATTRIBUTES: Final = _IntegrationAttributes()


class DocumentedPage:
    """A listing page in the documented shape, as msgspec decoded it, not yet Integrations."""

    __slots__ = ("items", "total")

    def __init__(self, items: list[_IntegrationItem], total: int) -> None:
        self.items = items
        self.total = total

    def __len__(self) -> int:
        return len(self.items)


def documented_page(raw: bytes) -> DocumentedPage | None:
    """The page's items in the documented shape; None for any other page (or one too dense to
    decode safely), which the caller decodes generically."""
    if too_dense(raw):
        return None
    try:
        page = _LISTING_PAGE.decode(raw)
    except _REFUSED:
        return None
    return DocumentedPage(page.data, page.meta.page.total)


def documented_integrations(page: DocumentedPage, problems: Problems,
                            max_text: int = MAX_TEXT) -> list[Integration]:
    """The Integrations of a documented page: what parse_integration reads from each item."""
    parsed = []
    for item in page.items:
        attrs = item.attributes or _NO_ATTRIBUTES
        status = attrs.status
        relationships = item.relationships
        parsed.append(build_integration(
            item.id[:MAX_TEXT], (attrs.name or "")[:MAX_TEXT], (attrs.acronym or "")[:MAX_TEXT],
            (attrs.version or "")[:MAX_TEXT],
            status[:MAX_TEXT] if type(status) is str else None if status is None else str(status),
            len(relationships.errors.data) if relationships is not None else None,
            problems, max_text))
    return parsed
_TEXT_BODY: Final = msgspec.json.Decoder(_TextBody)
# ValueError: invalid UTF-8 (UnicodeDecodeError). RecursionError: deep nesting, even in a
# skipped field.
_REFUSED = (msgspec.MsgspecError, ValueError, RecursionError)


class DocumentedErrors:
    """An errors body in the documented shape, as msgspec decoded it, not yet records.

    summary.ErrorSummary.add_documented folds these items straight into the summary, without an
    ErrorRecord per record (about half the CPU of building records and then folding them);
    iterating gives the records, as `_records` builds them, for any other reader.
    """

    __slots__ = ("items", "problems")

    def __init__(self, items: list[_ErrorItem], problems: Problems) -> None:
        self.items = items
        self.problems = problems

    def __iter__(self) -> Iterator[ErrorRecord]:
        return iter(_records(self.items, self.problems))

    def __len__(self) -> int:
        return len(self.items)


def documented_batch(body: bytes, problems: Problems) -> DocumentedErrors | None:
    """The errors body's items in the documented shape; None for any other body."""
    try:
        return DocumentedErrors(_ERRORS_BODY.decode(body).data, problems)
    except _REFUSED:
        return None


_PIECE: Final = msgspec.json.Decoder(list[_ErrorItem])


def documented_piece(data: bytes, begin: int, end: int,
                     problems: Problems) -> DocumentedErrors | None:
    """The records of data[begin:end], a piece of a streamed errors body (records and the commas
    between them), in the documented shape; None for anything else, which includes a piece
    that does not end where a record ends: `[piece]` is then no JSON array."""
    try:
        items = _PIECE.decode(b"".join((b"[", memoryview(data)[begin:end], b"]")))
    except _REFUSED:
        return None
    return DocumentedErrors(items, problems)


Row = tuple[str, str, float | None, float | None, tuple[str, ...]]


def documented_rows(batch: DocumentedErrors) -> Iterator[Row]:
    """Each item's (integration id, code, count, occurred-on, affected users), exactly the
    fields of the record `_records` would build, without building it."""
    problems = batch.problems
    remembered = TIMESTAMPS.get  # the usual case; read_timestamp parses and remembers
    for item in batch.items:
        attrs = item.attributes
        integration_id, code, occurred_on = attrs.integration_id, attrs.code, attrs.occurred_on
        meta = attrs.meta
        users = meta.affected_users if meta is not None else None
        ids = tuple([user.id for user in users]) if users else ()
        if type(code) is not str or len(integration_id) > MAX_ID or len(code) > MAX_TEXT:
            record = build_record(integration_id, code, float(attrs.count), occurred_on, ids,
                             problems)  # a cut, or a number for a code: the common reader
            yield (record.integration_id, record.code, record.count, record.occurred_on, ids)
            continue
        # _timestamp, with its table looked up first: one dict lookup per record.
        seconds = remembered(occurred_on) if 10 <= len(occurred_on) <= 64 else None
        if seconds is None:
            seconds = read_timestamp(occurred_on, problems)
        yield integration_id, code, float(attrs.count), seconds, ids


def documented_errors(body: bytes, problems: Problems,
                      text: bool = False) -> list[ErrorRecord] | None:
    """The records of an errors body in the documented shape; None for any other body.

    Memory: only the fields above are built, a few objects per record (at most about 11 times
    the body, for a body of nothing but one-character user ids); the body is already bounded in
    size by the reader (client.WHOLE_ERRORS_BYTES).
    """
    try:
        if text:
            detailed = _TEXT_BODY.decode(body).data
            records = _records(detailed, problems)  # type: ignore[arg-type]
            for record, item in zip(records, detailed, strict=True):
                record.text = error_text(item.id, item.attributes.title, item.attributes.detail)
            return records
        items = _ERRORS_BODY.decode(body).data
    except _REFUSED:
        return None
    return _records(items, problems)


def _records(items: list[_ErrorItem], problems: Problems) -> list[ErrorRecord]:
    records = []
    for item in items:
        attrs = item.attributes
        meta = attrs.meta
        users = meta.affected_users if meta is not None else None
        records.append(build_record(attrs.integration_id, attrs.code, float(attrs.count),
                               attrs.occurred_on,
                               tuple([user.id for user in users]) if users else (), problems))
    return records

"""Errors bodies for the readers' tests: the documented shape, and every way a record can
deviate from it (documented.documented_errors, errorstream.py)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st


class _Absent:
    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Any = _Absent()  # a key left out of the record


def body_of(records: list[Any], ascii_only: bool = True) -> bytes:
    # surrogatepass: a lone surrogate written raw is invalid UTF-8, one more thing to read.
    return json.dumps({"data": records, "jsonapi": {"version": "1.0"}},
                      ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


TIMESTAMPS = st.sampled_from(["2024-04-08 14:20:07.834943Z", "2024-04-08T14:20:07Z",
                              "2024-04-08T16:20:07.834943+02:00", "2024-04-08 14:20:07",
                              "2024-04-08", "yesterday", "2024-13-45 99:99:99Z", ""])
DOCUMENTED = st.fixed_dictionaries({
    "id": st.text(max_size=8), "type": st.just("integration-errors"),
    "attributes": st.fixed_dictionaries({
        "integration-id": st.text(min_size=1, max_size=40), "code": st.text(max_size=40),
        "error-count": st.integers(0, 2**53), "occurred-on": TIMESTAMPS,
        "title": st.text(max_size=20), "status": st.integers(100, 599) | st.text(max_size=3),
    }, optional={"meta": st.fixed_dictionaries({"stack": st.text(max_size=200)}, optional={
        "affected_users": st.lists(st.fixed_dictionaries(
            {"id": st.text(min_size=1, max_size=8), "username": st.text(max_size=8)}),
            max_size=4)})}),
    "relationships": st.just({"integration": {"data": {"id": "rel", "type": "integrations"}}}),
})


# Where a record can deviate from the documentation, and what it can hold there instead.
PLACES = [(), ("attributes",), ("attributes", "integration-id"), ("attributes", "code"),
          ("attributes", "error-count"), ("attributes", "occurred-on"), ("attributes", "meta"),
          ("attributes", "meta", "affected_users"), ("attributes", "meta", "affected_users", 0),
          ("attributes", "meta", "affected_users", 0, "id"), ("attributes", "meta", "stack")]
VALUES = [ABSENT, None, True, False, 0, -1, 7, 2**53, 2**53 + 1, 2**63 - 1, 2**63, 2**64,
          -(2**63), 2.0, 2.5, -0.0, 1e300, "", "7", "many", "x" * 5000, "a\nb", "\ud800",
          "2024-04-08 14:20:07.834943Z", [], [1], [{}], [{"id": "u"}], {}, {"id": 5},
          {"affected_users": [{"id": "u"}]}]
BASE = {"id": "e1", "type": "integration-errors",
        "attributes": {"integration-id": "vt", "code": "ETIMEDOUT", "error-count": 3,
                       "occurred-on": "2024-04-08 14:20:07.834943Z",
                       "meta": {"stack": "at x", "affected_users": [{"id": "1"}, {"id": "2"}]}},
        "relationships": {"integration": {"data": {"id": "rel", "type": "integrations"}}}}


def changed(record: Any, place: tuple[Any, ...], value: Any) -> Any:
    """`record` with the value at `place` replaced (ABSENT: removed); unchanged where the
    place does not exist."""
    if not place:
        return value
    if (isinstance(record, dict) and place[0] in record) or \
            (isinstance(record, list) and isinstance(place[0], int) and place[0] < len(record)):
        copy = dict(record) if isinstance(record, dict) else list(record)
        inner = changed(record[place[0]], place[1:], value)
        if inner is ABSENT:
            del copy[place[0]]
        else:
            copy[place[0]] = inner
        return copy
    return record

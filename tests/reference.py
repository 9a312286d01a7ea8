"""A deliberately naive reference for what the exporter must export, computed from the raw JSON
the simulator serves. It shares no code with the exporter: it is the specification in code.
"""

from __future__ import annotations

import re
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[str, dict[frozenset[tuple[str, str]], float]]


def scrape(url: str, **kwargs: Any) -> Samples:
    """GET a metrics URL and index every sample by name and label set."""
    response = requests.get(url, timeout=30, **kwargs)
    response.raise_for_status()
    return parse(response.text)


def parse(text: str) -> Samples:
    out: Samples = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name][frozenset(sample.labels.items())] = sample.value
    return out


def labels(**pairs: str) -> frozenset[tuple[str, str]]:
    return frozenset(pairs.items())


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    """{label value: sample value} for a family keyed by one label."""
    return {dict(key)[label]: value for key, value in samples.get(name, {}).items()}


def clean(text: str, max_length: int = 128) -> str:
    text = re.sub(r"[\x00-\x1f\x7f-\x9f]", " ", text)
    return text if len(text) <= max_length else text[: max_length - 1] + "\u2026"


def to_unix(value: str) -> float:
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def expected_errors(errors: list[dict[str, Any]], max_codes: int = 20) -> dict[str, Any]:
    """Per integration: record count, users, and per code (occurrences, newest timestamp)."""
    records: dict[str, int] = defaultdict(int)
    users: dict[str, set[str]] = defaultdict(set)
    codes: dict[str, dict[str, list[float]]] = defaultdict(dict)
    for error in errors:
        attrs = error["attributes"]
        iid = attrs["integration-id"]
        records[iid] += 1
        for user in (attrs.get("meta") or {}).get("affected_users") or []:
            users[iid].add(str(user["id"]))
        entry = codes[iid].setdefault(clean(attrs["code"]), [0.0, 0.0])
        entry[0] += attrs["error-count"]
        entry[1] = max(entry[1], to_unix(attrs["occurred-on"]))
    for iid, per_code in codes.items():
        if len(per_code) > max_codes:
            ranked = sorted(per_code.items(), key=lambda kv: (-kv[1][0], kv[0]))
            kept = dict(ranked[: max_codes - 1])
            rest = ranked[max_codes - 1:]
            kept["other"] = [sum(v[0] for _, v in rest), max(v[1] for _, v in rest)]
            codes[iid] = kept
    return {"records": dict(records), "users": {k: len(v) for k, v in users.items()},
            "codes": dict(codes)}

"""Synthetic, seed-reproducible Polarity data: integrations and integration errors.

The records are built as plain dicts, exactly as the simulator serves them, so tests can compute
their expectations from `Dataset` instead of hard-coding numbers. Every quirk the API notes
mention (string status, `T`/offset timestamps, odd characters, orphans, integrations without a
version or without errors) is present whenever the dataset is large enough to hold it.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, TypeVar

T = TypeVar("T")

JsonDict = dict[str, Any]

# 2024-09-02T12:06:58Z: the epoch in the vendor's example id `virustotal_node_18_1725278818`.
DEFAULT_BASE_TIME = 1725278818.0

# The exporter caps distinct codes per integration at 20 by default; "wide" integrations get
# more than that so the cap is exercised.
WIDE_CODE_COUNT = 24

_CATALOG: tuple[tuple[str, str, str], ...] = (
    ("virustotal", "VirusTotal", "VT"),
    ("shodan", "Shodan", "SHO"),
    ("greynoise", "GreyNoise", "GN"),
    ("abuseipdb", "AbuseIPDB", "ABIP"),
    ("urlhaus", "URLhaus", "UH"),
    ("threatconnect", "ThreatConnect", "TC"),
    ("splunk", "Splunk", "SPL"),
    ("crowdstrike", "CrowdStrike Falcon", "CS"),
    ("recorded_future", "Recorded Future", "RF"),
    ("misp", "MISP", "MISP"),
    ("servicenow", "ServiceNow", "SNOW"),
    ("whois", "Whois", "WHOIS"),
    ("passivetotal", "PassiveTotal", "PT"),
    ("domaintools", "DomainTools Iris", "DTI"),
    ("hybrid_analysis", "Hybrid Analysis", "HA"),
    ("alienvault_otx", "AlienVault OTX", "OTX"),
    ("urlscan", "urlscan.io", "URLS"),
    ("censys", "Censys", "CEN"),
    ("elasticsearch", "Elasticsearch", "ES"),
    ("jira", "Jira", "JIRA"),
)

# Names with characters that break naive label escaping or encoding.
_QUIRKY_NAMES: tuple[str, ...] = (
    'Splunk "Enterprise" Search',
    "C:\\Intel\\Lookup",
    "Überwachung — Zürich ✓",
    "O'Reilly's IOC feed",
    "漢字 Threat Intel",
)

# Codes are free text written by each integration; these are the awkward ones.
_QUIRKY_CODES: tuple[str, ...] = (
    'Unexpected token "<" in JSON at position 0',
    "ENOENT: no such file C:\\certs\\ca.pem",
    "Zeitüberschreitung — upstream ✗",
    "Request failed\nwith status code 502",
)

_COMMON_CODES: tuple[str, ...] = (
    "ETIMEDOUT",
    "ECONNREFUSED",
    "ECONNRESET",
    "ENOTFOUND",
    "ESOCKETTIMEDOUT",
    "Request failed with status code 401",
    "Request failed with status code 429",
    "Request failed with status code 500",
    "Invalid API key",
    "Quota exceeded",
    "Unexpected response format",
    "Certificate has expired",
)

_STATUSES = ("running", "stopped", "failed", "initializing")
_STATUS_WEIGHTS = (70, 12, 10, 8)
_HTTP_STATUSES = (400, 401, 403, 404, 429, 500, 502, 503, 504)
_ENTITY_TYPES = ("IPv4", "IPv6", "domain", "url", "hash", "email", "cve")

# How `occurred-on` is written: the documented form first, then the variants the notes allow.
_SPACE_Z, _T_Z, _OFFSET = "space-z", "t-z", "offset"
_PLUS_TWO = timezone(timedelta(hours=2))

_STACK_LINES = (
    "    at Request._callback (/app/integrations/{slug}/integration.js:{line}:17)\n",
    "    at self.callback (/app/node_modules/request/request.js:185:22)\n",
    "    at Request.emit (node:events:517:28)\n",
    "    at TLSSocket.onReadableStreamEnd (node:_http_client:{line}:9)\n",
    "    at processTicksAndRejections (node:internal/process/task_queues:82:21)\n",
)


@dataclass(frozen=True)
class DatasetSpec:
    """What to generate; the simulator copies these fields from its config."""

    seed: int = 7
    integrations: int = 25
    errors: int = 80
    meta_bytes: int = 200
    base_time: float = DEFAULT_BASE_TIME


@dataclass
class Dataset:
    """The raw JSON:API dicts, exactly as served (do not mutate: bodies are cached)."""

    integrations: list[JsonDict] = field(default_factory=list)
    errors: list[JsonDict] = field(default_factory=list)

    @property
    def integration_ids(self) -> list[str]:
        return [item["id"] for item in self.integrations]

    @property
    def orphan_integration_ids(self) -> set[str]:
        """Ids that errors point at but that no listed integration has."""
        listed = set(self.integration_ids)
        return {
            err["attributes"]["integration-id"]
            for err in self.errors
            if err["attributes"]["integration-id"] not in listed
        }


def _spread(rng: random.Random, n: int, forced: Sequence[T], pool: Sequence[T],
            weights: Sequence[int]) -> list[T]:
    """n values: every `forced` value at least once (when n allows), the rest weighted, shuffled.

    Guarantees the quirks appear even in small datasets, while big ones keep realistic ratios.
    """
    values = list(forced[:n]) + rng.choices(pool, weights=weights, k=max(0, n - len(forced)))
    rng.shuffle(values)
    return values


def _integration_ids(rng: random.Random, n: int, base_time: float) -> list[tuple[str, str, str]]:
    """(id, name, acronym) for n integrations, ids unique like `virustotal_node_18_1725278818`."""
    out: list[tuple[str, str, str]] = []
    seen: set[str] = set()
    for i in range(n):
        slug, name, acronym = _CATALOG[i % len(_CATALOG)]
        round_ = i // len(_CATALOG)
        if round_:
            suffix = round_ + 1
            slug, name, acronym = f"{slug}_{suffix}", f"{name} {suffix}", f"{acronym}{suffix}"
        if i % 5 == 3:
            name = _QUIRKY_NAMES[(i // 5) % len(_QUIRKY_NAMES)]
        while True:
            node = rng.choice((16, 18, 20))
            installed = int(base_time) - rng.randrange(0, 400 * 86400)
            ident = f"{slug}_node_{node}_{installed}"
            if ident not in seen:
                break
        seen.add(ident)
        out.append((ident, name, acronym))
    return out


def _integration(rng: random.Random, ident: str, name: str, acronym: str, status: str,
                 has_version: bool) -> JsonDict:
    attributes: JsonDict = {
        "name": name,
        "acronym": acronym,
        "description": f"Look up indicators in {name}.",
        "status": status,
        "autosubscribe": rng.random() < 0.3,
        "entity-types": sorted(rng.sample(_ENTITY_TYPES, rng.randint(1, 4))),
        "custom-types": [],
        "tls-allow-unauthorized": rng.random() < 0.1,
    }
    if has_version:
        attributes["version"] = f"{rng.randint(1, 4)}.{rng.randint(0, 12)}.{rng.randint(0, 9)}"
    options = [
        {"id": f"{ident}-option-{k}", "type": "integration-options"}
        for k in range(rng.randint(0, 3))
    ]
    return {
        "type": "integrations",
        "id": ident,
        "attributes": attributes,
        "links": {"self": f"/api/integrations/{ident}"},
        "relationships": {
            "integration-errors": {
                "data": [],  # filled in once the errors exist, so both stay consistent
                "links": {"self": f"/api/integration-errors?filter[integration.id]={ident}"},
            },
            "integration-options": {
                "data": options,
                "links": {"self": f"/api/integration-options?filter[integration.id]={ident}"},
            },
        },
    }


def _vocabulary(rng: random.Random, position: int, wide: bool) -> list[str]:
    """The codes one integration writes: small, so codes repeat; first entry used first."""
    size = WIDE_CODE_COUNT + rng.randint(0, 6) if wide else rng.randint(2, 5)
    codes = rng.sample(_COMMON_CODES, min(size, len(_COMMON_CODES)))
    codes += [f"Lookup failed for entity batch {k}" for k in range(size - len(codes))]
    if position % 2 == 0:
        # Every other integration leads with an awkward code, so each quirk is really emitted.
        codes.insert(0, _QUIRKY_CODES[(position // 2) % len(_QUIRKY_CODES)])
    return codes


def _owners(rng: random.Random, m: int, with_errors: list[str], orphans: list[str],
            wide: list[str]) -> list[str]:
    """Which integration id each of the m records belongs to."""
    owners = list(with_errors)  # every integration chosen to have errors gets at least one
    owners += orphans
    for ident in wide:
        owners += [ident] * (WIDE_CODE_COUNT - 1)
    owners = owners[:m]
    targets = with_errors + orphans
    if targets:
        owners += rng.choices(targets, k=m - len(owners))
    rng.shuffle(owners)  # the server lists errors in no particular order
    return owners


def _stack(slug: str, size: int, variant: int) -> str:
    lines = [f"Error: lookup failed (variant {variant})\n"]
    k = 0
    while sum(map(len, lines)) < size:
        lines.append(_STACK_LINES[k % len(_STACK_LINES)].format(slug=slug, line=100 + variant + k))
        k += 1
    return "".join(lines)[:size]


def _occurred_on(moment: datetime, style: str) -> str:
    if style == _OFFSET:
        return moment.astimezone(_PLUS_TWO).isoformat(timespec="microseconds")
    sep = " " if style == _SPACE_Z else "T"
    return moment.strftime(f"%Y-%m-%d{sep}%H:%M:%S.%fZ")


def generate(spec: DatasetSpec) -> Dataset:
    """Build the whole dataset from `spec.seed`; the same spec always gives equal data."""
    rng = random.Random(spec.seed)
    n, m = max(0, spec.integrations), max(0, spec.errors)
    names = _integration_ids(rng, n, spec.base_time)
    statuses = _spread(rng, n, ["running", *_STATUSES[1:]], _STATUSES, _STATUS_WEIGHTS)
    versioned = _spread(rng, n, [True, False], [True, False], [85, 15])
    integrations = [
        _integration(rng, ident, name, acronym, status, has_version)
        for (ident, name, acronym), status, has_version in zip(names, statuses, versioned,
                                                               strict=True)
    ]

    ids = [ident for ident, _, _ in names]
    # About 60% of integrations have errors; at least one has none when there are two or more.
    with_errors = [ident for ident in ids if rng.random() < 0.6] or ids[:1]
    if len(ids) >= 2 and len(with_errors) == len(ids):
        with_errors.pop(rng.randrange(len(with_errors)))
    # A few records point at integrations that are not listed (uninstalled ones, say).
    n_orphans = 0 if m == 0 or (m < 3 and ids) else min(3, 1 + m // 200)
    orphans = [f"retired_{_CATALOG[k % len(_CATALOG)][0]}_node_14_{1600000000 + k}"
               for k in range(n_orphans)]
    # Wide integrations only when the records allow them without starving the others.
    spare = m - len(with_errors) - n_orphans
    n_wide = min(max(1, len(with_errors) // 8), max(0, spare) // (2 * WIDE_CODE_COUNT))
    n_wide = n_wide if with_errors else 0
    wide = rng.sample(with_errors, n_wide)
    vocab = {ident: _vocabulary(rng, pos, ident in wide)
             for pos, ident in enumerate(with_errors + orphans)}
    display = {ident: name for ident, name, _ in names}
    owners = _owners(rng, m, with_errors, orphans, wide)

    styles = _spread(rng, m, [_SPACE_Z, _T_Z, _OFFSET], [_SPACE_Z, _T_Z, _OFFSET], [80, 10, 10])
    status_as_text = _spread(rng, m, [False, True], [False, True], [60, 40])
    with_users = _spread(rng, m, [True, False], [True, False], [85, 15])
    user_pool = [{"id": str(100 + k), "username": f"analyst{k:02d}"}
                 for k in range(max(6, min(60, m // 10)))]
    stacks = [_stack("integration", spec.meta_bytes, v) for v in range(16)]
    base = datetime.fromtimestamp(spec.base_time, UTC)

    used: dict[str, int] = {}
    errors: list[JsonDict] = []
    for k, owner in enumerate(owners):
        codes = vocab[owner]
        seq = used.get(owner, 0)
        used[owner] = seq + 1
        # Walk the vocabulary in order first (distinct codes guaranteed), then pick freely.
        code = codes[seq] if seq < len(codes) else rng.choice(codes)
        moment = base - timedelta(seconds=rng.randrange(0, 14 * 86400),
                                  microseconds=rng.randrange(0, 1_000_000))
        http_status = rng.choice(_HTTP_STATUSES)
        meta: JsonDict = {
            "stack": stacks[rng.randrange(len(stacks))],
            "http": {"status": http_status, "method": "GET"},
        }
        if with_users[k]:
            meta["affected_users"] = rng.sample(user_pool, rng.randint(1, min(4, len(user_pool))))
        error_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        label = display.get(owner, owner)
        errors.append({
            "type": "integration-errors",
            "id": error_id,
            "attributes": {
                "code": code,
                "title": f"{label} lookup failed",
                "detail": f"{label} returned an error while looking up entities: {code}",
                "error-count": max(1, int(rng.expovariate(1 / 25))),
                "integration-id": owner,
                "meta": meta,
                "occurred-on": _occurred_on(moment, styles[k]),
                "status": str(http_status) if status_as_text[k] else http_status,
            },
            "links": {"self": f"/api/integration/{owner}/errors/{error_id}"},
            "relationships": {"integration": {"data": {"id": owner, "type": "integrations"}}},
        })

    by_id = {item["id"]: item for item in integrations}
    for err in errors:
        item = by_id.get(err["attributes"]["integration-id"])
        if item is not None:  # orphans appear in no integration's relationships
            item["relationships"]["integration-errors"]["data"].append(
                {"id": err["id"], "type": "integration-errors"})
    return Dataset(integrations=integrations, errors=errors)

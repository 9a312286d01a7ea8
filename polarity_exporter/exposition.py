"""Families -> the Prometheus text format (0.0.4) and OpenMetrics 1.0, byte for byte what
prometheus_client writes, at a fraction of its cost.

prometheus_client checks and escapes every label *name* of every sample and formats each line
through several calls; on a scrape of a few hundred integrations that was most of the
exporter's CPU (bench/README.md, "Where the time goes"). The families built here have valid
names by construction, and the samples of one integration share one label dict, so each label
set is rendered once. Anything outside that simple shape (other types, timestamps, exemplars,
names that need escaping) is handed to prometheus_client's own encoder, family by family.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client.exposition import choose_encoder
from prometheus_client.exposition import generate_latest as client_text
from prometheus_client.openmetrics.exposition import generate_latest as client_openmetrics
from prometheus_client.registry import Collector

from polarity_exporter.memo import Memo
from polarity_exporter.metrics import Built

_LEGACY_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LEGACY_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_SIMPLE_TYPES = frozenset({"gauge", "counter", "unknown"})
_INF, _MINUS_INF = math.inf, -math.inf


class _One(Collector):
    def __init__(self, family: Any) -> None:
        self._family = family

    def collect(self) -> Iterator[Any]:
        yield self._family


# Sample values repeat from scrape to scrape (counts, the timestamps of records that stay), and
# repr() of a 16-digit float costs microseconds: the text of each distinct value is remembered
# (memo.py: at most twice the limit). Zero is never kept (0.0 == -0.0, whose texts differ), nor
# NaN (never equal to itself, so never found).
FLOAT_TEXTS_LIMIT = 20_000
_FLOAT_TEXTS: Memo[float, str] = Memo(lambda value: _go_float(value), FLOAT_TEXTS_LIMIT)


def go_float(value: float) -> str:
    """prometheus_client's floatToGoString."""
    text = _FLOAT_TEXTS.get(value)
    if text is not None:
        return text
    text = _go_float(value)
    if value and value == value:
        _FLOAT_TEXTS.remember(value, text)
    return text


def _go_float(value: float) -> str:
    if value == _INF:
        return "+Inf"
    if value == _MINUS_INF:
        return "-Inf"
    if value != value:  # NaN
        return "NaN"
    text = repr(float(value))
    dot = text.find(".")
    if value > 0 and dot > 6:  # Go switches to exponents sooner than Python
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1:]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text


def _escape(value: str) -> str:
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return value


class _NotSimple(Exception):
    """A family this encoder leaves to prometheus_client."""


def _lines(family: Any, rendered: dict[int, str]) -> bytes:
    """The family's sample lines, encoded; those of a Built family once, kept on it in place
    of its samples (which nothing reads after: the text takes less memory than they did)."""
    if type(family) is not Built:
        return "".join(_samples(family, family.samples, rendered)).encode("utf-8")
    # Two scrapes sharing a fetch may encode the same new family at once. Whoever finishes
    # first sets `lines`, then lets the samples go: so a thread that finds the samples gone
    # finds `lines` set (read again after taking the samples), and never writes the text of
    # an emptied list.
    lines = family.lines
    if lines is None:
        samples = family.samples
        lines = family.lines
        if lines is None:
            lines = "".join(_samples(family, samples, rendered)).encode("utf-8")
            family.lines = lines
            family.samples = []
    return lines


def _samples(family: Any, samples: list[Any], rendered: dict[int, str]) -> list[str]:
    """The family's sample lines, in one pass; _NotSimple for a family outside the simple shape
    (the check costs nothing extra: it is made on the fields being read anyway)."""
    if family.type not in _SIMPLE_TYPES or not _LEGACY_NAME.fullmatch(family.name):
        raise _NotSimple
    first, second = (family.name, family.name + "_total") if family.type == "counter" \
        else (family.name, family.name)
    lines: list[str] = []
    for name, labels, value, timestamp, exemplar, native in samples:
        if (name != first and name != second) or timestamp is not None \
                or exemplar is not None or native is not None:
            raise _NotSimple
        text = rendered.get(id(labels))
        if text is None:
            text = rendered[id(labels)] = _labels(labels)
        lines.append(f"{name}{text} {go_float(value)}\n")
    return lines


_ORDERS: dict[tuple[str, ...], tuple[str, ...]] = {}  # label names -> sorted, once checked


def _labels(labels: dict[str, str]) -> str:
    """'{a="…",b="…"}' with names sorted and values escaped; _NotSimple for a name that needs
    escaping. The families of a scrape use a handful of label-name sets: each is checked and
    sorted once for the process."""
    if not labels:
        return ""
    names = tuple(labels)
    order = _ORDERS.get(names)
    if order is None:
        if not all(_LEGACY_LABEL.fullmatch(name) for name in names):
            raise _NotSimple
        order = tuple(sorted(names))
        if len(_ORDERS) < 1000:
            _ORDERS[names] = order
    if len(order) == 1:
        return f'{{{order[0]}="{_escape(labels[order[0]])}"}}'
    if len(order) == 2:
        first, second = order
        return f'{{{first}="{_escape(labels[first])}",{second}="{_escape(labels[second])}"}}'
    return "{" + ",".join(f'{name}="{_escape(labels[name])}"' for name in order) + "}"


Part = bytes | Built  # a Built family's part is its kept text (family.lines)


def encode_text(families: Iterable[Any]) -> bytes:
    """The Prometheus text format 0.0.4."""
    return join(text_parts(families))


def encode_openmetrics(families: Iterable[Any]) -> bytes:
    """OpenMetrics 1.0."""
    return join(openmetrics_parts(families))


def join(parts: list[Part]) -> bytes:
    """The answer of text_parts or openmetrics_parts, whole."""
    return b"".join(part.lines or b"" if isinstance(part, Built) else part for part in parts)


def text_parts(families: Iterable[Any]) -> list[Part]:
    """encode_text's answer in parts, a Built family's lines as the family (gzipped.py
    compresses those once)."""
    out: list[Part] = []
    # id(labels dict) -> "{…}": the collector shares one label dict between the samples of an
    # integration (or an integration and code) across families. They are alive until the end.
    rendered: dict[int, str] = {}
    for family in families:
        try:
            samples = _lines(family, rendered)
        except _NotSimple:
            out.append(client_text(_One(family)))
            continue
        name = family.name + "_total" if family.type == "counter" else family.name
        kind = "untyped" if family.type == "unknown" else family.type
        doc = family.documentation.replace("\\", "\\\\").replace("\n", "\\n")
        out.append(f"# HELP {name} {doc}\n# TYPE {name} {kind}\n".encode())
        out.append(family if type(family) is Built else samples)
    return out


def openmetrics_parts(families: Iterable[Any]) -> list[Part]:
    """encode_openmetrics' answer in parts, as text_parts."""
    out: list[Part] = []
    rendered: dict[int, str] = {}  # as in text_parts
    for family in families:
        try:
            samples = _lines(family, rendered)
        except _NotSimple:
            # prometheus_client ends each document with "# EOF": keep one, at the end.
            whole: bytes = client_openmetrics(_One(family))  # type: ignore[no-untyped-call]
            out.append(whole[: -len(b"# EOF\n")])
            continue
        out.append(f"# HELP {family.name} {_escape(family.documentation)}\n"
                   f"# TYPE {family.name} {family.type}\n".encode())
        if family.unit:
            out.append(f"# UNIT {family.name} {family.unit}\n".encode())
        out.append(family if type(family) is Built else samples)
    out.append(b"# EOF\n")
    return out


PARTS: dict[Callable[[Iterable[Any]], bytes], Callable[[Iterable[Any]], list[Part]]] = {
    encode_text: text_parts, encode_openmetrics: openmetrics_parts}


TEXT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_TYPE = ("application/openmetrics-text; version=1.0.0; charset=utf-8; "
                    "escaping=underscores")


def choose(accept: str) -> tuple[Callable[[Iterable[Any]], bytes], str]:
    """The encoder and Content-Type for an Accept header, negotiated as prometheus_client does,
    answered with one of two fixed Content-Types: nothing of the request is echoed into the
    answer's headers, and an Accept prometheus_client cannot read gets the text format."""
    try:
        encoder, _ = choose_encoder(accept)
    except (TypeError, ValueError):  # e.g. "version=1.0.0x" fails prometheus_client's compare
        return encode_text, TEXT_TYPE
    if getattr(encoder, "func", None) is client_openmetrics:
        return encode_openmetrics, OPENMETRICS_TYPE
    return encode_text, TEXT_TYPE

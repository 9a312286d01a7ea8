"""Just enough PromQL reading for the tests: which metric names each call of a function gets.

A tokenizer, not a full parser: strings and ranges/subqueries `[…]` are skipped as units, label
matchers `{…}` are read only for `__name__`; every other identifier that is not a function
name, a keyword or a grouping label list is a metric name, and so is a Grafana `$variable`
(which no scrape knows, so a check fails on it). A call of no readable metric raises. That is
exact for the queries this project writes, and errs on the side of reporting more names.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

_TOKEN = re.compile(r"""
    (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<var>\$\{?[a-zA-Z0-9_]+\}?)
  | (?P<number>(?:0x[0-9a-fA-F]+|[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?)(?:[smhdwy]|ms)*)
  | (?P<open>[({\[])
  | (?P<close>[)}\]])
  | (?P<other>==|!=|=~|!~|>=|<=|[-+*/%^<>=,@])
  | (?P<space>\s+|\#[^\n]*)
""", re.VERBOSE)

KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "bool",
                      "and", "or", "unless", "offset", "inf", "nan"})
GROUPING = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
COUNTER_FUNCTIONS = frozenset({"rate", "irate", "increase", "resets"})
GAUGE_FUNCTIONS = frozenset({"delta", "idelta", "deriv", "predict_linear", "holt_winters",
                             "double_exponential_smoothing"})
_NAME_MATCHER = re.compile(r"""__name__\s*(=~|=)\s*(?:"((?:\\.|[^"\\])*)"|'((?:\\.|[^'\\])*)')""")


def tokens(expr: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    position = 0
    while position < len(expr):
        match = _TOKEN.match(expr, position)
        if match is None:
            raise ValueError(f"cannot read PromQL at {expr[position:position + 20]!r}")
        position = match.end()
        kind = match.lastgroup
        assert kind is not None
        if kind != "space":
            out.append((kind, match.group()))
    return out


def _skip_group(toks: list[tuple[str, str]], start: int) -> int:
    """Index after the bracket group opening at `start`."""
    depth = 0
    for index in range(start, len(toks)):
        kind, _ = toks[index]
        depth += kind == "open"
        depth -= kind == "close"
        if depth == 0:
            return index + 1
    raise ValueError("unbalanced brackets")


def metric_names(toks: list[tuple[str, str]]) -> list[str]:
    """Metric names selected by these tokens, including `{__name__=…}` matchers (a regex gives
    its alternatives) and Grafana variables (`$name`, which no scrape has: reported as is)."""
    names: list[str] = []
    index = 0
    while index < len(toks):
        kind, text = toks[index]
        following = toks[index + 1] if index + 1 < len(toks) else ("", "")
        if kind == "open" and text in "{[":
            end = _skip_group(toks, index)
            if text == "{":  # label matchers: only __name__ names a metric
                matchers = " ".join(t for _, t in toks[index + 1:end - 1])
                for match in _NAME_MATCHER.finditer(matchers):
                    value = match.group(2) if match.group(2) is not None else match.group(3)
                    names += value.split("|") if match.group(1) == "=~" else [value]
            index = end  # ranges and subqueries hold no metric names
            continue
        if kind == "var" and following[1] != "(":
            names.append(text)
        if kind == "ident" and text in GROUPING and following[1] == "(":
            index = _skip_group(toks, index + 1)  # label names
            continue
        # An identifier before `(`, or before `by`/`without` (`sum by (job) (x)`), is a
        # function or an aggregation, not a metric.
        if kind == "ident" and text not in KEYWORDS and following[1] != "(" \
                and following[1] not in ("by", "without"):
            names.append(text)
        index += 1
    return names


def counter_function_arguments(expr: str) -> Iterator[tuple[str, list[str]]]:
    """(function, metric names in its argument) for each rate/irate/increase/resets call. A call
    whose argument names no metric raises: the checker must never pass for want of reading."""
    yield from function_arguments(expr, COUNTER_FUNCTIONS)


def function_arguments(expr: str, functions: frozenset[str]) -> Iterator[tuple[str, list[str]]]:
    toks = tokens(expr)
    for index, (kind, text) in enumerate(toks[:-1]):
        if kind == "ident" and text in functions and toks[index + 1][1] == "(":
            end = _skip_group(toks, index + 1)
            names = metric_names(toks[index + 2:end - 1])
            if not names:
                raise ValueError(f"{text}() of no metric name that can be read: {expr}")
            yield text, names


def dashboard_queries(path: Path) -> Iterator[tuple[str, str]]:
    """(where, expr) for every panel target and templating query of a dashboard."""
    board = json.loads(path.read_text()) if path.suffix == ".json" else {}
    for panel in _panels(board.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("expr"):
                yield f"{path.name}: {panel.get('title')}", target["expr"]
    for variable in board.get("templating", {}).get("list", []):
        query = variable.get("query")
        text = query.get("query") if isinstance(query, dict) else query
        if variable.get("type") == "query" and isinstance(text, str) and text:
            yield f"{path.name}: variable {variable.get('name')}", text


def _panels(panels: list[Any]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def rule_queries(path: Path) -> Iterator[tuple[str, str]]:
    """(where, expr) for every rule of a Prometheus rule file."""
    document = yaml.safe_load(path.read_text())
    for group in document.get("groups", []):
        for rule in group.get("rules", []):
            yield f"{path.name}: {rule.get('alert') or rule.get('record')}", rule["expr"]


def label_values_inner(expr: str) -> str:
    """Grafana's `label_values(expr, label)` / `query_result(expr)` wrap a PromQL expression."""
    match = re.fullmatch(r"\s*(?:label_values|query_result)\((.*)\)\s*", expr, re.DOTALL)
    if match is None:
        return expr
    inner = match.group(1)
    # label_values(metric{…}, label): drop the trailing label argument.
    head, _, tail = inner.rpartition(",")
    return head if head and re.fullmatch(r"\s*[a-zA-Z_]\w*\s*", tail) else inner


"""The chart README's values table, from values.yaml and its `# --` comments, as helm-docs
(Go, not on PyPI) reads them: a `# -- text` comment, with the `#` lines that follow it, documents
the key below it. A documented mapping is one row; an undocumented one is walked into. A
description stops at "Example:" (the chart README shows the examples). Lists and empty
mappings are leaves."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

VALUES = Path(__file__).resolve().parent.parent / "helm" / "polarity-exporter" / "values.yaml"
_KEY = re.compile(r"^(\s*)([A-Za-z0-9_]+):")


def descriptions(text: str) -> dict[tuple[str, ...], str]:
    """Each documented key's path (from the top of the file) and its description."""
    found: dict[tuple[str, ...], str] = {}
    stack: list[tuple[int, str]] = []  # (indent, key) of the mappings enclosing the line
    pending: list[str] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            pending = [stripped[4:].strip()]
            continue
        if stripped.startswith("#"):
            if pending is not None:
                pending.append(stripped[1:].strip())
            continue
        match = _KEY.match(line)
        if not stripped or stripped.startswith("-") or not match:
            pending = None if not stripped else pending
            continue
        indent, key = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = (*(k for _, k in stack), key)
        stack.append((indent, key))
        if pending is not None:
            found[path] = " ".join(pending).split("Example:")[0].strip()
            pending = None
    return found


def _rows(value: Any, path: tuple[str, ...], docs: dict[tuple[str, ...], str]) -> list[str]:
    if isinstance(value, dict) and value and path not in docs:
        return [row for key, item in value.items() for row in _rows(item, (*path, key), docs)]
    kind = {bool: "bool", int: "int", float: "float", str: "string", list: "list",
            dict: "object", type(None): "null"}[type(value)]
    default = json.dumps(value, separators=(", ", ": "))
    text = docs.get(path, "").replace("|", "\\|")
    return [f"| `{'.'.join(path)}` | {kind} | `{default}` | {text} |"]


def values_table(path: Path = VALUES) -> str:
    text = path.read_text(encoding="utf-8")
    values = yaml.safe_load(text)
    docs = descriptions(text)
    rows = ["| Key | Type | Default | Description |", "|---|---|---|---|"]
    for key, item in values.items():
        rows.extend(_rows(item, (key,), docs))
    return "\n".join(rows) + "\n"


def undocumented(path: Path = VALUES) -> list[str]:
    """Rows of values.yaml keys that carry no description."""
    return [row.split("`")[1] for row in values_table(path).splitlines()[2:]
            if row.endswith("|  |") or row.endswith("| |")]

"""The shipped dashboards type-check against Grafana's own types (issue 22, item 1).

Each dashboard's JSON is wrapped as `const d: Dashboard = …` and checked by `tsc --noEmit`
against npm's `@grafana/schema` (Grafana 13.2's classic dashboard types), pinned with
TypeScript in grafana/schema-check/. An object literal assigned to a type gets TypeScript's
excess-property check, so an unknown field is an error, as a wrong type is. Grafana types its
string enums (MappingType) as TypeScript enums, which a JSON string cannot be: those values
alone are written as the enum's members (the "small filter").

The packages are installed with `npm ci` into .cache/grafana-schema on first use (npm's
registry is reachable in CI; Debian's nodejs and npm are installed by .ci/run).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, require_tool

CHECK = REPO / "grafana" / "schema-check"
CACHE = REPO / ".cache" / "grafana-schema"
DASHBOARDS = sorted((REPO / "grafana" / "dashboards").glob("*.json"))
# Grafana's MappingType enum: JSON value -> member.
MAPPING_TYPES = {"value": "ValueToText", "range": "RangeToText", "regex": "RegexToText",
                 "special": "SpecialValue"}
ENUM = "\u0000enum:"


@pytest.fixture(scope="module")
def schema() -> Path:
    """A node_modules with the pinned @grafana/schema and typescript."""
    require_tool("node")
    npm = require_tool("npm")
    wanted = (CHECK / "package-lock.json").read_bytes()
    stamp = CACHE / "node_modules" / ".lock-installed"
    if not stamp.exists() or stamp.read_bytes() != wanted:
        CACHE.mkdir(parents=True, exist_ok=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copy(CHECK / name, CACHE / name)
        subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--silent"], cwd=CACHE,
                       check=True, capture_output=True, timeout=600)
        stamp.write_bytes(wanted)
    return CACHE


def as_typescript(document: dict[str, Any]) -> str:
    """The dashboard as a TypeScript object literal typed as Grafana's Dashboard."""
    def mark(node: Any) -> None:
        if isinstance(node, dict):
            for mapping in node.get("mappings", []) if isinstance(node.get("mappings"),
                                                                   list) else []:
                if isinstance(mapping, dict) and mapping.get("type") in MAPPING_TYPES:
                    mapping["type"] = f"{ENUM}MappingType.{MAPPING_TYPES[mapping['type']]}"
            for value in node.values():
                mark(value)
        elif isinstance(node, list):
            for value in node:
                mark(value)

    mark(document)
    literal = re.sub(r'"\\u0000enum:(\w+\.\w+)"', r"\1", json.dumps(document, indent=2))
    return ('import { type Dashboard, MappingType } from "@grafana/schema";\n\n'
            f"export const dashboard: Dashboard = {literal};\n")


def tsc(schema: Path, sources: dict[str, str]) -> subprocess.CompletedProcess[str]:
    work = schema / "check"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    for name, text in sources.items():
        (work / name).write_text(text)
    (work / "tsconfig.json").write_text(json.dumps({
        "compilerOptions": {"strict": True, "noEmit": True, "module": "nodenext",
                            "moduleResolution": "nodenext", "target": "es2022",
                            "skipLibCheck": True},
        "files": sorted(sources)}))
    node = require_tool("node")
    return subprocess.run([node, str(schema / "node_modules" / "typescript" / "bin" / "tsc"),
                           "-p", str(work)], capture_output=True, text=True, timeout=300)


def test_every_dashboard_type_checks_against_grafanas_schema(schema: Path) -> None:
    assert DASHBOARDS
    sources = {f"{path.stem}.ts": as_typescript(json.loads(path.read_text()))
               for path in DASHBOARDS}
    result = tsc(schema, sources)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("damage, says", [
    (lambda d: d["panels"][0].update({"options": None}), "Type 'null' is not assignable"),
    (lambda d: d["templating"]["list"][0].update({"auto": False}), "'\"auto\"' does not exist"),
    (lambda d: d.update({"schemaVersion": "41"}), "not assignable to type 'number'"),
    (lambda d: d["panels"][0].update({"gridPos": {"x": 0}}), "GridPos"),
], ids=["null-options", "interval-field-on-a-query-variable", "string-schema-version",
        "incomplete-grid-position"])
def test_the_check_finds_what_grafanas_types_forbid(schema: Path, damage: Any,
                                                     says: str) -> None:
    document = json.loads(DASHBOARDS[0].read_text())
    damage(document)
    result = tsc(schema, {"damaged.ts": as_typescript(document)})
    assert result.returncode != 0 and says in result.stdout, result.stdout


def test_dashboards_are_built_at_the_sdks_newest_schema_version() -> None:
    from grafana_foundation_sdk.builders import dashboard

    expected = dashboard.Dashboard("x").build().schema_version
    for path in DASHBOARDS:
        assert json.loads(path.read_text())["schemaVersion"] == expected == 41

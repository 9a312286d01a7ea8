"""The README's two commands: `make demo` installs the runtime dependencies only, `make test`
the test extras as well (both dry runs against a venv that does not exist yet)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from conftest import REPO, require_tool


def dry_run(target: str, venv: Path) -> list[str]:
    make = require_tool("make")
    result = subprocess.run(
        [make, "--dry-run", "--no-print-directory", "-C", str(REPO), f"VENV={venv}", target],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def installs(lines: list[str]) -> list[str]:
    return [line.split(" install ", 1)[1] for line in lines
            if " -m pip install " in line and "--upgrade pip" not in line]


def test_demo_installs_the_package_without_extras(tmp_path: Path) -> None:
    lines = dry_run("demo", tmp_path / "venv")
    assert any(line.startswith("python3 -m venv ") for line in lines)
    assert [args.split()[-1] for args in installs(lines)] == ["."]
    assert lines[-1] == f"{tmp_path / 'venv'}/bin/polarity-exporter --demo"


def test_test_installs_the_test_extras(tmp_path: Path) -> None:
    lines = dry_run("test", tmp_path / "venv")
    assert [args.split()[-1] for args in installs(lines)] == ["'.[test]'"]
    assert lines[-1] == f"{tmp_path / 'venv'}/bin/pytest"

"""The documentation: a README short enough to read, a docs site that builds with no broken
link, and references generated from the code that defines them (docs/generate_references.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
from conftest import REPO

from polarity_exporter import config, webconfig
from polarity_exporter.cli import command

sys.path.insert(0, str(REPO / "docs"))
import chart_values
import generate_references as reference

README = REPO / "README.md"
GITHUB_BLOB = "https://github.com/polarity-exporter/polarity-exporter/blob/main/"
README_MAX_LINES = 300


def test_the_readme_is_at_most_300_lines() -> None:
    assert len(README.read_text(encoding="utf-8").splitlines()) <= README_MAX_LINES


def test_every_generated_reference_is_current() -> None:
    assert reference.stale() == [], "run `python docs/generate_references.py`"


def test_every_flag_has_a_row_with_its_environment_variable() -> None:
    page = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    table = reference.block(page, "flags")
    assert table is not None
    for option in (p for p in command.params if isinstance(p, click.Option)):
        if option.name == "help":
            continue
        flag = next(o for o in option.opts if o.startswith("--"))
        row = next((line for line in table.splitlines() if line.startswith(f"| `{flag}`")), None)
        assert row is not None, f"{flag} is not in the flags reference"
        if option.envvar:
            assert f"`{option.envvar}`" in row


def test_every_targets_file_key_is_documented() -> None:
    assert set(config.TARGET_KEY_DOCS) == set(config.TARGET_KEYS)


def test_the_web_config_parser_accepts_exactly_the_documented_keys(tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    path.write_text("rate_limit: {interval: 1s, burst: 1, undocumented: 1}\n")
    with pytest.raises(config.ConfigError, match="unknown key 'undocumented'"):
        webconfig.load_web_config(str(path))
    for key in webconfig.KEY_DOCS:
        assert f"`{key}`" in reference.web_config_table()


def test_every_chart_value_has_a_description() -> None:
    assert chart_values.undocumented() == []


def test_the_chart_values_table_reads_the_comment_above_each_key(tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text("a:\n  # -- The b.\n  #    Two lines.\n  b: 1\n  c: []\n"
                      "# -- A map, one row. Example:\n#   x: 1\nd:\n  e: f\n")
    assert chart_values.values_table(values).splitlines()[2:] == [
        "| `a.b` | int | `1` | The b. Two lines. |",
        "| `a.c` | list | `[]` |  |",
        '| `d` | object | `{"e": "f"}` | A map, one row. |',
    ]


def _local_links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.DOTALL)
    return [link for link in re.findall(r"\]\(([^)\s]+)\)", text)
            if not re.match(r"[a-z]+:|#", link)]


@pytest.mark.parametrize("page", ["README.md", "helm/polarity-exporter/README.md",
                                  "bench/README.md", "helm/examples/sidecar/README.md"])
def test_relative_links_name_files_that_exist(page: str) -> None:
    base = (REPO / page).parent
    missing = [link for link in _local_links(REPO / page)
               if not (base / link.split("#", 1)[0]).exists()]
    assert missing == []


def test_links_from_the_docs_into_the_repository_name_files_that_exist() -> None:
    links = [link for page in (REPO / "docs").glob("*.md")
             for link in re.findall(rf"{re.escape(GITHUB_BLOB)}([^)#\s]+)",
                                    page.read_text(encoding="utf-8"))]
    assert links and [link for link in links if not (REPO / link).exists()] == []


def test_the_readme_picture_is_committed() -> None:
    assert "docs/img/overview.png" in README.read_text(encoding="utf-8")
    assert (REPO / "docs" / "img" / "overview.png").read_bytes()[:4] == b"\x89PNG"


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    """mkdocs --strict: a broken link or anchor, or a page left out of the nav, fails."""
    mkdocs = Path(sys.executable).with_name("mkdocs")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "site" / "configuration" / "index.html").exists()

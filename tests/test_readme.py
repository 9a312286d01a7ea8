"""The README documents every flag with its environment variable (the metrics table:
test_catalogue.py)."""

from __future__ import annotations

import click
from conftest import REPO

from polarity_exporter.cli import command

README = (REPO / "README.md").read_text(encoding="utf-8")


def test_every_flag_and_its_environment_variable_is_in_the_configuration_table() -> None:
    rows = [line for line in README.splitlines() if line.startswith("| `--")]
    options = [p for p in command.params if isinstance(p, click.Option) and p.opts[0] != "-h"]
    for option in options:
        flag = next(o for o in option.opts if o.startswith("--"))
        matching = [row for row in rows if row.startswith(f"| `{flag}`")]
        assert matching, f"{flag} is not in the README's configuration table"
        if option.envvar:
            assert f"`{option.envvar}`" in matching[0], f"{flag}: {option.envvar} not documented"

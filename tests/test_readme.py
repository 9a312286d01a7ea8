"""The README documents the public interface: every flag with its environment variable, and
every metric the exporter can serve."""

from __future__ import annotations

import re

import click
from conftest import REPO

from polarity_exporter.cli import command
from polarity_exporter.client import PolarityClient
from polarity_exporter.collector import PolarityCollector
from polarity_exporter.config import CollectorConfig, Password, PolarityConfig

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


def test_every_metric_family_is_in_the_metrics_table() -> None:
    client = PolarityClient(PolarityConfig("http://127.0.0.1:9", Password("u", "p")))
    collector = PolarityCollector(client, CollectorConfig(), default_timeout=1)
    try:
        names = {family.name for family in collector.describe()}
    finally:
        collector.close()
        client.close()
    documented = set(re.findall(r"^\| `(polarity_[a-z_]+)`", README, flags=re.MULTILINE))
    assert names - documented == set()
    assert "polarity_scrape_result_age_seconds" in documented  # served only with --cache.ttl

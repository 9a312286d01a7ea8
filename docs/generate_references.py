"""The references in the docs, generated from the code that defines them.

    python docs/generate_references.py  # rewrite every generated block
    python docs/generate_references.py --check  # exit 1 naming stale ones (tests do this)

A block sits between `<!-- NAME:start -->` and `<!-- NAME:end -->` in a Markdown file:

- `flags`: the click options of polarity_exporter.cli (name, environment variable, default, help);
- `target-keys`: the targets file's keys, from config.TARGET_KEY_DOCS and config.SETTINGS;
- `web-config-keys`: the web config's keys, from webconfig.KEY_DOCS (the parser's own list);
- `metrics-table`: the metric catalogue (polarity_exporter.metrics);
- `chart-values`: the chart's values.yaml and the `# --` comments above its keys, as helm-docs
  reads them (chart_values.py).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path

import click

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "docs"))

from chart_values import values_table  # noqa: E402

from polarity_exporter import config, metrics, webconfig  # noqa: E402
from polarity_exporter.cli import command  # noqa: E402


def _cell(text: str) -> str:
    return " ".join(text.replace("|", "\\|").split())


def _default(option: click.Option) -> str:
    default = option.default
    if option.is_flag and not option.expose_value:  # --version: an action, not a setting
        return "—"
    if option.is_flag:
        return "on" if default is True else "off"
    if isinstance(default, bool) or not isinstance(default, str | int | float) or default == "":
        return "—"  # no default (click's UNSET sentinel)
    return f"`{default:g}`" if isinstance(default, float) else f"`{default}`"


def flags_table() -> str:
    """Every flag of the command line, as `--help` describes it."""
    rows = ["| flag | environment variable | default | meaning |", "|---|---|---|---|"]
    for param in command.params:
        if not isinstance(param, click.Option) or param.hidden or param.name == "help":
            continue
        flags = " / ".join(f"`{opt}`" for opt in [*param.opts, *param.secondary_opts]
                           if opt.startswith("--"))
        envvar = f"`{param.envvar}`" if isinstance(param.envvar, str) else "—"
        rows.append(f"| {flags} | {envvar} | {_default(param)} | {_cell(param.help or '')} |")
    return "\n".join(rows) + "\n"


def target_keys_table() -> str:
    """The keys of one target in the targets file, in the parser's order."""
    rows = ["| key | flag or variable | default | value |", "|---|---|---|---|"]
    for key in config.TARGET_KEYS:
        mirror, default, meaning = config.TARGET_KEY_DOCS[key]  # KeyError: document the key
        shown = f"`{mirror}`" if mirror else ""
        rows.append(f"| `{key}` | {shown} | {default} | {_cell(meaning)} |")
    return "\n".join(rows) + "\n"


def web_config_table() -> str:
    rows = ["| key | meaning |", "|---|---|"]
    for key, meaning in webconfig.KEY_DOCS.items():
        rows.append(f"| `{key}` | {_cell(meaning)} |")
    return "\n".join(rows) + "\n"


BLOCKS: dict[str, tuple[Callable[[], str], tuple[str, ...]]] = {
    "flags": (flags_table, ("docs/configuration.md",)),
    "target-keys": (target_keys_table, ("docs/configuration.md",)),
    "web-config-keys": (web_config_table, ("docs/endpoint.md",)),
    "metrics-table": (metrics.markdown_table, ("README.md", "docs/metrics.md")),
    "chart-values": (values_table, ("helm/polarity-exporter/README.md",)),
}


def block(text: str, name: str) -> str | None:
    """The generated block `name` in `text`, or None when its markers are missing."""
    found = re.search(rf"<!-- {name}:start -->\n(.*?)<!-- {name}:end -->", text, re.DOTALL)
    return found.group(1) if found else None


def stale() -> list[str]:
    """`file: block` for every block that differs from what the code generates."""
    problems = []
    for name, (generate, files) in BLOCKS.items():
        wanted = generate()
        for file in files:
            current = block((REPO / file).read_text(encoding="utf-8"), name)
            if current is None:
                problems.append(f"{file}: no {name} markers")
            elif current != wanted:
                problems.append(f"{file}: {name} is stale")
    return problems


def rewrite() -> None:
    for name, (generate, files) in BLOCKS.items():
        wanted = generate()
        for file in files:
            path = REPO / file
            text = path.read_text(encoding="utf-8")
            start, end = f"<!-- {name}:start -->\n", f"<!-- {name}:end -->"
            if start not in text:
                raise SystemExit(f"{file}: add the markers {start.strip()} and {end}")
            head, rest = text.split(start, 1)
            _old, tail = rest.split(end, 1)
            path.write_text(head + start + wanted + end + tail, encoding="utf-8")


if __name__ == "__main__":
    if sys.argv[1:] == ["--check"]:
        problems = stale()
        print("\n".join(problems) or "every generated block is current")
        raise SystemExit(1 if problems else 0)
    rewrite()

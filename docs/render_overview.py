"""The README's picture: the panel queries of the Polarity / Overview dashboard, as a real
Prometheus answered them, drawn with matplotlib. No Grafana server runs here, so this is what
the dashboard's data looks like, honestly labelled, not a Grafana screenshot.

tests/test_prometheus_e2e.py draws it from its end-to-end stack (the exporter, the simulator
and Prometheus 2.42) on every run, into a temporary file; with
`POLARITY_RENDER_OVERVIEW=docs/img/overview.png` it writes the README's copy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: a file only
import matplotlib.pyplot as plt

MAX_SERIES = 8  # per panel, as a legend stays readable
NOTE = ("Panel queries of grafana/dashboards/polarity-overview.json, evaluated by Prometheus "
        "scraping polarity-exporter and its simulator; drawn with matplotlib, not Grafana")


@dataclass
class Query:
    legend: str  # the target's legendFormat
    instant: bool
    result: list[dict[str, Any]]  # Prometheus' API result: vector or matrix


@dataclass
class Panel:
    kind: str  # Grafana's panel type
    title: str
    queries: list[Query]


def legend(template: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template) \
        or ", ".join(f"{k}={v}" for k, v in labels.items() if k not in ("job", "instance"))


def _series(panel: Panel) -> list[tuple[str, Any]]:
    return [(legend(q.legend, s["metric"]), s) for q in panel.queries for s in q.result]


def _draw(ax: Any, panel: Panel) -> None:
    ax.set_title(panel.title, fontsize=9, loc="left")
    series = _series(panel)[:MAX_SERIES]
    if panel.kind == "timeseries":
        start = min((float(s["values"][0][0]) for _, s in series), default=0.0)
        for name, s in series:
            xs = [float(t) - start for t, _ in s["values"]]
            ax.plot(xs, [float(v) for _, v in s["values"]], label=name[:40])
        ax.set_xlabel("seconds", fontsize=7)
        ax.legend(fontsize=6, loc="upper left")
    elif panel.kind in ("stat", "piechart", "bargauge"):
        names = [name[:30] for name, _ in series]
        values = [float(s["value"][1]) for _, s in series]
        ax.barh(names, values, color="tab:green" if panel.kind == "stat" else "tab:blue")
        for y, value in enumerate(values):
            ax.text(value, y, f" {value:g}", va="center", fontsize=7)
        ax.invert_yaxis()
    else:  # a table: its first rows, as text
        ax.axis("off")
        rows = [f"{name[:60]}: {float(s['value'][1]):g}" for name, s in series]
        ax.text(0, 1, "\n".join(rows) or "(no rows)", va="top", fontsize=7, family="monospace")
    ax.tick_params(labelsize=7)


def render(panels: list[Panel], out: Path) -> None:
    """One subplot per panel, three to a row; every panel must have data to draw."""
    empty = [panel.title for panel in panels if not _series(panel)]
    if empty:
        raise ValueError(f"panels without data: {', '.join(empty)}")
    rows = (len(panels) + 2) // 3
    figure, axes = plt.subplots(rows, 3, figsize=(15, 3.2 * rows))
    for ax, panel in zip(axes.flat, panels, strict=False):
        _draw(ax, panel)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    figure.suptitle("Polarity / Overview: " + NOTE, fontsize=10)
    figure.tight_layout(rect=(0, 0, 1, 0.97))
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=80)
    plt.close(figure)

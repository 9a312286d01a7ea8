"""Building the metric families vs prometheus_client rendering them (CPU, in one process).

    python bench/families.py --integrations 10000 --errors 60000 --repeat 3

The simulator's dataset is generated in-process (no HTTP: this measures the exporter's own
code) and frozen out of the cyclic GC's sight, then parsed and summarised exactly as a scrape
does. `build_families` (with the collector thresholds the exporter process sets) and
`prometheus_client.generate_latest` are each timed `--repeat` times; the fastest run of each
is reported, as CPU seconds. Prints one JSON line: {"build", "render", "collect", "samples"}.

With `--on-demand` it then renders once more for every line it reads on stdin and prints that
render's CPU seconds: bench/run.py asks for one beside each scrape it measures, so both sides
of a ratio are taken in the same minutes (the machine's speed drifts by a quarter within a few).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.registry import Collector

from polarity_exporter.client import Listing
from polarity_exporter.collector import (
    LabelCleaner,
    ScrapeResult,
    build_families,
    parse_integrations,
    summarize_errors,
    unique_labels,
)
from polarity_exporter.config import CollectorConfig
from polarity_exporter.memory import GC_THRESHOLD
from polarity_exporter.models import parse_errors
from polarity_exporter.simulator.dataset import DatasetSpec, generate


class Snapshot(Collector):
    def __init__(self, families: list[Any]) -> None:
        self._families = families

    def collect(self) -> Iterator[Any]:
        return iter(self._families)


def fastest(repeat: int, work: Callable[[], Any]) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeat):
        result = None  # the previous run's objects would not exist in a real scrape
        started = time.process_time()
        result = work()
        best = min(best, time.process_time() - started)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--integrations", type=int, required=True)
    parser.add_argument("--errors", type=int, required=True)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--on-demand", action="store_true",
                        help="then render once per line read on stdin, printing its CPU seconds")
    args = parser.parse_args()
    dataset = generate(DatasetSpec(integrations=args.integrations, errors=args.errors))
    # The exporter process never holds the simulator's dataset: keep the cyclic GC from
    # scanning it, so that it does not bill the collector for objects that are not its own.
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)  # as polarity-exporter's entry point sets them
    config = CollectorConfig()
    clean = LabelCleaner(config.max_label_length)

    def collect() -> ScrapeResult:
        result = ScrapeResult(authenticated=True, listing=Listing(items=[]))
        problems = result.problems["integrations"]
        result.integrations = unique_labels(parse_integrations(dataset.integrations, problems),
                                            clean, problems)
        problems = result.problems["errors"]
        result.errors = summarize_errors(parse_errors(dataset.errors, problems), clean, problems)
        return result

    collect_cpu, result = fastest(args.repeat, collect)
    def build() -> list[Any]:
        return build_families(result, config)

    build_cpu, families = fastest(args.repeat, build)
    render_cpu, _ = fastest(args.repeat, lambda: generate_latest(Snapshot(families)))
    problems = Counter({f"{k}.{f}": n for k, c in result.problems.items() for f, n in c.items()})
    print(json.dumps({"collect": collect_cpu, "build": build_cpu, "render": render_cpu,
                      "samples": sum(len(family.samples) for family in families),
                      "problems": dict(problems)}), flush=True)
    if args.on_demand:
        for _ in sys.stdin:
            started = time.process_time()
            generate_latest(Snapshot(families))
            print(time.process_time() - started, flush=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The work behind a fleet probe against a single-target scrape, counted, not timed.

bench/run.py's fleet row compares CPU time, which on a shared 2-core machine moves with the
machine as much as with the exporter (bench/README.md). This counts what the exporter's Python
does instead: every function call and every call of a builtin, in every thread, through
`threading.setprofile`, for all targets probed at once against one exporter per server (a
target of its own, probed the same way) probed one probe at a time, on the same simulators.

What the counts can and cannot say:
- They stand for work, not time: a call counts once whatever it processes (a decode, a walk over
  200 connections), and the garbage collector and the kernel are not seen.
- They still move a little with timing: an unchanged errors body is decoded or not by a race
  with the listing (reuse.SameBody), and read loops take as many reads as the bytes arrive in.
  With errors changing on every request both sides decode every body, which takes the race out.
- The counter slows an exporter several times over, which changes those timings too (a fleet
  round under it can outlast the simulator's keep-alive, so the fleet reconnects).

    .venv/bin/python bench/fleet_work.py             # 200 targets of 200 / 1,000, 2 rounds
    .venv/bin/python bench/fleet_work.py --smoke     # 4 small targets (CI: test_bench_smoke)

Each exporter runs as its own process under the counter (this file, `--count-into`), which
installs the profile hook and runs `python -m polarity_exporter`. The counter makes a process
several times slower, so no time is reported.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import runpy
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import CodeType, FrameType
from typing import Any

from run import PASSWORD, USERNAME, Server, free_port, serving, simulator

# The exporter's own decode of a whole errors body: once per probe, unless the body is the one
# its kept families were built from (reuse.py), which the counts then show as a share.
DECODE = "polarity_exporter/documented.py:documented_batch"
SNAPSHOT_SECONDS = 60.0
# --history.limit's default: each answer walks the recent scrapes kept (history.py), so the single
# exporter is warmed up to as many kept as the fleet's two warm-up rounds leave.
HISTORY = 100
# As in bench/run.py's fleet, errors bodies the same on every request: then a probe or scrape
# decodes one only when it met it before the listing was done (reuse.SameBody), which depends on
# timing. Bodies that differ on every request are decoded on both sides every time.
SCENARIOS = {"errors the same on every request": False,
             "errors changing on every request": True}
# The scrape timeout the probes send, and each target's timeout, on both sides: the
# counter slows the exporter several times over, and 200 probes at once under it take longer than
# Prometheus' 10 s, so the last ones would fail at their deadline.
PROBE_TIMEOUT = 120.0


# --- the child: an exporter under the counter ------------------------------------------------

def count_calls(out: Path, argv: list[str]) -> None:
    """Run the exporter with every call counted. The counts since the last snapshot are written
    to `out` whenever `out`.go appears; a thread of its own, never counted, does that."""
    # A count per name, stepped by next(), which the GIL keeps whole: `counts[name] += 1` from
    # many threads at once would lose steps, and more of them on the fleet's side. Never reset:
    # a snapshot is the difference from the last one.
    counts: dict[str, Iterator[int]] = {}
    names: dict[CodeType, str] = {}  # the name of each function, made once

    def hook(frame: FrameType, event: str, arg: Any) -> None:
        if event == "call":
            code = frame.f_code
            name = names.get(code)
            if name is None:  # package and file: two connection.py (ours, h11's) stay apart
                path = Path(code.co_filename)
                where = f"{path.parent.name}/{path.name}" if path.parent.name else path.name
                name = names.setdefault(code, f"{where}:{code.co_name}")
        elif event == "c_call":
            name = f"C:{getattr(arg, '__qualname__', type(arg).__name__)}"
        else:
            return
        step = counts.get(name)
        next(step if step is not None else counts.setdefault(name, itertools.count()))

    go = out.with_name(out.name + ".go")

    def snapshots() -> None:
        sys.setprofile(None)  # in case the hook was set before this thread read it
        last: dict[str, int] = {}
        while True:
            time.sleep(0.05)
            if go.exists():  # between rounds: the exporter is idle
                # next() returns the steps so far and takes one more: the last read's own
                now = {name: next(step) for name, step in list(counts.items())}
                taken = {name: n - last.get(name, -1) - 1 for name, n in now.items()}
                last = now
                out.with_name(out.name + ".tmp").write_text(
                    json.dumps({name: n for name, n in taken.items() if n}))
                out.with_name(out.name + ".tmp").replace(out)
                go.unlink()

    threading.Thread(target=snapshots, daemon=True).start()
    threading.setprofile(hook)
    sys.setprofile(hook)
    sys.argv = ["polarity_exporter", *argv]
    runpy.run_module("polarity_exporter", run_name="__main__")


# --- the driver ------------------------------------------------------------------------------

class Counted:
    """An exporter process under the counter."""

    def __init__(self, stack: contextlib.ExitStack, directory: Path, name: str,
                 flags: list[str]) -> None:
        self.out = directory / f"{name}.json"
        port = free_port()
        self.server: Server = stack.enter_context(serving(
            [sys.executable, __file__, "--count-into", str(self.out), "--",
             *flags, f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            port, "/-/ready"))

    def snapshot(self) -> Counter[str]:
        """The calls since the last snapshot."""
        self.out.unlink(missing_ok=True)
        go = self.out.with_name(self.out.name + ".go")
        go.touch()
        waited = time.monotonic()
        while go.exists():
            if time.monotonic() - waited > SNAPSHOT_SECONDS:
                raise RuntimeError(f"{self.out.name}: no snapshot in {SNAPSHOT_SECONDS:g} s")
            time.sleep(0.05)
        return Counter(json.loads(self.out.read_text()))


def measure(targets: int, integrations: int, errors: int, rounds: int, scrapes: int,
            changing: bool) -> tuple[Counter[str], Counter[str]]:
    """Calls per probe of the fleet (all targets at once, `rounds` times) and per probe of one
    exporter per server (`scrapes` one after another), both after warm-up rounds; with
    `changing`, on simulators whose errors body differs on every request."""
    with contextlib.ExitStack() as stack:
        urls = [stack.enter_context(simulator(integrations, errors, changing=changing))
                for _ in range(min(20, targets))]
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        config = directory / "targets.yml"
        config.write_text(json.dumps({"targets": {  # JSON is YAML
            f"t{i:03d}": {"url": urls[i % len(urls)], "username": USERNAME,
                          "password": PASSWORD, "timeout": PROBE_TIMEOUT}
            for i in range(targets)}}))
        one = directory / "one.yml"
        one.write_text(json.dumps({"targets": {"t000": {  # t000's server, the same session
            "url": urls[0], "username": USERNAME, "password": PASSWORD,
            "timeout": PROBE_TIMEOUT}}}))
        fleet = Counted(stack, directory, "fleet", [f"--config.file={config}"])
        # One exporter per server, asked as the fleet is (/probe, the same header): /metrics
        # would add the process collector's families to its side only.
        single = Counted(stack, directory, "single", [f"--config.file={one}"])
        names = [f"t{i:03d}" for i in range(targets)]
        with ThreadPoolExecutor(targets) as pool:
            def probe_all() -> None:
                answers = pool.map(lambda name: fleet.server.probe(name, PROBE_TIMEOUT), names)
                if not all(up for _, up in answers):
                    raise RuntimeError("a probe did not answer polarity_up 1")

            def scrape_single() -> None:
                if not single.server.probe("t000", PROBE_TIMEOUT)[1]:
                    raise RuntimeError("the single exporter did not answer polarity_up 1")

            for _ in range(2):  # logins, then the kept families of every target
                probe_all()
            for _ in range(min(HISTORY, 2 * targets)):  # as many recent scrapes kept
                scrape_single()
            fleet.snapshot()
            single.snapshot()
            for _ in range(rounds):
                probe_all()
            fleet_calls = fleet.snapshot()
            for _ in range(scrapes):
                scrape_single()
            single_calls = single.snapshot()
    per_probe = Counter({k: v / (rounds * targets) for k, v in fleet_calls.items()})
    per_scrape = Counter({k: v / scrapes for k, v in single_calls.items()})
    return per_probe, per_scrape


def report(fleet: Counter[str], single: Counter[str], top: int) -> str:
    def python(calls: Counter[str]) -> float:
        return sum(v for k, v in calls.items() if not k.startswith("C:"))

    def builtin(calls: Counter[str]) -> float:
        return sum(v for k, v in calls.items() if k.startswith("C:"))

    lines = ["| calls | fleet, per probe | single, per probe | fleet / single |",
             "|---|---|---|---|"]
    for name, of in (("all", lambda c: python(c) + builtin(c)), ("Python functions", python),
                     ("builtins", builtin), ("errors bodies decoded", lambda c: c[DECODE])):
        f, s = of(fleet), of(single)
        lines.append(f"| {name} | {f:,.2f} | {s:,.2f} | "
                     f"{f / s:.3f}x |" if s else f"| {name} | {f:,.2f} | {s:,.2f} | — |")
    lines += ["", f"The {top} largest differences, per probe:", "",
              "| function | fleet | single | difference |", "|---|---|---|---|"]
    for key in sorted(fleet.keys() | single.keys(),
                      key=lambda k: (-abs(fleet[k] - single[k]), k))[:top]:
        lines.append(f"| `{key}` | {fleet[key]:,.1f} | {single[key]:,.1f} | "
                     f"{fleet[key] - single[key]:+,.1f} |")
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--count-into":
        count_calls(Path(sys.argv[2]), sys.argv[4:] if sys.argv[3:4] == ["--"] else sys.argv[3:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="4 small targets, one round")
    parser.add_argument("--targets", type=int, default=200)
    parser.add_argument("--integrations", type=int, default=200)
    parser.add_argument("--errors", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--scrapes", type=int, default=100)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--json", type=Path, help="also write both counts here")
    args = parser.parse_args()
    if args.smoke:
        args.targets, args.integrations, args.errors, args.rounds, args.scrapes = 4, 10, 20, 1, 4
    results: dict[str, dict[str, Counter[str]]] = {}
    for scenario, changing in SCENARIOS.items():
        fleet, single = measure(args.targets, args.integrations, args.errors, args.rounds,
                                args.scrapes, changing)
        results[scenario] = {"fleet_per_probe": fleet, "single_per_scrape": single}
        print(f"### {scenario}\n\n{args.targets} targets of {args.integrations} integrations "
              f"and {args.errors:,} error records, all probed at once, {args.rounds} rounds, "
              f"against one exporter per server probed {args.scrapes} times:\n")
        print(report(fleet, single, args.top) + "\n", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

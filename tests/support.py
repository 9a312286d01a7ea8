"""Helpers several test modules share (fixtures are in conftest.py): the memory of this process
while a scrape runs, and waiting out a Retry-After."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

from inproc import Running


def vm_kib(field: str) -> int:
    """A field of /proc/self/status in KiB (VmRSS, VmHWM)."""
    match = re.search(rf"{field}:\s+(\d+) kB", open("/proc/self/status").read())
    assert match
    return int(match.group(1))


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # resets VmHWM to the current RSS


def growth_mib(run: Callable[[], Any]) -> float:
    """Peak memory growth of this process (exporter and simulator) while `run()` runs."""
    rss = vm_kib("VmRSS")
    reset_peak()
    run()
    return (vm_kib("VmHWM") - rss) / 1024


def wait_out_rate_limit(exp: Running) -> None:
    """Until the exporter's client may call Polarity again: Retry-After is time itself, so
    this waits on the clock, never longer than the block (at most MAX_RETRY_AFTER)."""
    rate_limit = exp.exporter.client.transport.rate_limit
    while (remaining := rate_limit.remaining()) > 0:
        time.sleep(min(0.05, remaining))

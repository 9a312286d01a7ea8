"""The soak's short form: 800 scrapes with faults on every other one (bench/soak.py).

Bounds: every scrape answered with the polarity_up its fault calls for; after a 200-scrape
warm-up, resident memory grows by at most 16 MiB and open file descriptors by at most 8.
The long form is `python bench/soak.py` (20000 scrapes by default).
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

from conftest import REPO


def load_soak() -> ModuleType:
    spec = importlib.util.spec_from_file_location("soak", REPO / "bench" / "soak.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["soak"] = module
    spec.loader.exec_module(module)
    return module


def test_soak_answers_every_scrape_without_growing() -> None:
    soak = load_soak()
    report = soak.soak(scrapes=800, warmup=200, fault_every=2, max_rss_growth_mib=16,
                       max_fd_growth=8)
    assert report.answered == report.scrapes, report.as_json()
    assert report.wrong_up == 0, report.as_json()
    assert set(report.faults) == {fault.name for fault in soak.FAULTS}
    assert report.rss_growth_kib <= 16 * 1024, report.as_json()
    assert report.fds_end - report.fds_start <= 8, report.as_json()

"""Process memory tuning for a long-running exporter: the C allocator and Python's cyclic GC.

A scrape allocates a burst of short-lived objects (a listing, error records, samples, the
rendered body) and then nothing until the next scrape. Left alone, glibc keeps the high-water
mark of those bursts resident, and the cyclic collector walks the whole heap several times per
scrape for objects that reference counting frees anyway. Measurements: bench/README.md.
"""

from __future__ import annotations

import ctypes
import gc
from collections.abc import Callable
from typing import Any

# mallopt(3) parameter numbers in glibc.
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
# Read chunks and their decoded strings (up to a few hundred KiB) stay on the heap, where they
# are reused from chunk to chunk; page bodies (megabytes) go to mmap.
_MMAP_THRESHOLD = 1024 * 1024


def _libc_function(name: str) -> Callable[..., Any] | None:
    try:
        function: Callable[..., Any] = getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None  # not glibc (musl, macOS): the tuning is simply skipped
    return function


_malloc_trim = _libc_function("malloc_trim")


def tune_allocator() -> None:
    """Keep multi-megabyte buffers (page bodies) out of glibc's heaps, and use one arena.

    glibc raises its mmap threshold every time a large block is freed, up to 32 MiB; from then
    on each page body of the listing is carved from a per-thread heap, whose high-water mark
    stays resident. Measured over 100,000 error records: peak RSS 87-101 MiB and growing from
    scrape to scrape, against 58-65 MiB with the threshold fixed. A fixed threshold keeps such
    buffers in mmap, handed back to the system when freed. One arena: the exporter's threads
    are I/O-bound, and per-thread arenas each keep their own high-water mark.
    """
    mallopt = _libc_function("mallopt")
    if mallopt is not None:
        mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
        mallopt(_M_ARENA_MAX, 1)


# Python's cyclic collector runs a young-generation pass every this many net container
# allocations (default 700). A scrape allocates ~10^5 containers (parsed integrations,
# summaries, samples) that live until the answer is written and form no reference cycles; at
# the default, every batch of survivors pushed the collector into full passes over the whole
# heap: measured 4-5 per scrape of 10,000 integrations, a third of its CPU. At this threshold a
# scrape of a few thousand records makes at most one young pass, and a full pass needs 4*10^7
# net allocations. (10,000 was measured too: 10% more CPU per ordinary scrape than switching
# the collector off, against none at this value; bench/README.md.) Reference counting frees
# the scrape's objects as before; the few cycles (exception tracebacks) wait a little longer.
GC_THRESHOLD = (100_000, 20, 20)


def tune_process() -> None:
    """Process-wide tuning, called once by the command-line entry point and by nothing else:
    a library that imports the exporter keeps its own allocator and collector settings.

    The allocator (tune_allocator); the cyclic collector's thresholds (GC_THRESHOLD); and
    gc.freeze(), which moves everything imported and configured so far out of the collector's
    view, so that no pass ever walks the modules again.
    """
    tune_allocator()
    gc.set_threshold(*GC_THRESHOLD)
    gc.freeze()


def release_free_memory() -> None:
    """Hand the heap's free pages back to the system once no scrape is running.

    Called after an answer of over a megabyte is sent: what its burst freed need not stay
    resident. Another scrape may be running; malloc_trim only returns pages no allocation uses,
    taking the allocator's lock briefly, so the cost to that scrape is a little CPU.
    """
    if _malloc_trim is not None:
        _malloc_trim(0)

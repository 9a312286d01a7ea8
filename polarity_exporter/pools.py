"""The threads that talk to Polarity, shared by every server the exporter scrapes.

Such a thread spends its life waiting for I/O, and one exporter may scrape hundreds of servers:
pools of their own would add a dozen threads per server. So there are two pools for the process:

- FETCHES threads run fetches, one per server being scraped at that moment (a fetch logs in and
  reads the listing's first page itself);
- BODIES threads read the listing's other pages and the errors bodies, of every server.

A fetch waits for its bodies, never the other way round, so the two pools cannot deadlock. Each
server keeps its own limit on the pages it reads at once (`max_concurrency`), as a semaphore.
Threads start on first use and, idle, wait without waking. Every job is held to its scrape's
deadline, time spent queued included: a server that hangs holds one fetch thread (and its
bodies) until its deadline, so more than FETCHES servers hanging at once delay the others.

Threads that are still running when the process exits are not waited for (cli.py ends the
process once the endpoint and the logouts are done), as a Go exporter's goroutines are not.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

FETCHES = 12
BODIES = 16

fetches = ThreadPoolExecutor(FETCHES, thread_name_prefix="polarity-fetch")
bodies = ThreadPoolExecutor(BODIES, thread_name_prefix="polarity-body")

"""The threads that talk to Polarity, shared by every server the exporter scrapes.

Such a thread spends its life waiting for I/O, and one exporter may scrape hundreds of servers:
pools of their own would add a dozen threads per server. So there are two pools for the process:

- FETCHES threads run fetches, one per server being scraped at that moment: a fetch logs in and
  reads the listing;
- as many ERRORS threads read the errors bodies, one beside each fetch: one is always free for
  a fetch that starts, so an errors download never waits for another server's;
- PAGES threads read the listing's pages after the first, of every server.

A fetch waits for its errors body and its pages, never the other way round, so the pools cannot
deadlock. Each server keeps its own limit on the pages it reads at once (`max_concurrency`, as a
semaphore), and holds at most MAX_PAGES_PER_SERVER page threads. Threads start on first use and,
idle, wait without waking. Every job is held to its scrape's deadline, time spent queued
included, and a fetch waits for its pages no longer than its deadline. So a server that hangs
holds one fetch thread and one errors thread until its deadline (more than FETCHES hanging at
once delay the others' fetches), and at most MAX_PAGES_PER_SERVER page threads (two hanging with
many pages delay the others' later pages; servers of one page never wait for a page thread).

Threads that are still running when the process exits are not waited for (cli.py ends the
process once the endpoint and the logouts are done), as a Go exporter's goroutines are not.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

FETCHES = 10
PAGES = 14
# The default --polarity.max-concurrency fits, and leaves others a few page threads.
MAX_PAGES_PER_SERVER = 10

fetches = ThreadPoolExecutor(FETCHES, thread_name_prefix="polarity-fetch")
errors = ThreadPoolExecutor(FETCHES, thread_name_prefix="polarity-errors")
pages = ThreadPoolExecutor(PAGES, thread_name_prefix="polarity-page")

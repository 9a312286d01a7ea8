"""Concurrent scrapes share one Polarity fetch; --cache.ttl reuses results; logins never race.

Coalescing is proven where it matters: by counting the requests the simulator received.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
from conftest import CREDS, SIM_PASSWORD, SIM_USER
from inproc import Scrape, running_exporter
from reference import parse

from polarity_exporter.client import Deadline, PolarityClient
from polarity_exporter.config import PolarityConfig
from polarity_exporter.simulator import Simulator, SimulatorConfig
from polarity_exporter.summary import parse_integrations

LIST = ("GET", "/api/integrations")
ERRORS = ("GET", "/api/integrations/errors")
LOGIN = ("POST", "/api/users/login")

# Every test here bounds a time: they run on one worker, one after another (conftest.py).
pytestmark = pytest.mark.timing


@pytest.fixture
def slow_sim() -> Iterator[Simulator]:
    # 0.3 s per request keeps a fetch in flight while the other scrapes arrive.
    config = SimulatorConfig(users={SIM_USER: SIM_PASSWORD}, latency=0.3)
    with Simulator(config) as sim:
        yield sim


def scrape_all_at_once(url: str, clients: int, timeout: float = 5.0) -> list[requests.Response]:
    barrier = threading.Barrier(clients)

    def one(_: int) -> requests.Response:
        barrier.wait()
        return requests.get(f"{url}/metrics", timeout=timeout + 5,
                            headers={"X-Prometheus-Scrape-Timeout-Seconds": str(timeout)})

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(one, range(clients)))


def test_twenty_concurrent_scrapes_share_one_fetch(slow_sim: Simulator) -> None:
    with running_exporter(slow_sim.url, CREDS) as exp:
        responses = scrape_all_at_once(exp.url, 20)
    assert [r.status_code for r in responses] == [200] * 20
    assert all(parse(r.text)["polarity_up"][frozenset()] == 1 for r in responses)
    assert slow_sim.counts[LIST] == 1
    assert slow_sim.counts[ERRORS] == 1
    assert slow_sim.counts[LOGIN] == 1


def test_scrapes_one_after_another_each_fetch_without_cache(slow_sim: Simulator) -> None:
    with running_exporter(slow_sim.url, CREDS) as exp:
        for _ in range(2):
            assert exp.scrape(timeout=5).up == 1
    assert slow_sim.counts[LIST] == 2


def test_cache_ttl_reuses_a_recent_result(slow_sim: Simulator) -> None:
    with running_exporter(slow_sim.url, CREDS, cache_ttl=60) as exp:
        first, second = exp.scrape(timeout=5), exp.scrape(timeout=5)
    assert slow_sim.counts[LIST] == 1
    assert first.up == second.up == 1
    assert second.samples["polarity_integration_info"] == first.samples["polarity_integration_info"]
    age = second.value("polarity_scrape_result_age_seconds")
    assert age is not None and 0 < age < 60


def test_cache_ttl_is_stated_in_the_help_text(slow_sim: Simulator) -> None:
    with running_exporter(slow_sim.url, CREDS, cache_ttl=45) as exp:
        text = exp.scrape(timeout=5).response.text
    assert "# HELP polarity_up" in text
    help_line = next(line for line in text.splitlines() if line.startswith("# HELP polarity_up "))
    assert "may be up to 45s old" in help_line


def test_without_cache_the_help_text_claims_no_caching(slow_sim: Simulator) -> None:
    with running_exporter(slow_sim.url, CREDS) as exp:
        scrape = exp.scrape(timeout=5)
    assert "old" not in scrape.response.text.split("# HELP polarity_up ")[1].splitlines()[0]
    assert scrape.value("polarity_scrape_result_age_seconds") is None


def test_cache_expires_after_ttl() -> None:
    with Simulator(SimulatorConfig(users={SIM_USER: SIM_PASSWORD})) as sim, \
            running_exporter(sim.url, CREDS, cache_ttl=0.2) as exp:
        exp.scrape()
        threading.Event().wait(0.3)  # let the TTL pass: the thing under test is time itself
        exp.scrape()
        assert sim.counts[LIST] == 2


def test_a_scrape_that_times_out_waiting_for_a_shared_fetch_says_so(slow_sim: Simulator) -> None:
    # The leader's fetch takes at least two requests of 2 s each; the follower has a deadline
    # of 1 s, designed to answer at 0.9 s: it must not wait for the fetch.
    slow_sim.config.latency = 2.0
    with running_exporter(slow_sim.url, CREDS, timeout=10.0) as exp:
        follower_timeout = exp.exporter.app.timeout_offset + 1.0
        with ThreadPoolExecutor(1) as pool:
            leader = pool.submit(exp.scrape, 8.0)
            while slow_sim.counts[LOGIN] == 0:  # the leader's fetch is in flight
                threading.Event().wait(0.01)
            follower: Scrape = exp.scrape(timeout=follower_timeout)
            assert follower.response.status_code == 200
            assert follower.elapsed < follower_timeout  # and >= 1.5 s before the fetch ends
            assert follower.up == 0
            assert leader.result().up == 1
        assert exp.logs.matching("scrape deadline passed before the Polarity fetch finished")
    assert slow_sim.counts[LIST] == 1


def list_all(client: PolarityClient, deadline: Deadline) -> Any:
    """The listing's integrations, deduplicated by id."""
    return client.list_integrations(deadline, lambda items, problems: parse_integrations(
        items, problems),
                                    lambda integration: integration.id)


def test_concurrent_401s_after_revocation_log_in_again_exactly_once(simulator: Simulator) -> None:
    config = PolarityConfig(url=simulator.url, credentials=CREDS, page_size=3, max_concurrency=4)
    client = PolarityClient(config)
    try:
        list_all(client, Deadline(5))
        assert simulator.counts[LOGIN] == 1
        simulator.revoke_tokens()

        def listing(_: int) -> Any:
            return list_all(client, Deadline(10))

        with ThreadPoolExecutor(8) as pool:  # 8 scrapes x 9 pages, 4 pages at a time each
            listings = list(pool.map(listing, range(8)))
        assert all(len(lst.items) == len(simulator.dataset.integrations) for lst in listings)
        assert simulator.counts[LOGIN] == 2
    finally:
        client.close()


def test_cache_ttl_flag_from_the_environment(simulator: Simulator, start_exporter: Any) -> None:
    exp = start_exporter(f"--polarity.url={simulator.url}",
                         env={"POLARITY_USERNAME": SIM_USER, "POLARITY_PASSWORD": SIM_PASSWORD,
                              "POLARITY_EXPORTER_CACHE_TTL": "30"})
    first, second = exp.metrics(), exp.metrics()
    assert "may be up to 30s old" in first.text
    assert "polarity_scrape_result_age_seconds" in second.text
    assert simulator.counts[LIST] == 1

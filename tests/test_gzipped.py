"""The gzipped answer: one gzip member whose kept families are compressed once, which any
decoder reads back to the answer's exact bytes."""

from __future__ import annotations

import gzip
import zlib
from typing import Any

import pytest
import requests
from conftest import CREDS, SIM_PASSWORD, SIM_USER
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from inproc import running_exporter

from polarity_exporter import gzipped
from polarity_exporter.exposition import Part, join
from polarity_exporter.metrics import Built
from polarity_exporter.simulator import Simulator, SimulatorConfig


def built(lines: bytes) -> Built:
    family = Built("polarity_x", "x", "gauge")
    family.lines = lines
    return family


def one_member(body: bytes) -> bytes:
    """The body read as exactly one gzip member, nothing after it (as Go's reader without
    multistream would)."""
    reader = zlib.decompressobj(16 + zlib.MAX_WBITS)
    data = reader.decompress(body) + reader.flush()
    assert reader.eof and reader.unused_data == b""
    return data


texts = st.binary(max_size=3000)
parts = st.lists(st.one_of(texts, texts.map(built)), max_size=8)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])  # a constant patch
@given(parts)
def test_any_answer_decompresses_to_its_exact_bytes(monkeypatch: pytest.MonkeyPatch,
                                                    answer: list[Part]) -> None:
    with monkeypatch.context() as patch:
        patch.setattr(gzipped, "SEGMENTS_FROM", 0)  # compressed in runs, however small
        body = gzipped.compress(answer)
    assert one_member(body) == join(answer)
    assert gzip.decompress(body) == join(answer)


def test_a_kept_familys_text_is_compressed_once_and_reused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gzipped, "SEGMENTS_FROM", 0)
    family = built(b"polarity_x 1.0\n" * 1000)
    first = gzipped.compress([b"# HELP\n", family, b"# EOF\n"])
    deflated = family.deflated
    assert deflated is not None and deflated in first
    second = gzipped.compress([b"# HELP again\n", family])
    assert family.deflated is deflated
    assert one_member(second) == b"# HELP again\n" + b"polarity_x 1.0\n" * 1000


def test_a_small_answer_is_compressed_whole() -> None:
    family = built(b"polarity_x 1.0\n")
    gzipped.compress([family])
    assert family.deflated is None


def test_a_large_answer_served_twice_reads_the_same_as_without_gzip() -> None:
    config = SimulatorConfig(users={SIM_USER: SIM_PASSWORD}, integrations=3000, errors=3000)
    with Simulator(config) as sim, running_exporter(sim.url, CREDS, timeout=5.0) as running:
        plain = running.scrape(timeout=5.0, headers={"Accept-Encoding": "identity"})
        for _ in range(2):  # built, then reused with its compressed text
            raw = requests.get(f"{running.url}/metrics", stream=True, timeout=10,
                               headers={"Accept-Encoding": "gzip"}).raw.read()
            text = one_member(raw).decode()
            assert len(text) > gzipped.SEGMENTS_FROM
            assert stable(text) == stable(plain.response.text)


def stable(text: str) -> list[str]:
    return [line for line in text.splitlines()
            if not line.startswith(("polarity_scrape_duration", "polarity_scrape_timeout",
                                    "process_"))]


def test_an_encoder_that_finds_the_samples_gone_serves_the_text_the_first_one_kept(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Two scrapes sharing a fetch encode a new family at once: the other one finishes (keeps
    # the text, lets the samples go) between this one's look at `lines` and at the samples.
    from prometheus_client.samples import Sample

    from polarity_exporter.exposition import text_parts

    stored: dict[int, list[Any]] = {}
    raced: set[int] = set()

    def samples(family: Built) -> list[Any]:
        if id(family) not in raced and family.lines is None:
            raced.add(id(family))
            join(text_parts([family]))  # the other scrape, done first
        return stored[id(family)]

    def set_samples(family: Built, value: list[Any]) -> None:
        stored[id(family)] = value

    monkeypatch.setattr(Built, "samples", property(samples, set_samples), raising=False)
    family = Built("polarity_x", "x", "gauge")
    family.samples = [Sample("polarity_x", {"integration_id": str(n)}, 1.0) for n in range(5)]
    answer = join(text_parts([family]))
    assert answer.count(b"\npolarity_x{") == 5 and family.lines == answer.split(b"\n", 2)[2]

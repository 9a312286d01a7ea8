"""gzip of an answer whose largest parts repeat from scrape to scrape, each compressed once.

The per-integration families a scrape reuses (reuse.py) keep their text; compressing the whole
answer again on every scrape was then its largest cost (14% of a scrape of 10,000
integrations). So each kept family's text is compressed once, as a run of deflate blocks of its
own (a fresh compressor, ended by a sync flush: byte-aligned, not final), and kept on it; the
answer is the gzip header, those runs and the compressed parts between them in order, an
empty final block, and the trailer (CRC-32 and length of the whole text). A decoder reads one
deflate stream: no block refers back past the start of its own run, since each run's
compressor began empty. Answers whose kept text is small are compressed whole, as before.
"""

from __future__ import annotations

import gzip
import struct
import zlib

from polarity_exporter.exposition import Part, join
from polarity_exporter.metrics import Built

# Level 1, as Prometheus' Go client: most of the gain for a fraction of the CPU.
LEVEL = 1
# Below this much kept text, one compressor over the whole answer costs less than several.
SEGMENTS_FROM = 256 * 1024
# ID1 ID2, deflate, no flags, no modification time, "fastest" (XFL 4), unknown OS.
_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x04\xff"


def compress(parts: list[Part]) -> bytes:
    """The answer `parts` (exposition.text_parts or openmetrics_parts), gzipped."""
    kept = sum(len(part.lines or b"") for part in parts if type(part) is Built)
    if kept < SEGMENTS_FROM:
        return gzip.compress(join(parts), compresslevel=LEVEL)
    out: list[bytes] = [_HEADER]
    pending: list[bytes] = []
    crc = size = 0
    for part in parts:
        if type(part) is Built and part.lines:
            data = part.lines  # read once: the run and the CRC are of the same bytes
            out.append(_run(b"".join(pending)))
            pending = []
            deflated = part.deflated
            if deflated is None:
                part.deflated = deflated = _run(data)
            out.append(deflated)
        else:
            data = part if type(part) is bytes else b""
            pending.append(data)
        crc, size = zlib.crc32(data, crc), size + len(data)
    out.append(_run(b"".join(pending)))
    out.append(_compressor().flush(zlib.Z_FINISH))  # an empty final block
    out.append(struct.pack("<II", crc & 0xFFFFFFFF, size & 0xFFFFFFFF))
    return b"".join(out)


def _run(data: bytes) -> bytes:
    """`data` as deflate blocks of its own, ending byte-aligned and not final."""
    if not data:
        return b""
    compressor = _compressor()
    return compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)


def _compressor() -> zlib._Compress:
    return zlib.compressobj(LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)

"""What the JSONL index snapshot's CRC-32 (format version 3, persistence/jsonl/snapshot.py)
costs an open of many sessions, in process: the snapshot's decode as version 3 reads it
(its version, the envelope, the CRC of the entries' bytes, the entries) against version
2's (its version, then the envelope with the entries in it), both of the same
``--sessions`` entries, alternated ``--rounds`` times; medians of CPU time, and the
CRC-32 alone.

    python -m bench.snapshot_crc_cost --sessions 100000 --rounds 15
"""

from __future__ import annotations

import argparse
import statistics
import time
import zlib
from collections.abc import Callable

import msgspec

from bamboo_session.persistence.jsonl import snapshot
from bamboo_session.persistence.jsonl.checkpoint import Coverage
from bamboo_session.protocol.models import Session


class _Version2(msgspec.Struct):
    version: int
    entries: list[snapshot.SnapshotEntry]


def _entries(count: int) -> list[snapshot.SnapshotEntry]:
    made = []
    for n in range(count):
        metadata = Session.new(
            f"s_{n:022d}", user_id=f"user{n % 1000}", title=f"title {n}"
        ).metadata
        metadata.last_seq, metadata.message_count = n, n // 3
        stamp = (n, 1000, 17**12)
        made.append(
            snapshot.SnapshotEntry(metadata, 1000 + n, Coverage(n // 3, n, 900 + n), 0, stamp)
        )
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    encoder = msgspec.msgpack.Encoder()
    entries = _entries(args.sessions)
    encoded = encoder.encode(entries)
    version3 = encoder.encode(snapshot._Snapshot(3, zlib.crc32(encoded), msgspec.Raw(encoded)))
    version2 = encoder.encode(_Version2(2, entries))
    decode2 = msgspec.msgpack.Decoder(_Version2).decode

    def read3() -> object:
        snapshot._version_decoder.decode(version3)
        envelope = snapshot._decoder.decode(version3)
        assert zlib.crc32(envelope.entries) == envelope.crc
        return snapshot._entries_decoder.decode(envelope.entries)

    def read2() -> object:
        snapshot._version_decoder.decode(version2)
        return decode2(version2).entries

    kinds: dict[str, Callable[[], object]] = {
        "version 2": read2,
        "version 3": read3,
        "CRC-32 alone": lambda: zlib.crc32(encoded),
    }
    cpu: dict[str, list[float]] = {name: [] for name in kinds}
    for _ in range(args.rounds):
        for name, read in kinds.items():
            started = time.process_time()
            read()
            cpu[name].append(time.process_time() - started)
    print(f"{args.sessions} entries: {len(version3):,} bytes (version 2: {len(version2):,})")
    for name, times in cpu.items():
        print(f"{name:13s} median {statistics.median(times) * 1000:.1f} ms CPU")
    ratio = statistics.median(cpu["version 3"]) / statistics.median(cpu["version 2"])
    print(f"RATIO version 3 / version 2 {ratio:.3f}")


if __name__ == "__main__":
    main()

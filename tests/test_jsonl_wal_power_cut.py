"""A power cut right after an open that replayed the WAL (persistence/jsonl/wal_replay.py):
every acknowledged event the segments covered is still there.

After a kill -9 the page cache survives, so the session logs can hold every line while
none of it is on disk yet. Open must sync those logs before it deletes the segments
that cover them. The power cut is modelled on real files: every ``fdatasync`` of a log
records the size it made durable, and the cut truncates each log back to that size.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from bamboo_session.persistence import JsonlStorage, JsonlStorageConfig
from tests.jsonl_support import segments
from tests.test_jsonl_wal_room import crash_image_with, holed, record, seqs


def track_durable_sizes(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Log name -> the size its last sync made durable. The store's modules keep their
    own reference to ``datasync``; each one is wrapped, and the real sync still runs."""
    durable: dict[str, int] = {}
    prefix = "bamboo_session.persistence.jsonl."
    for name, module in list(sys.modules.items()):
        real = getattr(module, "datasync", None) if name.startswith(prefix) else None
        if real is None:
            continue

        def sync(fd: int, real=real) -> None:  # type: ignore[no-untyped-def]
            real(fd)
            path = os.readlink(f"/proc/self/fd/{fd}")
            if path.endswith(".jsonl"):
                durable[os.path.basename(path)] = os.fstat(fd).st_size

        monkeypatch.setattr(module, "datasync", sync)
    return durable


def power_cut(config: JsonlStorageConfig, durable: dict[str, int]) -> None:
    for log in config.layout.events.glob("*.jsonl"):
        os.truncate(log, min(durable.get(log.name, 0), log.stat().st_size))


def every_record(lines: dict[str, list[bytes]]) -> bytes:
    return b"".join(
        record(lines, sid, seq) for sid in lines for seq in range(1, len(lines[sid]) + 1)
    )


def every_record_but_one_damaged(lines: dict[str, list[bytes]]) -> bytes:
    """Damage (a record of ``s`` lost before a later one): the segments are set aside
    as evidence rather than deleted, and no longer replayed either."""
    data = every_record(lines)
    at = data.index(record(lines, "s", 2))
    return data[:at] + holed(data[at : at + 40]) + data[at + 40 :]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc (Linux)")
@pytest.mark.parametrize(
    ("segment", "log_lost_its_tail"),
    [(every_record, False), (every_record_but_one_damaged, False), (every_record, True)],
)
async def test_a_power_cut_after_replay_loses_no_event_the_segments_covered(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    segment: Callable[..., bytes],
    log_lost_its_tail: bool,
) -> None:
    # The logs hold every line, as a kill -9 leaves them (replay has nothing to
    # append); or s's log lost its tail, and replay appends seqs 2 and 3.
    config = await crash_image_with(tmp_path, segment)
    if log_lost_its_tail:
        log = config.layout.log("s")
        log.write_bytes(log.read_bytes().splitlines(keepends=True)[0])
    durable = track_durable_sizes(monkeypatch)
    after_open = JsonlStorageConfig(tmp_path / "after-open")
    async with await JsonlStorage.open(config):
        assert segments(config) == []  # gone from the WAL: deleted or set aside
        shutil.copytree(config.base_path, after_open.base_path)
    power_cut(after_open, durable)
    async with await JsonlStorage.open(after_open) as storage:
        assert await seqs(storage, "s") == [1, 2, 3]
        assert await seqs(storage, "t") == [1, 2]

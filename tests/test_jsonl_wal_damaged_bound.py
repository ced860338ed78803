"""The WAL segments replay keeps aside as damaged are bounded in number and bytes
(persistence/jsonl/damaged_wal.py): at an open, the oldest kept aside go first, each
removal logged; nothing that replay did not keep aside is ever removed."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from bamboo_session.persistence import JsonlStorage, JsonlStorageConfig
from tests.test_jsonl_wal_damage import hole_then_a_later_segment
from tests.test_jsonl_wal_room import crash_image_with


def kept_aside_by_earlier_opens(
    config: JsonlStorageConfig, count: int, size: int, since_ns: int = 1_000
) -> list[Path]:
    """``count`` segments an earlier open kept aside (oldest first, from ``since_ns``),
    ``size`` bytes each."""
    made = []
    for i in range(count):
        path = config.layout.wal / f"{i + 1}.wal.damaged-4242-{since_ns + i}"
        path.write_bytes(b"x" * size)
        made.append(path)
    return made


def not_kept_aside_by_replay(config: JsonlStorageConfig) -> list[Path]:
    """Files a bound must never take: a session's damaged log, and names in the WAL
    directory that replay does not give a kept-aside segment."""
    paths = [
        config.layout.events / "s.jsonl.damaged-1-2",
        config.layout.wal / "notes.damaged-1-2",
        config.layout.wal / "1.wal.damaged-by-hand",
    ]
    for path in paths:
        path.write_bytes(b"y" * 100)
    return paths


async def test_the_oldest_kept_aside_segments_go_beyond_the_count(tmp_path: Path) -> None:
    image = await crash_image_with(tmp_path, hole_then_a_later_segment, t_events=3)
    older = kept_aside_by_earlier_opens(image, 4, 10)
    others = not_kept_aside_by_replay(image)
    config = JsonlStorageConfig(image.base_path, wal_damaged_max_count=3)
    with capture_logs() as logs:
        async with await JsonlStorage.open(config) as storage:
            damaged = await storage.damaged_files()
            assert storage.recovery is not None and storage.recovery.wal_damaged_removed == 3
    # This open kept its two segments aside; of the four older ones only the newest stays.
    new = [p for p in damaged if ".wal.damaged-" in p.name and p not in older + others]
    assert len(new) == 2
    assert [p.exists() for p in older] == [False, False, False, True]
    assert all(path.exists() for path in others)
    removed = [entry for entry in logs if entry["event"] == "wal_damaged_segment_removed"]
    assert [entry["path"] for entry in removed] == [str(p) for p in older[:3]]


async def test_the_oldest_kept_aside_segments_go_beyond_the_bytes(tmp_path: Path) -> None:
    image = await crash_image_with(tmp_path, hole_then_a_later_segment, t_events=3)
    older = kept_aside_by_earlier_opens(image, 3, 4000)
    others = not_kept_aside_by_replay(image)
    new_bytes = sum(image.layout.segment(n).stat().st_size for n in (1, 2))
    config = JsonlStorageConfig(image.base_path, wal_damaged_max_bytes=new_bytes + 4000)
    async with await JsonlStorage.open(config) as storage:
        assert storage.recovery is not None and storage.recovery.wal_damaged_removed == 2
    assert [p.exists() for p in older] == [False, False, True]
    assert all(path.exists() for path in others)


async def test_an_open_without_damage_keeps_what_is_within_the_bounds(tmp_path: Path) -> None:
    config = JsonlStorageConfig(tmp_path)
    async with await JsonlStorage.open(config):
        pass
    older = kept_aside_by_earlier_opens(config, 3, 10)
    async with await JsonlStorage.open(config) as storage:
        assert storage.recovery is not None and storage.recovery.wal_damaged_removed == 0
    assert all(path.exists() for path in older)
    async with await JsonlStorage.open(JsonlStorageConfig(tmp_path, wal_damaged_max_count=1)):
        pass  # the bound holds at every open, for segments older opens kept aside too
    assert [p.exists() for p in older] == [False, False, True]


def set_aside_by(config: JsonlStorageConfig, earlier: list[Path]) -> list[Path]:
    """The kept-aside segments in the WAL directory not among ``earlier``."""
    return sorted(
        p for p in config.layout.wal.iterdir() if ".wal.damaged-" in p.name and p not in earlier
    )


async def test_what_this_open_kept_aside_stays_whatever_the_bounds(tmp_path: Path) -> None:
    """The damage an open just found is not removed by that open, unseen: only the
    next open's bound takes it (a segment may hold more than the bytes allowed)."""
    image = await crash_image_with(tmp_path, hole_then_a_later_segment, t_events=3)
    older = kept_aside_by_earlier_opens(image, 2, 10)
    config = JsonlStorageConfig(image.base_path, wal_damaged_max_count=0)
    async with await JsonlStorage.open(config) as storage:
        assert storage.recovery is not None and storage.recovery.wal_damaged_removed == 2
    assert not any(path.exists() for path in older)
    new = set_aside_by(config, older)
    assert len(new) == 2  # this open's two segments: still there for an operator
    async with await JsonlStorage.open(config) as storage:
        assert storage.recovery is not None and storage.recovery.wal_damaged_removed == 2
    assert set_aside_by(config, []) == []


async def test_a_clock_set_back_does_not_make_the_newest_kept_aside_go_first(
    tmp_path: Path,
) -> None:
    """Names carry a time: segments an earlier open kept aside when the clock was an
    hour ahead are still older than what a later open keeps aside."""
    image = await crash_image_with(tmp_path, hole_then_a_later_segment, t_events=3)
    ahead = time.time_ns() + 3600 * 10**9
    older = kept_aside_by_earlier_opens(image, 2, 10, since_ns=ahead)
    async with await JsonlStorage.open(image):
        pass
    new = set_aside_by(image, older)
    assert len(new) == 2
    async with await JsonlStorage.open(
        JsonlStorageConfig(image.base_path, wal_damaged_max_count=2)
    ):
        pass  # no damage at this open: the bound takes the two oldest, the earlier open's
    assert not any(path.exists() for path in older)
    assert all(path.exists() for path in new)


def test_the_bounds_must_not_be_negative(tmp_path: Path) -> None:
    for name in ("wal_damaged_max_count", "wal_damaged_max_bytes"):
        with pytest.raises(ValueError, match=name):
            JsonlStorageConfig(tmp_path, **{name: -1})  # type: ignore[arg-type]
    assert os.listdir(tmp_path) == []

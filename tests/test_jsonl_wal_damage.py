"""WAL replay (persistence/jsonl/wal_replay.py) tells damage from a crash: a hole a later
commit's record follows is damage, and keeps the acknowledged line; seqs the WAL holds
but cannot restore start a new epoch; segments set aside are named and counted; a crash
after old segments were retired stays quiet."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from bamboo_session.persistence import JsonlStorage, JsonlStorageConfig
from bamboo_session.persistence.jsonl import checkpoint, lifecycle, session_recovery, wal
from bamboo_session.persistence.jsonl.checkpoint import Checkpoint
from bamboo_session.protocol.models import AgentEvent, SessionMetadata
from tests.jsonl_support import segments
from tests.support import attach, run_server
from tests.test_jsonl_wal_room import Lines, crash_image_with, holed, record, seqs


def loud(caplog: pytest.LogCaptureFixture, level: int = logging.WARNING) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= level]


def hole_then_a_later_segment(lines: Lines) -> list[bytes]:
    """s's last record zeroed, and a segment after it: a segment rotates only once it
    is synced, so the hole's commit was not the last."""
    first = [record(lines, "s", 1), record(lines, "t", 1), record(lines, "s", 2)]
    return [b"".join([*first, holed(record(lines, "s", 3))]), record(lines, "t", 2)]


def hole_then_two_records_of_one_session(lines: Lines) -> bytes:
    """s's last record zeroed, then two of t's: a commit holds one record per session,
    so t's second record is from a later commit than the hole."""
    first = [record(lines, "s", 1), record(lines, "t", 1), record(lines, "s", 2)]
    later = [record(lines, "t", 2), record(lines, "t", 3)]
    return b"".join([*first, holed(record(lines, "s", 3)), *later])


def hole_then_a_deletion_then_lines(lines: Lines) -> bytes:
    """s's last record zeroed, then a deletion, then t's lines: a commit writes its
    deletions after all its lines, so t's record is from a later commit."""
    first = [record(lines, "s", 1), record(lines, "t", 1), record(lines, "s", 2)]
    later = [wal.encode_deleted("u", ""), record(lines, "t", 2)]
    return b"".join([*first, holed(record(lines, "s", 3)), *later])


def bad_checksum_then_two_records_of_one_session(lines: Lines) -> bytes:
    """s's last record fails its CRC (a flipped byte, not zeros), then two of t's."""
    first = [record(lines, "s", 1), record(lines, "t", 1), record(lines, "s", 2)]
    flipped = record(lines, "s", 3).replace(b"s2", b"s9")
    later = [record(lines, "t", 2), record(lines, "t", 3)]
    return b"".join([*first, flipped, *later])


def bad_checksum_then_another_sessions_record(lines: Lines) -> bytes:
    """s's last record fails its CRC (a flipped byte, not zeros), then one of t's: a
    crash leaves zeros where it wrote nothing, so s's record was written whole and
    damaged since; taken for a crash's, s's acknowledged seq 3 was cut from its log and
    acknowledged again (r499's flips of a segment a kill -9 left)."""
    first = [record(lines, "s", 1), record(lines, "t", 1), record(lines, "s", 2)]
    flipped = record(lines, "s", 3).replace(b'"crc"', b'"crs"')
    return b"".join([*first, flipped, record(lines, "t", 2)])


def the_last_two_records_joined(lines: Lines) -> bytes:
    """The newline that ended s's last record flipped: it and t's, the segment's last,
    read as one line that does not decode, with nothing after it. Not a crash's: it
    holds no zero byte (r499: s's seq 3 was cut and acknowledged again)."""
    first = [record(lines, "s", 1), record(lines, "t", 1), record(lines, "s", 2)]
    joined = record(lines, "s", 3)[:-1] + b"\x0b" + record(lines, "t", 2)
    return b"".join([*first, joined])


@pytest.mark.parametrize(
    "segment",
    [
        hole_then_a_later_segment,
        hole_then_two_records_of_one_session,
        hole_then_a_deletion_then_lines,
        bad_checksum_then_two_records_of_one_session,
        bad_checksum_then_another_sessions_record,
        the_last_two_records_joined,
    ],
)
async def test_a_hole_a_later_commit_follows_is_damage_and_keeps_the_acknowledged_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, segment: object
) -> None:
    config = await crash_image_with(tmp_path, segment, t_events=3)  # type: ignore[arg-type]
    with caplog.at_level(logging.INFO):
        async with await JsonlStorage.open(config) as storage:
            assert await seqs(storage, "s") == [1, 2, 3]
            assert (await storage.append_event("s", AgentEvent.token("next"))).seq == 4
            kept = await storage.damaged_files()
            assert storage.recovery is not None and storage.recovery.damaged == len(kept)
    errors = loud(caplog, logging.ERROR)
    assert any("followed by a later commit's record" in message for message in errors), errors
    assert (
        segments(config) == [] and kept and all(path.parent == config.layout.wal for path in kept)
    )
    assert all(any(str(path) in message for message in loud(caplog)) for path in kept)


async def seqs_2_and_3_lost(tmp_path: Path) -> tuple[JsonlStorageConfig, SessionMetadata]:
    """s's WAL record of seq 2 damaged, and its log cut back to seq 1 (its tail never
    synced): acknowledged seqs 2 and 3 are in neither. With s's metadata as it was."""

    def damaged(lines: Lines) -> bytes:
        return b"".join(
            [record(lines, "s", 1), holed(record(lines, "s", 2)), record(lines, "s", 3)]
        )

    config = await crash_image_with(tmp_path, damaged)
    log = config.layout.log("s")
    log.write_bytes(log.read_bytes().splitlines(keepends=True)[0])
    async with await JsonlStorage.open(config.with_read_only()) as storage:  # no replay
        before = await storage.get_metadata("s")
    assert before is not None
    return config, before


async def test_seqs_the_wal_cannot_restore_start_a_new_epoch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two faults: s's record of seq 2 is damaged, and its log kept only seq 1 (its tail
    was never synced). Acknowledged seqs 2 and 3 are gone from the store: an error
    names them, and s starts a new epoch, so a viewer that saw seq 3 is not served
    another event under it."""

    config, before = await seqs_2_and_3_lost(tmp_path)
    with caplog.at_level(logging.INFO):
        async with await JsonlStorage.open(config) as storage:
            meta = await storage.get_metadata("s")
            assert meta is not None and meta.last_seq == 1
            assert await seqs(storage, "s") == [1]
            assert meta.epoch != before.epoch
            epoch = meta.epoch
    errors = loud(caplog, logging.ERROR)
    assert any("acknowledged seqs 2..3" in message for message in errors), errors
    async with await JsonlStorage.open(config) as storage:  # the new epoch is durable
        meta = await storage.get_metadata("s")
        assert meta is not None and meta.epoch == epoch


async def test_a_crash_in_open_before_the_new_epoch_is_saved_renews_it_at_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The segments are the only record that seqs 2 and 3 were ever issued: they stay
    in the WAL until the session's new epoch is in its checkpoint."""

    config, before = await seqs_2_and_3_lost(tmp_path)

    def crash(*_args: object) -> None:
        raise OSError("crash before the checkpoint is written")

    with monkeypatch.context() as patch:
        patch.setattr(session_recovery.checkpoint, "create", crash)
        with pytest.raises(OSError, match="crash before"):
            await JsonlStorage.open(config)
    async with await JsonlStorage.open(config) as storage:
        meta = await storage.get_metadata("s")
        assert meta is not None and meta.epoch != before.epoch and meta.last_seq == 1


async def test_a_crash_after_old_segments_were_retired_is_quiet(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Segment 1 was retired before the crash; s's records start at seq 2 in segment 2.
    An ordinary crash: nothing at warning or above, nothing set aside."""

    def suffix(lines: Lines) -> list[bytes]:
        return [
            b"",
            record(lines, "s", 2) + record(lines, "t", 1),
            record(lines, "s", 3) + record(lines, "t", 2),
        ]

    config = await crash_image_with(tmp_path, suffix)
    config.layout.segment(1).unlink()
    with caplog.at_level(logging.INFO):
        async with await JsonlStorage.open(config) as storage:
            assert await seqs(storage, "s") == [1, 2, 3]
            assert (await storage.append_event("s", AgentEvent.token("next"))).seq == 4
            assert await storage.damaged_files() == []
    assert loud(caplog) == []


async def test_a_hole_in_the_last_commit_with_a_deletion_after_it_is_a_crash(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One commit holds t's lines and then t's deletion: two records of t after the
    hole, yet both from the hole's own commit. An ordinary crash, logged at info."""

    def last_commit_holed(lines: Lines) -> bytes:
        synced = [record(lines, "s", 1), record(lines, "t", 1), record(lines, "s", 2)]
        last = [holed(record(lines, "s", 3)), record(lines, "t", 2), wal.encode_deleted("t", "")]
        return b"".join([*synced, *last])

    config = await crash_image_with(tmp_path, last_commit_holed)
    with caplog.at_level(logging.INFO):
        async with await JsonlStorage.open(config) as storage:
            assert await seqs(storage, "s") == [1, 2]
            assert await storage.damaged_files() == []
    assert loud(caplog, logging.ERROR) == []


async def test_a_hole_in_the_last_commit_before_its_cancellations_is_a_crash(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A commit writes its cancellations of failed deletes first, then its lines: a
    cancellation after the hole, then t's lines, are the hole's own commit. An ordinary
    crash, logged at info, not damage that keeps the segments aside."""

    def last_commit_holed(lines: Lines) -> bytes:
        synced = [record(lines, "s", 1), record(lines, "t", 1), record(lines, "s", 2)]
        cancels = [holed(wal.encode_undeleted("a", "e")), wal.encode_undeleted("b", "e")]
        return b"".join([*synced, *cancels, record(lines, "t", 2)])

    config = await crash_image_with(tmp_path, last_commit_holed)
    with caplog.at_level(logging.INFO):
        async with await JsonlStorage.open(config) as storage:
            assert await seqs(storage, "s") == [1, 2]
            assert await seqs(storage, "t") == [1, 2]
            assert await storage.damaged_files() == []
    assert loud(caplog, logging.ERROR) == []


async def test_clearing_set_aside_segments_syncs_the_wal_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = await crash_image_with(tmp_path, hole_then_a_later_segment, t_events=3)
    synced: list[Path] = []
    real = lifecycle.fsync_dir
    monkeypatch.setattr(lifecycle, "fsync_dir", lambda d: (synced.append(Path(d)), real(d))[1])
    async with await JsonlStorage.open(config) as storage:
        kept = await storage.clear_damaged()
    assert kept and config.layout.wal in synced


async def test_a_session_whose_id_holds_the_damaged_mark_is_not_damage(tmp_path: Path) -> None:
    """Session ids are a peer's choice, and ``.damaged-`` fits the id alphabet: such a
    session's files were listed as damaged, and ``clear_damaged`` deleted them (its
    checkpoint and log: the session was gone at the next open)."""
    async with (
        run_server(tmp_path) as server,
        attach(server, "x.damaged-1", create=True) as (peer, _),
    ):
        await peer.send({"type": "event", "id": 1, "event": {"type": "token", "content": "a"}})
        assert (await peer.recv())["type"] == "ack"
    async with await JsonlStorage.open(JsonlStorageConfig(tmp_path)) as storage:
        assert await storage.damaged_files() == []
        assert await storage.clear_damaged() == []
    async with await JsonlStorage.open(JsonlStorageConfig(tmp_path)) as storage:
        assert await seqs(storage, "x.damaged-1") == [1]


async def test_a_record_whose_session_id_was_damaged_keeps_the_acknowledged_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """s's last record names session ``c`` (a flipped bit: the id is outside the CRC),
    then t's: no hole, and s's records end at seq 2, so its acknowledged seq 3 was cut
    from its log as never acknowledged and the next append took seq 3 again. A
    session's records are followed by its deletion's if it went; ``c`` has neither a
    checkpoint nor one: damage, and the segments are kept aside (r499)."""

    def another_id(lines: Lines) -> bytes:
        first = [record(lines, "s", 1), record(lines, "t", 1), record(lines, "s", 2)]
        renamed = record(lines, "s", 3).replace(b'"sid":"s"', b'"sid":"c"')
        return b"".join([*first, renamed, record(lines, "t", 2)])

    config = await crash_image_with(tmp_path, another_id)
    with caplog.at_level(logging.INFO):
        async with await JsonlStorage.open(config) as storage:
            assert await seqs(storage, "s") == [1, 2, 3]
            assert (await storage.append_event("s", AgentEvent.token("next"))).seq == 4
            assert await storage.get_metadata("c") is None
            kept = await storage.damaged_files()
    assert kept and segments(config) == []
    errors = loud(caplog, logging.ERROR)
    assert any("no checkpoint and no deletion after them ('c')" in m for m in errors), errors


async def test_a_replacement_cut_short_before_its_deletion_was_recorded_is_no_damage(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A create replacing the expired ``s`` wrote its ``.replacing`` checkpoint, and the
    crash came before the old session's deletion reached the WAL: the open finishes the
    replacement (the old files go first), so ``s``'s records are of no checkpoint and
    have no deletion after them, yet they are no damage (the rule above)."""

    def lines_of_both(lines: Lines) -> bytes:
        order = [("s", 1), ("t", 1), ("s", 2), ("s", 3), ("t", 2)]
        return b"".join([record(lines, session_id, seq) for session_id, seq in order])

    config = await crash_image_with(tmp_path, lines_of_both)
    new = Checkpoint(metadata=SessionMetadata(id="s", user_id="new", epoch="e2"))
    checkpoint.create(config.layout.replacement("s"), new)
    with caplog.at_level(logging.INFO):
        async with await JsonlStorage.open(config) as storage:
            metadata = await storage.get_metadata("s")
            assert metadata is not None and (metadata.user_id, metadata.last_seq) == ("new", 0)
            assert await seqs(storage, "t") == [1, 2]
            assert await storage.damaged_files() == []
    assert loud(caplog, logging.ERROR) == []

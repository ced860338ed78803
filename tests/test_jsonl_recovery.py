"""Opening a data directory that a crash left behind: each repair recovery makes.

The crash states are made by hand (a clean close, then the files are changed as a crash
would have left them, and the index snapshot removed), so each test checks one repair.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from bamboo_session.persistence import (
    JsonlStorage,
    JsonlStorageConfig,
    SessionFilter,
    StorageError,
)
from bamboo_session.protocol.log_lines import encode_stored_event
from bamboo_session.protocol.models import (
    AgentEvent,
    Message,
    MessageEvent,
    Session,
    SessionState,
    StoredEvent,
    utcnow,
)
from bamboo_session.server.readiness import probe_path
from tests.jsonl_support import crash_state, log_path, saved


@pytest.fixture
def config(tmp_path: Path) -> JsonlStorageConfig:
    return JsonlStorageConfig(tmp_path / "data")


async def seed(config: JsonlStorageConfig, messages: int = 3, events: int = 2) -> str:
    """A closed storage holding session "s" (user "u") with some history."""
    async with await JsonlStorage.open(config) as storage:
        await storage.create_session(Session.new("s", user_id="u", title="T"))
        for i in range(messages):
            await storage.append_message("s", Message.user(f"m{i}"))
        for i in range(events):
            await storage.append_event("s", AgentEvent.token(f"t{i}"))
        return await storage.epoch("s")


def line(seq: int, event: object, key: str | None = None) -> bytes:
    return encode_stored_event(StoredEvent(seq, utcnow(), event, key)) + b"\n"  # type: ignore[arg-type]


async def test_torn_last_line_is_cut(config: JsonlStorageConfig) -> None:
    await seed(config)
    crash_state(config)
    good = log_path(config).read_bytes()
    torn = line(6, AgentEvent.token("half"))[:-9]
    log_path(config).write_bytes(good + torn)
    async with await JsonlStorage.open(config) as storage:
        assert storage.recovery is not None and storage.recovery.torn_lines_cut == 1
        assert log_path(config).read_bytes() == good
        assert await storage.last_seq("s") == 5
        stored = await storage.append_event("s", AgentEvent.token("next"))
        assert stored.seq == 6
        assert [e.seq for e in await storage.read_events("s")] == [1, 2, 3, 4, 5, 6]


async def test_torn_first_line_after_checkpoint(config: JsonlStorageConfig) -> None:
    await seed(config)
    crash_state(config)
    with log_path(config).open("ab") as f:
        f.write(b'{"seq":6,"ts":"2025-')
    async with await JsonlStorage.open(config) as storage:
        assert await storage.last_seq("s") == 5
        assert len(await storage.get_session_history("s")) == 3


async def test_checkpoint_behind_log_is_brought_up_to_date(config: JsonlStorageConfig) -> None:
    epoch = await seed(config)
    crash_state(config)
    message = Message.assistant("written, not checkpointed")
    with log_path(config).open("ab") as f:
        f.write(line(6, MessageEvent(message), key="late-key"))
        f.write(line(7, AgentEvent.token("t")))
    async with await JsonlStorage.open(config) as storage:
        # Read from the log; the checkpoint follows later (here: at close).
        assert storage.recovery is not None and storage.recovery.checkpoints_repaired == 0
        meta = await storage.get_metadata("s")
        assert meta is not None
        assert (meta.last_seq, meta.message_count, meta.epoch) == (7, 4, epoch)
        history = await storage.get_session_history("s")
        assert history[-1] == message
        events = await storage.read_events("s", after_seq=5)
        assert [(e.seq, e.key) for e in events] == [(6, "late-key"), (7, None)]
    checkpoint = saved(config, "s")
    assert (checkpoint.metadata.last_seq, checkpoint.metadata.message_count) == (7, 4)
    assert checkpoint.log_offset == log_path(config).stat().st_size


async def test_log_without_checkpoint_is_recovered(config: JsonlStorageConfig) -> None:
    config.layout.events.mkdir(parents=True)
    log_path(config, "orphan").write_bytes(
        line(1, MessageEvent(Message.user("hello"))) + line(2, AgentEvent.token("x"))
    )
    async with await JsonlStorage.open(config.with_default_ttl(3600)) as storage:
        meta = await storage.get_metadata("orphan")
        assert meta is not None
        assert (meta.last_seq, meta.message_count, meta.ttl) == (2, 1, 3600)
        assert [m.content for m in await storage.get_session_history("orphan")] == ["hello"]
        assert (await storage.list_sessions(SessionFilter())).total == 1
        assert (await storage.append_event("orphan", AgentEvent.token("y"))).seq == 3


async def test_missing_log_means_a_new_epoch(config: JsonlStorageConfig) -> None:
    epoch = await seed(config)
    crash_state(config)
    log_path(config).unlink()
    async with await JsonlStorage.open(config) as storage:
        assert storage.recovery is not None and storage.recovery.epochs_renewed == 1
        assert await storage.epoch("s") != epoch
        assert await storage.last_seq("s") == 0
        # The history was the log's messages: gone with it (the new epoch says so).
        assert await storage.get_session_history("s") == []
        assert (await storage.get_metadata("s")).message_count == 0  # type: ignore[union-attr]
        assert (await storage.append_event("s", AgentEvent.token("x"))).seq == 1
        new_epoch = await storage.epoch("s")
    async with await JsonlStorage.open(config) as storage:
        assert await storage.epoch("s") == new_epoch  # the new epoch was saved


async def test_shortened_log_means_a_new_epoch(config: JsonlStorageConfig) -> None:
    epoch = await seed(config, messages=2, events=3)
    crash_state(config)
    lines = log_path(config).read_bytes().splitlines(keepends=True)
    log_path(config).write_bytes(b"".join(lines[:2]))
    async with await JsonlStorage.open(config) as storage:
        assert await storage.epoch("s") != epoch
        assert await storage.last_seq("s") == 2
        assert [e.seq for e in await storage.read_events("s")] == [1, 2]
        assert (await storage.append_event("s", AgentEvent.token("x"))).seq == 3


async def test_created_but_log_never_made(config: JsonlStorageConfig) -> None:
    await seed(config, messages=0, events=0)
    crash_state(config)
    log_path(config).unlink()
    async with await JsonlStorage.open(config) as storage:
        assert storage.recovery is not None and storage.recovery.epochs_renewed == 0
        assert (await storage.append_event("s", AgentEvent.token("x"))).seq == 1


async def test_interrupted_delete_is_finished(config: JsonlStorageConfig) -> None:
    await seed(config)
    crash_state(config)
    (config.layout.sessions / "s.json").rename(config.layout.sessions / "s.json.deleted")
    async with await JsonlStorage.open(config) as storage:
        assert await storage.get_metadata("s") is None
    assert not log_path(config).exists()
    assert not (config.layout.sessions / "s.json.deleted").exists()


async def test_interrupted_checkpoint_leaves_the_old_one(config: JsonlStorageConfig) -> None:
    await seed(config)
    crash_state(config)
    (config.layout.sessions / "s.json.tmp").write_bytes(b'{"metadata": {"id": "s", "us')
    async with await JsonlStorage.open(config) as storage:
        assert len(await storage.get_session_history("s")) == 3
    assert not (config.layout.sessions / "s.json.tmp").exists()


async def test_damaged_middle_is_kept_aside(config: JsonlStorageConfig) -> None:
    await seed(config, messages=0, events=4)
    crash_state(config)
    lines = log_path(config).read_bytes().splitlines(keepends=True)
    lines[2] = b"garbage\n"
    log_path(config).write_bytes(b"".join(lines))
    async with await JsonlStorage.open(config) as storage:
        assert await storage.last_seq("s") == 2
        assert storage.recovery is not None and storage.recovery.damaged == 1
        aside = await storage.damaged_files()
        assert len(aside) == 1 and aside[0].name.startswith("s.jsonl.damaged-")
        assert aside[0].read_bytes().startswith(b"garbage\n")
        assert await storage.clear_damaged() == aside
        assert await storage.damaged_files() == []
    assert not aside[0].exists()


async def test_stale_snapshot_is_not_trusted(config: JsonlStorageConfig) -> None:
    await seed(config)
    snapshot = (config.layout.index / "snapshot.msgpack").read_bytes()
    async with await JsonlStorage.open(config) as storage:
        await storage.append_message("s", Message.user("after the snapshot"))
        await storage.update_session_state("s", SessionState.IDLE)
    # As if the snapshot had survived from the earlier close (it cannot: open deletes it).
    (config.layout.index / "snapshot.msgpack").write_bytes(snapshot)
    async with await JsonlStorage.open(config) as storage:
        meta = await storage.get_metadata("s")
        assert meta is not None
        assert (meta.last_seq, meta.message_count, meta.state) == (6, 4, SessionState.IDLE)


async def test_snapshot_is_consumed_on_open(config: JsonlStorageConfig) -> None:
    await seed(config)
    storage = await JsonlStorage.open(config)
    try:
        assert not (config.layout.index / "snapshot.msgpack").exists()
    finally:
        await storage.close()
    assert (config.layout.index / "snapshot.msgpack").exists()


async def test_expired_sessions_survive_restart_until_cleanup(config: JsonlStorageConfig) -> None:
    async with await JsonlStorage.open(config) as storage:
        session = Session.new("old", ttl=60)
        session.metadata.touch(utcnow() - timedelta(minutes=5))
        await storage.create_session(session)
    async with await JsonlStorage.open(config) as storage:
        assert await storage.cleanup_expired_sessions() == 1


async def test_derived_files_of_gone_sessions_are_removed(config: JsonlStorageConfig) -> None:
    await seed(config)
    layout = config.layout
    layout.message_index("gone").write_bytes(b"stale")  # a delete cut short
    layout.preamble("gone").write_bytes(b"[]")
    async with await JsonlStorage.open(config) as storage:
        assert [m.id for m in (await storage.list_sessions(SessionFilter())).sessions] == ["s"]
    assert not layout.message_index("gone").exists()
    assert not layout.preamble("gone").exists()
    assert layout.message_index("s").exists()


async def test_a_checkpoint_damaged_in_both_slots_is_kept_aside(config: JsonlStorageConfig) -> None:
    await seed(config)
    crash_state(config)
    path = config.layout.checkpoint("s")
    path.write_bytes(b"\x00" * path.stat().st_size)
    async with await JsonlStorage.open(config) as storage:
        # Its metadata is lost; the log still tells the session's events and history.
        meta = await storage.get_metadata("s")
        assert meta is not None and meta.user_id is None and meta.last_seq == 5
        assert len(await storage.get_session_history("s")) == 3
        damaged = await storage.damaged_files()
        assert [p.name.split(".damaged-")[0] for p in damaged] == ["s.json"]


@pytest.mark.parametrize(
    ("file", "made", "said"),
    [
        ("log", Path.mkdir, "is a directory"),
        ("checkpoint", Path.mkdir, "is a directory"),
        ("log", os.mkfifo, "is not a regular file"),
        ("checkpoint", os.mkfifo, "is not a regular file"),  # an open waits for a writer
    ],
    ids=["log-directory", "checkpoint-directory", "log-fifo", "checkpoint-fifo"],
)
@pytest.mark.parametrize("snapshot", [True, False], ids=["snapshot", "crash"])
async def test_what_is_no_file_where_one_should_be_fails_the_open_saying_where(
    config: JsonlStorageConfig, file: str, made: Any, said: str, snapshot: bool
) -> None:
    """A StorageError that names the path and what to do, not an OSError from deep in the
    recovery (nor an open that hangs); the lock is let go, and once the thing is moved out
    the store opens."""
    await seed(config)
    if not snapshot:
        crash_state(config)
    path = log_path(config) if file == "log" else config.layout.checkpoint("s")
    path.unlink()
    made(path)
    with pytest.raises(StorageError) as refused:
        await JsonlStorage.open(config)
    assert str(refused.value) == (
        f"{path} {said}, where the store keeps a file of its own: move it out of the "
        "store's directory, then open the store again"
    )
    os.rmdir(path) if path.is_dir() else path.unlink()
    async with await JsonlStorage.open(config) as storage:
        assert await storage.get_metadata("s") is not None


async def test_a_probe_file_a_killed_server_left_is_none_of_the_stores(
    config: JsonlStorageConfig, caplog: pytest.LogCaptureFixture
) -> None:
    """``/readyz``'s probe writes its file in each directory appends write in
    (server/readiness.py); a server killed mid-probe leaves it there. The next open
    takes it for none of the store's files: it says nothing of it, keeps nothing
    aside, and the session is as it was."""
    epoch = await seed(config)
    crash_state(config)
    for directory in config.append_directories:
        probe_path(directory).write_bytes(bytes(65536))
    with caplog.at_level(logging.INFO), capture_logs() as structured:
        async with await JsonlStorage.open(config) as storage:
            assert [s.id for s in (await storage.list_sessions(SessionFilter())).sessions] == ["s"]
            assert await storage.epoch("s") == epoch
            assert len(await storage.get_session_history("s")) == 3
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert not [r for r in structured if r["log_level"] != "info"], structured
    assert config.layout.damaged_files() == []

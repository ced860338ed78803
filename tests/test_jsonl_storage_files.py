"""JsonlStorage's files, on real files in a temp dir: both durability modes and a
restart (with or without the index snapshot) keep everything; checkpoints follow appends
and time (a live state change too); small caches stay correct; appends after close fail
clearly, and deletes and creates under way at close are over when it returns; no stray
files; open descriptors stay bounded; cancelled callers cut no file work short.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from bamboo_session.persistence import JsonlStorage, JsonlStorageConfig, SessionFilter, StorageError
from bamboo_session.persistence.jsonl import message_index
from bamboo_session.protocol.models import AgentEvent, Message, Session, SessionState
from tests.jsonl_fixtures import config_fixture  # noqa: F401 (a fixture)
from tests.jsonl_support import make, populate, saved


@pytest.mark.parametrize("durability", ["fsync", "os"])
async def test_durability_modes_round_trip(config: JsonlStorageConfig, durability: str) -> None:
    config = config.with_durability(durability)  # type: ignore[arg-type]
    async with await JsonlStorage.open(config) as storage:
        await make(storage, "s", user_id="u")
        for i in range(10):
            await storage.append_message("s", Message.user(str(i)))
            await storage.append_event("s", AgentEvent.token(str(i)), key=f"k{i}")
        assert await storage.last_seq("s") == 20
        assert len(await storage.get_session_history("s")) == 10
        assert len(await storage.read_events("s")) == 20
    async with await JsonlStorage.open(config) as storage:
        history = await storage.get_session_history("s")
        assert [m.content for m in history] == [str(i) for i in range(10)]
        events = await storage.read_events("s")
        assert [e.seq for e in events] == list(range(1, 21))
        assert [e.key for e in events[1::2]] == [f"k{i}" for i in range(10)]


@pytest.mark.parametrize("snapshot", [True, False])
async def test_restart_keeps_everything(config: JsonlStorageConfig, snapshot: bool) -> None:
    async with await JsonlStorage.open(config) as storage:
        await populate(storage)
        before = await storage.list_sessions(SessionFilter(limit=1000))
        histories = {m.id: await storage.get_session_history(m.id) for m in before.sessions}
    if not snapshot:
        config.layout.snapshot.unlink()
    async with await JsonlStorage.open(config) as storage:
        assert storage.recovery is not None
        assert storage.recovery.from_snapshot == (12 if snapshot else 0)
        assert storage.recovery.checkpoints_repaired == 0
        after = await storage.list_sessions(SessionFilter(limit=1000))
        assert after == before
        for session_id, history in histories.items():
            assert await storage.get_session_history(session_id) == history
        idle = await storage.list_sessions(SessionFilter(state=SessionState.IDLE))
        assert idle.total == 2


async def test_checkpoints_follow_appends(config: JsonlStorageConfig) -> None:
    every, appends = 5, 12
    config = config.with_checkpointing(every=every, interval=3600)
    async with await JsonlStorage.open(config) as storage:
        await make(storage, "s")
        for i in range(appends):
            await storage.append_message("s", Message.user(str(i)))
        # The checkpoints run in the background while the appends go on, so where each
        # lands depends on timing; once they settle, the last is fewer than `every`
        # appends behind.
        for _ in range(200):
            checkpoint = saved(config, "s")
            if checkpoint.metadata.last_seq > appends - every:
                break
            await asyncio.sleep(0.01)
        assert checkpoint.metadata.last_seq > appends - every
        assert checkpoint.metadata.message_count == checkpoint.metadata.last_seq
        # Its index entries are in the file: at least those of the messages written when
        # the first checkpoint began; those appended while they were written are counted
        # by its metadata and indexed by the next checkpoint.
        index = checkpoint.index
        assert every <= index.count <= checkpoint.metadata.last_seq and index.seq == index.count
        entries = message_index.read(config.layout.message_index("s"), 0, index.count)
        assert [seq for seq, _offset, _length in entries] == list(range(1, index.count + 1))
        _seq, offset, length = entries[-1]
        assert index.offset == offset + length + 1
    checkpoint = saved(config, "s")  # the close wrote the last one
    assert checkpoint.metadata.last_seq == appends and checkpoint.metadata.message_count == appends
    assert checkpoint.log_offset == config.layout.log("s").stat().st_size


async def test_periodic_checkpoint(config: JsonlStorageConfig) -> None:
    config = config.with_checkpointing(every=1000, interval=0.05)
    async with await JsonlStorage.open(config) as storage:
        await make(storage, "s")
        await storage.append_message("s", Message.user("x"))
        for _ in range(100):
            await asyncio.sleep(0.02)
            if saved(config, "s").metadata.last_seq == 1:
                break
        assert saved(config, "s").metadata.last_seq == 1


async def test_small_caches_stay_correct(config: JsonlStorageConfig) -> None:
    config = JsonlStorageConfig(
        config.base_path, message_cache_bytes=4096, max_open_logs=2, checkpoint_every=3
    )
    async with await JsonlStorage.open(config) as storage:
        for n in range(6):
            await make(storage, f"s{n}")
        for round_ in range(5):
            await asyncio.gather(
                *(storage.append_message(f"s{n}", Message.user(f"{n}.{round_}")) for n in range(6))
            )
            for n in range(6):
                history = await storage.get_session_history(f"s{n}")
                assert [m.content for m in history] == [f"{n}.{r}" for r in range(round_ + 1)]
        assert storage._messages.bytes <= 4096


async def test_appends_after_close_fail_clearly(config: JsonlStorageConfig) -> None:
    storage = await JsonlStorage.open(config)
    await make(storage, "s")
    await storage.close()
    with pytest.raises(StorageError):
        await storage.create_session(Session.new("t"))
    with pytest.raises(StorageError):
        await storage.append_message("s", Message.user("late"))


@pytest.mark.parametrize("durability", ["fsync", "os"])
async def test_deletes_and_creates_under_way_are_over_when_close_returns(
    config: JsonlStorageConfig, durability: str
) -> None:
    """Deletes and a create under way when the store closes end, and take effect,
    before close returns (and releases the lock): no file of the store changes after
    it. (Deletes went on in the store's threads after it, or failed for want of them:
    in os mode 26 of 40 were still under way when it returned, 19 of them undone.)"""
    config = config.with_durability(durability)  # type: ignore[arg-type]
    ids = [f"s{i}" for i in range(40)]
    storage = await JsonlStorage.open(config)
    for session_id in ids:
        await make(storage, session_id)
        await storage.append_event(session_id, AgentEvent.token("x"))
    under_way = [asyncio.ensure_future(storage.delete_session(session_id)) for session_id in ids]
    under_way.append(asyncio.ensure_future(storage.create_session(Session.new("late"))))
    await asyncio.sleep(0)  # each one started
    await storage.close()
    assert [task.done() for task in under_way] == [True] * len(under_way)
    await asyncio.gather(*under_way)  # and none failed
    assert [path.name for path in config.layout.sessions.glob("*.json")] == ["late.json"]
    async with await JsonlStorage.open(config) as storage:
        listed = await storage.list_sessions(SessionFilter())
        assert [meta.id for meta in listed.sessions] == ["late"]


def test_no_stray_files(tmp_path: Path) -> None:
    async def scenario() -> None:
        config = JsonlStorageConfig(tmp_path)
        async with await JsonlStorage.open(config) as storage:
            await make(storage, "s")
            await storage.append_message("s", Message.user("x"))
            await make(storage, "gone")
            await storage.append_message("gone", Message.user("y"))
            await storage.delete_session("gone")

    asyncio.run(scenario())
    names = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert names == [
        "CLOCK",
        "FORMAT",
        "LOCK",
        "events/s.idx",
        "events/s.jsonl",
        "index/snapshot.msgpack",
        "sessions/s.json",
    ]
    assert os.path.getsize(tmp_path / "events" / "s.jsonl") > 0


async def test_descriptors_stay_bounded(config: JsonlStorageConfig) -> None:
    config = JsonlStorageConfig(config.base_path, max_open_logs=4, durability="os")
    async with await JsonlStorage.open(config) as storage:
        for n in range(60):
            await make(storage, f"s{n}")
        fds_before = len(os.listdir("/proc/self/fd"))
        # All at once, so that one batch could touch every session.
        for _ in range(3):
            await asyncio.gather(
                *(storage.append_event(f"s{n}", AgentEvent.token("x")) for n in range(60))
            )
        assert [await storage.last_seq(f"s{n}") for n in range(60)] == [3] * 60
        await storage._writer.flush()  # between batches: what was trimmed is closed
        assert len(storage._writer._files.open_logs) <= 4
        # the open logs, and at most as many duplicates in a background sync's hands
        assert len(os.listdir("/proc/self/fd")) <= fds_before + 2 * 4


async def test_cancelled_callers_do_not_cut_file_work_short(config: JsonlStorageConfig) -> None:
    async with await JsonlStorage.open(config) as storage:
        await make(storage, "s")
        for i in range(30):
            await storage.append_message("s", Message.user(str(i)))
        states = [SessionState.IDLE, SessionState.ACTIVE] * 10
        tasks = [asyncio.create_task(storage.update_session_state("s", state)) for state in states]
        tasks += [asyncio.create_task(make(storage, f"new{i}")) for i in range(10)]
        tasks += [asyncio.create_task(storage.delete_session("s"))]
        await asyncio.sleep(0.002)
        for task in tasks[::2]:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        created = {m.id for m in (await storage.list_sessions(SessionFilter())).sessions}
    assert not list(config.layout.sessions.glob("*.tmp"))
    async with await JsonlStorage.open(config) as storage:
        assert storage.recovery is not None and storage.recovery.from_snapshot == len(created)
        assert {m.id for m in (await storage.list_sessions(SessionFilter())).sessions} == created
        assert "s" not in created


async def test_an_append_whose_caller_is_cancelled_is_stored_all_the_same(
    config: JsonlStorageConfig,
) -> None:
    """Cancelling a caller who waits for the acknowledgement does not unmake its append:
    its seq is taken, its line is written, and the next append follows it."""
    async with await JsonlStorage.open(config) as storage:
        await make(storage, "s")
        tasks = [
            asyncio.create_task(storage.append_event("s", AgentEvent.token(str(i))))
            for i in range(20)
        ]
        await asyncio.sleep(0)  # every append is queued, none acknowledged yet
        for task in tasks[::2]:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert sum(isinstance(r, asyncio.CancelledError) for r in results) == 10
        assert (await storage.append_event("s", AgentEvent.token("after"))).seq == 21
    async with await JsonlStorage.open(config) as storage:
        events = await storage.read_events("s")
    assert [e.seq for e in events] == list(range(1, 22))
    assert [e.event.content for e in events] == [str(i) for i in range(20)] + ["after"]


async def test_a_live_state_change_is_written_with_the_next_checkpoint(tmp_path: Path) -> None:
    config = JsonlStorageConfig(str(tmp_path)).with_checkpointing(256, 0.05)
    async with await JsonlStorage.open(config) as storage:
        await storage.create_session(Session.new("s"))
        before = config.layout.checkpoint("s").read_bytes()
        meta = await storage.update_session_state("s", SessionState.IDLE)
        assert meta.state == SessionState.IDLE
        assert config.layout.checkpoint("s").read_bytes() == before  # not yet
        for _ in range(100):
            await asyncio.sleep(0.02)
            if saved(config, "s").metadata.state == SessionState.IDLE:
                break
        assert saved(config, "s").metadata.state == SessionState.IDLE

"""The WAL's sync helper (persistence/jsonl/syncer.py, sync_helper.py): a real child
process syncs each group commit; its failures fail the commit, never acknowledge it;
once it is gone the writer syncs on its thread; it never outlives the store."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
from pathlib import Path

import pytest

from bamboo_session.persistence import JsonlStorage, JsonlStorageConfig, StorageError
from bamboo_session.persistence.jsonl import syncer
from bamboo_session.persistence.jsonl.syncer import Syncer
from bamboo_session.protocol.models import AgentEvent, Session
from tests.jsonl_support import wal_records


def helper_pids() -> list[int]:
    """This process's children running the sync helper."""
    pids = []
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except FileNotFoundError:  # a thread that ended meanwhile (a closed store's pool)
            continue
        for child in children:
            try:
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            except FileNotFoundError:
                continue
            if b"sync_helper.py" in cmdline:
                pids.append(int(child))
    return pids


def held_files(pid: int) -> list[str]:
    return [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]


async def test_the_helper_syncs_a_file_and_reports_a_failure(tmp_path: Path) -> None:
    syncer = Syncer.start()
    assert syncer is not None
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    read_end, write_end = os.pipe()
    try:
        os.write(fd, b"x")
        assert await syncer.sync("file", fd) is None
        # fdatasync of a pipe fails for real (EINVAL): the error comes back, numbered.
        error = await syncer.sync("pipe", read_end)
        assert isinstance(error, OSError) and error.errno == errno.EINVAL
        assert await syncer.sync("file", fd) is None  # "file" again: a new descriptor
        # No descriptor (a segment not open): not the previous file's sync reported.
        error = await syncer.sync("closed", -1)
        assert isinstance(error, OSError) and error.errno == errno.EBADF
        assert not syncer.broken
    finally:
        await syncer.close()
        for descriptor in (fd, read_end, write_end):
            os.close(descriptor)
    assert helper_pids() == []


async def test_a_cancelled_sync_ends_with_its_answer_not_the_next_ones(tmp_path: Path) -> None:
    """The writer awaits the helper in its own task: a cancellation while the helper
    syncs comes once the answer is in (asyncio's own: 3.11's timeouts and task groups
    take no subclass for theirs), with that answer kept, and leaves the helper up."""
    syncer = Syncer.start()
    assert syncer is not None
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    read_end, write_end = os.pipe()
    try:
        for key, target, failed in (("pipe", read_end, errno.EINVAL), ("file", fd, None)):
            waiting = asyncio.ensure_future(syncer.sync(key, target))
            await asyncio.sleep(0)  # it asked the helper, and awaits the answer
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError) as cancelled:
                await waiting
            assert waiting.cancelled() and cancelled.type is asyncio.CancelledError
            assert syncer.cancelled_answer is not None
            error = syncer.cancelled_answer.error
            assert (error.errno if error is not None else None) == failed
            assert not syncer.broken
        os.write(fd, b"x")
        assert await syncer.sync("file", fd) is None
        error = await syncer.sync("pipe", read_end)
        assert isinstance(error, OSError) and error.errno == errno.EINVAL
    finally:
        await syncer.close()
        for descriptor in (fd, read_end, write_end):
            os.close(descriptor)


async def test_a_store_has_one_helper_and_it_ends_with_the_store(tmp_path: Path) -> None:
    before = helper_pids()
    async with await JsonlStorage.open(JsonlStorageConfig(tmp_path)) as storage:
        await storage.create_session(Session.new("a"))
        await storage.append_event("a", AgentEvent.token("x"))
        assert len(helper_pids()) == len(before) + 1
    assert helper_pids() == before
    os_mode = JsonlStorageConfig(tmp_path, durability="os")
    async with await JsonlStorage.open(os_mode) as storage:  # nothing to sync per commit
        await storage.append_event("a", AgentEvent.token("y"))
        assert helper_pids() == before


async def test_a_close_kills_a_helper_that_never_synced_and_lets_one_that_did_exit(
    tmp_path: Path,
) -> None:
    # Nothing is in flight at a close; the one that never synced may still be starting
    # its interpreter, which an open and close without appends would wait for.
    async with await JsonlStorage.open(JsonlStorageConfig(tmp_path)) as storage:
        await storage.create_session(Session.new("a"))  # a checkpoint: no WAL commit
        helper = storage._writer._syncer
        assert helper is not None
    assert helper._process.returncode == -signal.SIGKILL
    async with await JsonlStorage.open(JsonlStorageConfig(tmp_path)) as storage:
        for text in ("starts a segment", "synced by the helper"):
            await storage.append_event("a", AgentEvent.token(text))
        helper = storage._writer._syncer
        assert helper is not None
    assert helper._process.returncode == 0  # the end of its stream: it exited
    async with await JsonlStorage.open(JsonlStorageConfig(tmp_path)) as storage:
        assert [e.seq for e in await storage.read_events("a")] == [1, 2]
    assert helper_pids() == []


async def test_a_killed_helper_loses_nothing_acknowledged_and_the_thread_takes_over(
    tmp_path: Path,
) -> None:
    config = JsonlStorageConfig(tmp_path)
    acked: list[int] = []
    hundred_acked = asyncio.Event()
    async with await JsonlStorage.open(config) as storage:
        await storage.create_session(Session.new("a"))

        async def appender(worker: int) -> None:
            for i in range(150):
                try:
                    stored = await storage.append_event("a", AgentEvent.token(f"{worker}:{i}"))
                except StorageError:
                    continue  # the commit in flight when the helper died: not acknowledged
                acked.append(stored.seq)
                if len(acked) == 100:
                    hundred_acked.set()

        appenders = [asyncio.create_task(appender(n)) for n in range(4)]
        await hundred_acked.wait()
        (helper,) = helper_pids()
        os.kill(helper, signal.SIGKILL)
        await asyncio.gather(*appenders)
        assert storage._writer._syncer is not None and storage._writer._syncer.broken
        stored_seqs = [event.seq for event in await storage.read_events("a", limit=10_000)]
    assert len(acked) >= 550  # at most the commit in flight failed
    async with await JsonlStorage.open(config) as storage:
        seqs = [event.seq for event in await storage.read_events("a", limit=10_000)]
    assert seqs == stored_seqs == list(range(1, len(seqs) + 1))
    assert set(acked) <= set(seqs)


@pytest.mark.parametrize("sync_helper", [True, False])
async def test_both_ways_to_sync_keep_every_acknowledged_event(
    tmp_path: Path, sync_helper: bool
) -> None:
    config = JsonlStorageConfig(tmp_path, sync_helper=sync_helper)
    async with await JsonlStorage.open(config) as storage:
        for n in range(20):
            await storage.create_session(Session.new(f"s{n}"))
        await asyncio.gather(
            *(
                storage.append_event(f"s{n}", AgentEvent.token(str(i)))
                for i in range(10)
                for n in range(20)
            )
        )
        assert bool(helper_pids()) == sync_helper
    async with await JsonlStorage.open(config) as storage:
        assert [await storage.last_seq(f"s{n}") for n in range(20)] == [10] * 20


async def test_a_ctrl_c_or_a_stop_to_the_process_group_leaves_the_helper_syncing(
    tmp_path: Path,
) -> None:
    async with await JsonlStorage.open(JsonlStorageConfig(tmp_path)) as storage:
        await storage.create_session(Session.new("a"))
        for text in ("starts a segment", "synced by the helper: it is up"):
            await storage.append_event("a", AgentEvent.token(text))
        (helper,) = helper_pids()
        for signal_number in (signal.SIGINT, signal.SIGTERM):
            os.kill(helper, signal_number)
        await asyncio.sleep(0.1)
        await storage.append_event("a", AgentEvent.token("after"))
        assert helper_pids() == [helper]
        assert storage._writer._syncer is not None and not storage._writer._syncer.broken
    assert helper_pids() == []


async def test_a_sync_that_fails_in_the_helper_acknowledges_nothing_and_cuts_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trigger = tmp_path / "fail-next-sync"
    monkeypatch.setenv("BAMBOO_TEST_FAIL_SYNC", str(trigger))
    monkeypatch.setattr(syncer, "_HELPER", Path(__file__).with_name("failing_sync_helper.py"))
    config = JsonlStorageConfig(tmp_path / "data")
    async with await JsonlStorage.open(config) as storage:
        for session_id in ("a", "b"):
            await storage.create_session(Session.new(session_id))
            await storage.append_event(session_id, AgentEvent.token("ok1"))
        (segment,) = config.layout.wal.glob("*.wal")
        records = wal_records(segment)
        log_size = (config.layout.events / "a.jsonl").stat().st_size
        trigger.touch()
        results = await asyncio.gather(
            storage.append_event("a", AgentEvent.token("lost-a")),
            storage.append_event("b", AgentEvent.token("lost-b")),
            return_exceptions=True,
        )
        assert all(isinstance(r, StorageError) for r in results), results
        assert not trigger.exists()  # the helper's sync failed, for real
        assert segment.stat().st_size == len(records)  # cut back: nothing to replay
        assert (config.layout.events / "a.jsonl").stat().st_size == log_size
        assert (await storage.append_event("a", AgentEvent.token("ok2"))).seq == 2
    async with await JsonlStorage.open(config) as storage:
        assert [e.event for e in await storage.read_events("a")] == [
            AgentEvent.token("ok1"),
            AgentEvent.token("ok2"),
        ]
        assert [e.event for e in await storage.read_events("b")] == [AgentEvent.token("ok1")]


async def test_a_descriptor_that_does_not_arrive_ends_the_helper(tmp_path: Path) -> None:
    helper = Syncer.start()
    assert helper is not None
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        assert await helper.sync("file", fd) is None
        helper._channel.send(b"F")  # as if its descriptor had been lost on the way
        error = await helper.sync("file", fd)
        assert isinstance(error, OSError)  # not a sync of the previous file
        assert helper.broken
    finally:
        await helper.close()
        os.close(fd)
    assert helper_pids() == []


async def test_the_helper_lets_go_of_a_retired_segment(tmp_path: Path) -> None:
    config = JsonlStorageConfig(tmp_path).with_wal(segment_age=0.05)
    async with await JsonlStorage.open(config) as storage:
        await storage.create_session(Session.new("a"))
        for i in range(3):
            await storage.append_event("a", AgentEvent.token(str(i)))
            await asyncio.sleep(0.06)  # the next append starts a new segment
        await storage._writer.retirement.settled()
        (helper,) = helper_pids()
        held = [path for path in held_files(helper) if ".wal" in path]
        assert held == [str(config.layout.wal / f"{3:016d}.wal")]  # only the current one

"""JSONL group commits started outside the writer's task (persistence/jsonl/writer.py,
``_begin``): while that task is idle, what is queued in one turn of the loop is
written and its sync asked of the real helper at the next turn, and the helper's
answer acknowledges it, with no task woken or resumed but the callers'. The helper is
held by SIGSTOP so that a commit stays in flight for as long as a test needs: nothing
is acknowledged before its sync, a caller that leaves mid-commit takes nothing from
the others, a close or a delete waits for the commit's end, a failed sync fails the
whole group, on asyncio's loop and on uvloop's."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from bamboo_session.persistence import JsonlStorage, JsonlStorageConfig, StorageError
from bamboo_session.persistence.jsonl.wal import SegmentFile
from bamboo_session.persistence.jsonl.writer import LogWriter
from bamboo_session.protocol.models import AgentEvent, Session
from bamboo_session.wakeup import Wakeup
from tests.test_jsonl_writer import Reports, batch, made_layout
from tests.test_jsonl_writer_cancelled import LOOPS, answered, run, token, turns, until


@contextlib.contextmanager
def stopped(pid: int) -> Iterator[None]:
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


async def opened(config: JsonlStorageConfig, *sessions: str) -> JsonlStorage:
    """The store with the sessions, each with two events synced (its log open, the
    helper up: the first commits start a segment, on the writer's thread)."""
    storage = await JsonlStorage.open(config)
    for session_id in sessions:
        await storage.create_session(Session.new(session_id))
        for text in ("first", "second"):
            await storage.append_event(session_id, token(text))
    return storage


def helper_of(storage: JsonlStorage) -> Any:
    syncer = storage._writer._syncer
    assert syncer is not None and syncer._answered
    return syncer


def asked(syncer: Any) -> bool:
    """Whether a sync was asked of the helper (by a callback, or awaited by the task)."""
    return getattr(syncer, "_on_answer", None) is not None or syncer._waiter is not None


async def read(config: JsonlStorageConfig, session_id: str) -> list[AgentEvent]:
    async with await JsonlStorage.open(config) as storage:
        return [e.event for e in await storage.read_events(session_id)]  # type: ignore[misc]


def test_lone_appends_resume_no_task_of_the_writer(tmp_path: Path) -> None:
    """Counted, not timed: each lone append's commit is begun and answered in loop
    callbacks; the writer's task (``_run``, its ``Wakeup.wait``) sleeps throughout."""
    resumed: list[str] = []
    watched = {LogWriter._run.__code__: "LogWriter._run", Wakeup.wait.__code__: "Wakeup.wait"}

    def profile(frame: FrameType, event: str, _arg: object) -> None:
        if event == "call" and frame.f_code in watched:
            resumed.append(watched[frame.f_code])

    async def scenario() -> None:
        config = JsonlStorageConfig(tmp_path)
        async with await opened(config, "a") as storage:
            batches = storage._writer.batches
            sys.setprofile(profile)
            try:
                for i in range(20):
                    await storage.append_event("a", token(str(i)))
            finally:
                sys.setprofile(None)
            assert storage._writer.batches - batches == 20  # one commit each
        assert resumed.count("LogWriter._run") == 0
        assert len(await read(config, "a")) == 22

    asyncio.run(scenario())


@pytest.mark.parametrize("loop", LOOPS)
def test_appends_of_one_turn_share_a_commit_a_caller_that_leaves_takes_nothing(
    loop: str, tmp_path: Path
) -> None:
    config = JsonlStorageConfig(tmp_path)

    async def scenario() -> None:
        storage = await opened(config, "a", "b", "c")
        writer, syncer = storage._writer, helper_of(storage)
        batches = writer.batches
        with stopped(syncer.pid):
            appends = {
                s: asyncio.ensure_future(storage.append_event(s, token("one turn"))) for s in "abc"
            }
            await until(lambda: asked(syncer))  # written, its sync asked
            await turns()
            assert not any(a.done() for a in appends.values())  # none before its sync
            appends["b"].cancel()  # its connection gone mid-commit
            later = asyncio.ensure_future(storage.append_event("a", token("next turn")))
            await turns()
            assert not later.done() and writer._queue  # behind the commit under way
        for append in (appends["a"], appends["c"], later):
            await answered(append)
        assert appends["b"].cancelled()
        assert [appends["a"].result().seq, appends["c"].result().seq] == [3, 3]
        assert later.result().seq == 4
        assert writer.batches - batches == 2  # the three in one, the later one alone
        # The cancelled caller's lines were written all the same: its seq is taken.
        assert (await storage.append_event("b", token("after"))).seq == 4
        await storage.close()
        assert await read(config, "b") == [
            token("first"),
            token("second"),
            token("one turn"),
            token("after"),
        ]
        assert await read(config, "a") == [
            token("first"),
            token("second"),
            token("one turn"),
            token("next turn"),
        ]

    run(loop, scenario)


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("delete", [False, True], ids=["close", "delete and close"])
def test_a_close_or_a_delete_waits_for_the_commit_under_way(
    loop: str, delete: bool, tmp_path: Path
) -> None:
    config = JsonlStorageConfig(tmp_path)

    async def scenario() -> None:
        storage = await opened(config, "a", "b")
        syncer = helper_of(storage)
        with stopped(syncer.pid):
            appending = asyncio.ensure_future(storage.append_event("a", token("in flight")))
            await until(lambda: asked(syncer))
            if delete:
                deleting = asyncio.ensure_future(storage.delete_session("b"))
            closing = asyncio.ensure_future(storage.close())
            await turns()
            assert not appending.done() and not closing.done()
            assert not delete or not deleting.done()
        await answered(appending)
        assert appending.result().seq == 3
        if delete:
            await answered(deleting)
            deleting.result()
        await answered(closing)
        closing.result()
        assert await read(config, "a") == [token("first"), token("second"), token("in flight")]
        async with await JsonlStorage.open(config) as reopened:
            assert (await reopened.load_session("b") is None) == delete

    run(loop, scenario)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_helper_killed_mid_commit_fails_the_group_cut_back(loop: str, tmp_path: Path) -> None:
    """Every waiter of the group fails, nothing of it survives a reopen, and the writer
    goes on with its I/O thread's syncs."""
    config = JsonlStorageConfig(tmp_path)

    async def scenario() -> None:
        storage = await opened(config, "a", "b")
        syncer = helper_of(storage)
        sizes = {s: config.layout.log(s).stat().st_size for s in "ab"}
        with stopped(syncer.pid):
            appends = [asyncio.ensure_future(storage.append_event(s, token("lost"))) for s in "ab"]
            await until(lambda: asked(syncer))
            os.kill(syncer.pid, signal.SIGKILL)
        for append in appends:
            await answered(append)
            with pytest.raises(StorageError):
                append.result()
        assert {s: config.layout.log(s).stat().st_size for s in "ab"} == sizes
        assert syncer.broken
        assert (await storage.append_event("a", token("after"))).seq == 3
        await storage.close()
        assert await read(config, "a") == [token("first"), token("second"), token("after")]
        assert await read(config, "b") == [token("first"), token("second")]

    run(loop, scenario)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_commit_window_paces_commits_begun_outside_the_writer_s_task(
    loop: str, tmp_path: Path
) -> None:
    """Counted, not timed: with a commit window, an append that comes within it after a
    commit started waits for the rest of it, joined by what comes meanwhile, and that
    commit is begun (by the loop's timer) and answered in loop callbacks, as a lone
    append's is; the writer's task sleeps throughout. (It took every paced commit: woken,
    paced by a sleep, resumed after the sync.) A lone append does not wait."""
    resumed: list[str] = []

    def profile(frame: FrameType, event: str, _arg: object) -> None:
        if event == "call" and frame.f_code is LogWriter._run.__code__:
            resumed.append("LogWriter._run")

    async def scenario() -> None:
        layout = made_layout(tmp_path)
        reports = Reports()
        window = 1.0  # far longer than a commit takes, on a busy disk too
        segments = SegmentFile(layout, 1 << 20, 30.0)
        writer = LogWriter(
            layout, "fsync", 256, 1.0, window, reports.on_written, reports.on_failed,
            segments, sync_helper=True,
        )  # fmt: skip
        writer.start()
        # The logs open, the helper up, the segment started (on the writer's task).
        await asyncio.gather(*(writer.submit(s, batch(1)) for s in ("s0", "s1", "s2")))
        await asyncio.sleep(window * 1.2)  # past the window of that commit
        batches = writer.batches
        sys.setprofile(profile)
        try:
            lone = writer.submit("s0", batch(2))  # no commit within the window before it
            await turns()
            following = writer.submit("s1", batch(2))  # within the window of s0's commit
            await answered(lone)
            assert not following.done()  # s0 was committed without waiting for the window
            joining = writer.submit("s2", batch(2))
            await answered(following)
            assert joining.done()  # s1 waited for the window, and s2 joined its commit
        finally:
            sys.setprofile(None)
        assert writer.batches - batches == 2
        assert resumed == []
        await writer.close()
        assert [w[0] for w in reports.written[-3:]] == ["s0", "s1", "s2"]

    run(loop, scenario)

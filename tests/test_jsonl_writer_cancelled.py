"""The JSONL writer's task cancelled while a commit's sync is under way (what a teardown
that did not close the store does), on asyncio's loop and on uvloop's, with the real
sync helper held by SIGSTOP (so that the sync is in flight for as long as a test
needs) and ended by SIGKILL: the cancellation comes only once the sync's outcome is
known, however often it is sent or whatever sends it; every append is answered,
acknowledged only when its lines are synced, and what a failed sync wrote is cut back
first; no sync waits for ever for an answer that cannot come."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop

from bamboo_session.persistence import JsonlStorage, JsonlStorageConfig, StorageError
from bamboo_session.persistence.jsonl.syncer import Answered, Syncer
from bamboo_session.protocol.models import AgentEvent, Session
from tests.jsonl_support import wal_records

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}
BOUND = 30.0  # seconds a condition may take to come about on a loaded machine


def run(loop: str, scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        runner.run(scenario())


async def until(condition: Callable[[], object]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BOUND
    while not condition():
        assert loop.time() < deadline, "not within the bound"
        await asyncio.sleep(0.001)


async def turns(count: int = 20) -> None:
    """Let the loop run other callbacks: what is due by now has happened."""
    for _ in range(count):
        await asyncio.sleep(0)


async def answered(future: asyncio.Future[Any]) -> None:
    """A bound on what would otherwise hang the test: the future is done by then."""
    await asyncio.wait({future}, timeout=BOUND)
    assert future.done(), "never answered"


@pytest.fixture
def synced_file(tmp_path: Path) -> Any:
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"x")
    yield fd
    os.close(fd)


@contextlib.asynccontextmanager
async def syncer_up(synced_file: int) -> AsyncIterator[tuple[Syncer, int]]:
    """A started syncer whose helper has answered one sync, and the helper's pid;
    closed after."""
    syncer = Syncer.start()
    assert syncer is not None
    try:
        assert await syncer.sync("file", synced_file) is None  # the helper is up
        yield syncer, syncer._process.pid
    finally:
        await syncer.close()


@pytest.mark.parametrize("loop", LOOPS)
def test_a_sync_cancelled_twice_ends_once_its_answer_is_in_with_it(
    loop: str, synced_file: int
) -> None:
    async def scenario() -> None:
        async with syncer_up(synced_file) as (syncer, helper):
            os.kill(helper, signal.SIGSTOP)
            try:
                waiting = asyncio.ensure_future(syncer.sync("file", synced_file))
                await until(lambda: syncer._waiter is not None)
                assert waiting.cancel("first") and waiting.cancel("second")  # both refused
                await turns()
                assert not waiting.done()  # not before the answer
            finally:
                os.kill(helper, signal.SIGCONT)
            with pytest.raises(asyncio.CancelledError) as cancelled:
                await waiting
            assert waiting.cancelled() and cancelled.type is asyncio.CancelledError
            assert syncer.cancelled_answer == Answered(None)
            assert not syncer.broken
            os.write(synced_file, b"y")
            assert await syncer.sync("file", synced_file) is None  # its own answer

    run(loop, scenario)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_timeout_around_a_sync_ends_as_a_timeout_once_the_answer_is_in(
    loop: str, synced_file: int
) -> None:
    async def scenario() -> None:
        async with syncer_up(synced_file) as (syncer, helper):

            async def timed() -> int:
                with pytest.raises(TimeoutError):
                    async with asyncio.timeout(0.01):
                        await syncer.sync("file", synced_file)
                task = asyncio.current_task()
                assert task is not None
                return task.cancelling()  # the timeout's cancellation taken back

            os.kill(helper, signal.SIGSTOP)
            try:
                timing = asyncio.ensure_future(timed())
                await until(lambda: not timing.done() and asyncio.Task.cancelling(timing))
                await turns()
                assert not timing.done()  # the timeout fired, and waits for the answer
            finally:
                os.kill(helper, signal.SIGCONT)
            assert await timing == 0
            assert not syncer.broken and await syncer.sync("file", synced_file) is None

    run(loop, scenario)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_cancelled_sync_whose_helper_is_killed_ends_with_the_helper_s_failure(
    loop: str, synced_file: int
) -> None:
    async def scenario() -> None:
        async with syncer_up(synced_file) as (syncer, helper):
            os.kill(helper, signal.SIGSTOP)
            waiting = asyncio.ensure_future(syncer.sync("file", synced_file))
            await until(lambda: syncer._waiter is not None)
            waiting.cancel()
            os.kill(helper, signal.SIGKILL)
            await answered(waiting)
            with pytest.raises(asyncio.CancelledError):
                await waiting
            assert syncer.cancelled_answer is not None
            error = syncer.cancelled_answer.error
            assert error is not None and error.errno == errno.EIO
            assert syncer.broken

    run(loop, scenario)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_sync_under_way_when_the_syncer_closes_fails_rather_than_waits(
    loop: str, synced_file: int
) -> None:
    async def scenario() -> None:
        syncer = Syncer.start()
        assert syncer is not None
        assert await syncer.sync("file", synced_file) is None
        helper = syncer._process.pid
        os.kill(helper, signal.SIGSTOP)
        try:
            waiting = asyncio.ensure_future(syncer.sync("file", synced_file))
            await until(lambda: syncer._waiter is not None)
            closing = asyncio.ensure_future(syncer.close())  # its answer is never read now
            await turns()
        finally:
            os.kill(helper, signal.SIGCONT)  # (it exits at the end of its stream)
        await closing
        await answered(waiting)
        error = waiting.result()
        assert error is not None and error.errno == errno.EIO

    run(loop, scenario)


def token(text: str) -> AgentEvent:
    return AgentEvent.token(text)


async def tokens(config: JsonlStorageConfig) -> list[AgentEvent]:
    async with await JsonlStorage.open(config) as storage:
        return [event.event for event in await storage.read_events("a")]


async def opened_with_a_synced_commit(config: JsonlStorageConfig) -> JsonlStorage:
    storage = await JsonlStorage.open(config)
    await storage.create_session(Session.new("a"))
    for text in ("starts a segment", "synced"):
        await storage.append_event("a", token(text))
    return storage


async def hold_io_thread(storage: JsonlStorage) -> tuple[threading.Event, asyncio.Future[bool]]:
    """The writer's I/O thread busy until the event is set: its next call waits (in
    its queue, which held nothing else)."""
    started, held = threading.Event(), threading.Event()

    def hold() -> bool:
        started.set()
        return held.wait()

    holding = storage._writer._io.run(asyncio.get_running_loop(), hold)
    await until(started.is_set)
    return held, holding


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("outcome", ["synced", "helper killed"])
def test_appends_of_a_writer_cancelled_while_the_helper_syncs_are_all_answered(
    loop: str, outcome: str, tmp_path: Path
) -> None:
    """The commit under way is answered by its sync's outcome, once it is known (the
    failed one cut back first, even under a second cancellation); what was queued
    behind it, and any later append, fails; the store still closes."""
    config = JsonlStorageConfig(tmp_path)
    killed = outcome == "helper killed"

    async def scenario() -> None:
        storage = await opened_with_a_synced_commit(config)
        writer, syncer = storage._writer, storage._writer._syncer
        assert syncer is not None and syncer._answered
        log_size = config.layout.log("a").stat().st_size
        (segment,) = config.layout.wal.glob("*.wal")
        wal_size = len(wal_records(segment))
        held, io_call = await hold_io_thread(storage)  # where a failed sync is cut back
        helper = syncer._process.pid
        os.kill(helper, signal.SIGSTOP)
        try:
            appending = asyncio.ensure_future(storage.append_event("a", token("in flight")))
            await until(lambda: syncer._on_answer is not None)  # asked, outside the task
            behind = asyncio.ensure_future(storage.append_event("a", token("queued behind")))
            await until(lambda: writer._queue)
            writer._runner.cancel()
            await turns()
            assert not appending.done()  # the helper has not answered
            if killed:
                os.kill(helper, signal.SIGKILL)
                await until(lambda: writer._io._calls.qsize())  # the cut, behind the hold
                writer._runner.cancel()  # again, while the failed commit is cut back
                await turns()
                assert not appending.done()  # not before its cut
                held.set()
        finally:
            with contextlib.suppress(ProcessLookupError):  # (killed, and reaped)
                os.kill(helper, signal.SIGCONT)
            held.set()
        await io_call
        await answered(appending)
        await answered(behind)
        if killed:
            with pytest.raises(StorageError):
                appending.result()
            assert config.layout.log("a").stat().st_size == log_size  # cut back
            assert segment.stat().st_size == wal_size
        else:
            assert appending.result().seq == 3
        with pytest.raises(StorageError):
            behind.result()
        with pytest.raises(StorageError):
            await storage.append_event("a", token("after"))
        await storage.close()
        kept = [token("starts a segment"), token("synced")]
        assert await tokens(config) == (kept if killed else [*kept, token("in flight")])

    run(loop, scenario)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_writer_cancelled_twice_while_its_thread_syncs_acknowledges_only_after_the_sync(
    loop: str, tmp_path: Path
) -> None:
    """Without the helper the sync runs on the I/O thread: a second cancellation does
    not let the writer act on the commit (acknowledge it) before that sync ended."""
    config = JsonlStorageConfig(tmp_path, sync_helper=False)

    async def scenario() -> None:
        storage = await opened_with_a_synced_commit(config)
        writer = storage._writer
        held, io_call = await hold_io_thread(storage)
        try:
            appending = asyncio.ensure_future(storage.append_event("a", token("in flight")))
            await until(lambda: writer._io._calls.qsize())  # its sync, behind the hold
            writer._runner.cancel()
            await turns()
            writer._runner.cancel()
            await turns()
            assert not appending.done()  # its sync has not run
        finally:
            held.set()
        await io_call
        await answered(appending)
        assert appending.result().seq == 3
        await storage.close()
        assert await tokens(config) == [
            token("starts a segment"),
            token("synced"),
            token("in flight"),
        ]

    run(loop, scenario)

"""Edges of the JSONL group commits begun outside the writer's task (persistence/jsonl/
starts.py), found by a second look at h441, on asyncio's loop and on uvloop's, with the
real sync helper held by SIGSTOP or ended by SIGKILL:

- a commit begun outside runs in no caller's context: whatever it logs (the helper
  found dead as its sync is asked) carries none of the fields a connection bound for
  its own lines, though that connection's append made the commit begin; nor does the
  helper's answer, read in a callback of the loop, carry the fields of whoever opened
  the store;
- a flush queued while the writer's task, cancelled, carries a commit begun outside to
  its end (a failed sync being cut back) is answered, as one queued while the task's
  own commit ran to its end was: nothing takes the queue after that task;
- a writer's task cancelled while an append waits for a commit window leaves no
  ``_begin`` scheduled to run on the closed store (r454)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import structlog

from bamboo_session.persistence import JsonlStorageConfig, StorageError
from tests.test_jsonl_outside_commits import asked, helper_of, opened, read, stopped
from tests.test_jsonl_writer_cancelled import (
    LOOPS,
    answered,
    hold_io_thread,
    run,
    token,
    turns,
    until,
)


class FieldsOfEachLine(logging.Handler):
    """Each line logged, with the structlog fields bound where it was logged (what the
    server's formatter merges into it)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.getMessage(), structlog.contextvars.get_contextvars()))


def test_a_commit_begun_outside_logs_with_no_callers_fields(tmp_path: Path) -> None:
    """On asyncio's loop, whose turn runs the callbacks scheduled before it ahead of
    those of the sockets it found ready (the commit's ``_begin`` asks the dead helper
    first: a broken pipe). uvloop reads the helper's end first, in the store's
    context: not this case."""
    config = JsonlStorageConfig(tmp_path)
    handler = FieldsOfEachLine()
    root = logging.getLogger()

    async def scenario() -> None:
        storage = await opened(config, "a")
        syncer = helper_of(storage)
        os.kill(syncer.pid, signal.SIGKILL)
        # Dead, its end of the socket closed, and not reaped nor read yet: the commit's
        # ask is the first to find out.
        os.waitid(os.P_PID, syncer.pid, os.WEXITED | os.WNOWAIT)  # noqa: ASYNC222 (the loop held)
        root.addHandler(handler)
        try:
            structlog.contextvars.bind_contextvars(conn_id="c1", session_id="a")
            try:
                stored = await storage.append_event("a", token("after"))
            finally:
                structlog.contextvars.unbind_contextvars("conn_id", "session_id")
        finally:
            root.removeHandler(handler)
        assert stored.seq == 3  # synced on the writer's thread instead
        assert syncer.broken
        await storage.close()
        assert await read(config, "a") == [token("first"), token("second"), token("after")]

    run("asyncio", scenario)
    helper_lines = [(line, fields) for line, fields in handler.lines if "sync helper" in line]
    assert helper_lines, handler.lines
    assert [fields for _, fields in helper_lines if fields] == []


@pytest.mark.parametrize("loop", LOOPS)
def test_a_flush_queued_while_a_cancelled_writer_ends_a_failed_commit_is_answered(
    loop: str, tmp_path: Path
) -> None:
    config = JsonlStorageConfig(tmp_path)

    async def scenario() -> None:
        storage = await opened(config, "a")
        writer, syncer = storage._writer, helper_of(storage)
        held, io_call = await hold_io_thread(storage)  # where the failed sync is cut back
        try:
            with stopped(syncer.pid):
                appending = asyncio.ensure_future(storage.append_event("a", token("lost")))
                await until(lambda: asked(syncer))  # begun outside the task
                writer._runner.cancel()  # a teardown that does not close the store
                await until(lambda: writer._closing)
                os.kill(syncer.pid, signal.SIGKILL)
                await until(lambda: writer._io._calls.qsize())  # the cut, behind the hold
            flushing = asyncio.ensure_future(writer.flush())
            await until(lambda: writer._queue)  # queued while the cut is held
        finally:
            held.set()
        await io_call
        await answered(appending)
        with pytest.raises(StorageError):
            appending.result()
        await answered(flushing)
        with pytest.raises(StorageError):  # nothing took it: failed, as the queue was
            flushing.result()
        await storage.close()
        assert await read(config, "a") == [token("first"), token("second")]

    run(loop, scenario)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_commit_answered_outside_logs_with_no_openers_fields(loop: str, tmp_path: Path) -> None:
    """The helper's answer is read in a callback of the loop, which acknowledges the
    commit and begins the next: it runs in no context of the store's opener either (an
    application of the in-process API that opened it in a request of its own)."""
    config = JsonlStorageConfig(tmp_path)
    handler = FieldsOfEachLine()
    root = logging.getLogger()

    async def scenario() -> None:
        structlog.contextvars.bind_contextvars(request_id="r1")
        try:
            storage = await opened(config, "a")
        finally:
            structlog.contextvars.unbind_contextvars("request_id")
        syncer = helper_of(storage)
        root.addHandler(handler)
        try:
            with stopped(syncer.pid):
                appending = asyncio.ensure_future(storage.append_event("a", token("lost")))
                await until(lambda: asked(syncer))
                os.kill(syncer.pid, signal.SIGKILL)
                await answered(appending)
        finally:
            root.removeHandler(handler)
        with pytest.raises(StorageError):
            appending.result()
        await storage.close()

    run(loop, scenario)
    helper_lines = [(line, fields) for line, fields in handler.lines if "sync helper" in line]
    assert helper_lines, handler.lines
    assert [fields for _, fields in helper_lines if fields] == []


def test_a_writer_cancelled_while_an_append_waits_for_the_window_leaves_no_begin(
    tmp_path: Path,
) -> None:
    """An append waits for a commit window (the loop's timer that begins its commit
    pending) when the writer's task is cancelled (a teardown that does not close the
    store): it fails, the store closes, and no ``_begin`` is left scheduled to run on
    the closed store, up to a window later (asyncio's loop: its timers can be listed).
    (It was left scheduled.)"""
    config = JsonlStorageConfig(tmp_path, commit_window=0.05)

    async def scenario() -> None:
        storage = await opened(config, "a")
        writer = storage._writer
        writer._commit_window = 1.0  # (the URL's bound is 50 ms: paced on a busy loop too)
        appending = asyncio.ensure_future(storage.append_event("a", token("paced")))
        await turns()
        assert writer._begin_due and not appending.done()  # the timer pending
        writer._runner.cancel()
        await answered(appending)
        with pytest.raises(StorageError):
            appending.result()
        await storage.close()
        scheduled = getattr(asyncio.get_running_loop(), "_scheduled", [])
        assert [h for h in scheduled if not h.cancelled() and h._callback == writer._begin] == []
        assert await read(config, "a") == [token("first"), token("second")]

    run("asyncio", scenario)

"""The SQLite store's import of a session as closed (``bamboo-session migrate``) racing
a ``subscribe``: the subscriber reads the session's state on a reader thread while
the import commits on the writer's, and must end ``closed`` all the same, not wait for
events that can no longer come."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from bamboo_session.persistence.sqlite import SqliteStorage, SqliteStorageConfig, reads
from bamboo_session.protocol.models import AgentEvent, Session, SessionState

RECV = 5.0  # seconds: a bound on a wait for what the store already took


def first_position_read_held(
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[threading.Event, threading.Event]:
    """The next ``reads.log_position``: reads, says so (the first event), then waits for
    the second before it answers what it read."""
    real, read, answer = reads.log_position, threading.Event(), threading.Event()

    def log_position(*args: Any) -> tuple[int, str, str]:
        position = real(*args)
        if not read.is_set():
            read.set()
            answer.wait(RECV)
        return position

    monkeypatch.setattr(reads, "log_position", log_position)
    return read, answer


async def test_a_subscribe_that_read_the_state_before_an_import_closed_it_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with await SqliteStorage.open(SqliteStorageConfig(tmp_path / "store.db")) as store:
        await store.create_session(Session.new("s1"))
        await store.append_event("s1", AgentEvent.token("a"))
        meta = await store.get_metadata("s1")
        assert meta is not None
        read, answer = first_position_read_held(monkeypatch)
        subscribing = asyncio.create_task(store.subscribe("s1", after_seq=0))
        assert await asyncio.to_thread(read.wait, RECV)  # it read the session open
        meta.state = SessionState.CLOSED
        await store.import_metadata(meta)  # committed, its subscriptions (none yet) ended
        answer.set()
        subscription = await subscribing
        seen = []
        while batch := await asyncio.wait_for(subscription.next_batch(), RECV):
            seen += [event.seq for event in batch]
        assert (seen, subscription.ended) == ([1], "closed")

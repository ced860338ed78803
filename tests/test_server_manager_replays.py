"""The SessionManager's replays to an in-process receiver, read from the store a page
at a time, on real files: a receiver resuming far back holds one page at a time; one
whose caller stops waiting mid-replay loses nothing; a replay that fails, or whose
session is deleted, lets no live event past its gap."""

from __future__ import annotations

import asyncio
import contextlib
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bamboo_session.persistence import JsonlStorage, JsonlStorageConfig
from bamboo_session.protocol import AgentEvent
from bamboo_session.server.manager import Receiver, SessionManager, SessionManagerConfig
from tests.replay_support import SlotsTaken


async def test_a_receiver_resuming_far_back_holds_one_page_at_a_time(tmp_path: Path) -> None:
    storage = await JsonlStorage.open(JsonlStorageConfig(str(tmp_path), durability="os"))
    config = SessionManagerConfig(ring_size=16)  # the replay is read from the store
    async with storage, await SessionManager.new(config, storage) as manager:
        session = await manager.create_session()
        for i in range(3000):  # about 6 MB of JSON, 13 MB once decoded
            await manager.append_event(session.id, AgentEvent.token(f"{i:04}" + "x" * 2000))
        tracemalloc.start()
        try:
            receiver = await manager.connect_session(session.id, last_seq=0)
            first = await receiver.recv()
            held = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        assert first is not None and first.seq == 1
        assert held < 3_000_000, f"{held} bytes held after the first event"
        seqs = [first.seq] + [(await receiver.recv()).seq for _ in range(2999)]  # type: ignore[union-attr]
        assert seqs == list(range(1, 3001))


@contextlib.asynccontextmanager
async def replaying(
    tmp_path: Path, read_timeout: float = 5.0
) -> AsyncIterator[tuple[SessionManager, str, Receiver]]:
    """A session of 1,200 events (replay pages of 512, 512 and 176, read from the
    store), and a receiver that has taken the first page of its replay from 0."""
    storage = await JsonlStorage.open(JsonlStorageConfig(str(tmp_path), durability="os"))
    config = SessionManagerConfig(ring_size=0, store_read_timeout=read_timeout)
    async with storage, await SessionManager.new(config, storage) as manager:
        session = await manager.create_session()
        tokens = [(AgentEvent.token(f"t{i}"), None) for i in range(1200)]
        await manager.append_events(session.id, tokens)
        receiver = await manager.connect_session(session.id, last_seq=0)
        for seq in range(1, 513):
            event = await asyncio.wait_for(receiver.recv(), 5)
            assert event is not None and event.seq == seq
        yield manager, session.id, receiver


async def test_a_receiver_whose_caller_stops_waiting_mid_replay_loses_nothing(
    tmp_path: Path,
) -> None:
    async with replaying(tmp_path) as (manager, session_id, receiver):
        async with SlotsTaken(manager.page_reads):  # the next page waits for a slot...
            with pytest.raises(TimeoutError):  # ...and the caller stops waiting for it
                await asyncio.wait_for(receiver.recv(), 0.3)
        await manager.append_event(session_id, AgentEvent.token("live"))  # seq 1201
        seqs = [(await asyncio.wait_for(receiver.recv(), 5)).seq for _ in range(689)]  # type: ignore[union-attr]
        assert seqs == list(range(513, 1202))


async def test_a_replay_that_fails_lets_no_live_event_past_its_gap(tmp_path: Path) -> None:
    """The session is closed while its receiver is mid-replay, with a live event queued
    before the close, and the next page is not read in time: the receiver ends (1011)
    without that event, which would follow a gap."""
    async with replaying(tmp_path, read_timeout=0.5) as (manager, session_id, receiver):
        await manager.append_event(session_id, AgentEvent.token("live"))  # 1201, queued
        await manager.close_session(session_id)  # its close queued behind it
        async with SlotsTaken(manager.page_reads):
            assert await asyncio.wait_for(receiver.recv(), 5) is None
        assert receiver.close_code == 1011


async def test_a_replay_whose_session_is_deleted_lets_no_live_event_past_its_gap(
    tmp_path: Path,
) -> None:
    async with replaying(tmp_path) as (manager, session_id, receiver):
        await manager.append_event(session_id, AgentEvent.token("live"))  # 1201, queued
        await manager.delete_session(session_id)  # the next page's read: not found
        assert await asyncio.wait_for(receiver.recv(), 5) is None
        assert receiver.close_code == 4404

"""JsonlStorage, on real files in a temp dir: messages and events (seqs, keys,
batches, concurrent appends, long logs), states and TTL (transitions, expiry, cleanup),
and listing (filters, sort, pages, naive times read as UTC).
"""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import pytest

from bamboo_session.persistence import (
    InvalidTransition,
    JsonlStorage,
    JsonlStorageConfig,
    SessionClosed,
    SessionExpired,
    SessionFilter,
    SortBy,
    SortOrder,
)
from bamboo_session.protocol.models import (
    AgentEvent,
    Message,
    MessageEvent,
    Role,
    Session,
    SessionState,
    utcnow,
)
from tests.jsonl_fixtures import config_fixture, storage_fixture  # noqa: F401 (fixtures)
from tests.jsonl_support import make, populate, saved

# -- messages and events ----------------------------------------------------------


async def test_append_message_fills_and_counts(storage: JsonlStorage) -> None:
    session = await make(storage, "s", ttl=3600)
    before = session.metadata.last_activity_at
    bare = Message(role=Role.USER, content="hello")
    stored = await storage.append_message("s", bare)
    assert stored.seq == 1 and not stored.duplicate
    event = (await storage.read_events("s"))[0].event
    assert isinstance(event, MessageEvent)
    message = event.message
    assert message.id and message.created_at is not None
    await storage.append_message("s", Message.assistant("hi there"))
    history = await storage.get_session_history("s")
    assert [m.content for m in history] == ["hello", "hi there"]
    assert history[0] == message
    meta = await storage.get_metadata("s")
    assert meta is not None
    assert (meta.message_count, meta.last_seq) == (2, 2)
    assert meta.last_activity_at > before
    assert meta.expires_at == meta.last_activity_at + timedelta(seconds=3600)


async def test_message_event_counts_as_a_message(storage: JsonlStorage) -> None:
    await make(storage, "s")
    await storage.append_event("s", AgentEvent.message(Message(role=Role.USER, content="x")))
    await storage.append_event("s", AgentEvent.token("t"))
    history = await storage.get_session_history("s")
    assert [m.content for m in history] == ["x"] and history[0].id
    assert (await storage.last_seq("s")) == 2


async def test_events_are_read_back_with_keys(storage: JsonlStorage) -> None:
    await make(storage, "s")
    first = await storage.append_event("s", AgentEvent.token("a"), key="k-1")
    await storage.append_event("s", AgentEvent.thinking("b"))
    await storage.append_message("s", Message.user("c"), key="k-3")
    lines = (storage.config.base_path / "events" / "s.jsonl").read_bytes().splitlines()
    assert [json.loads(line).get("key") for line in lines] == ["k-1", None, "k-3"]
    assert [json.loads(line)["seq"] for line in lines] == [1, 2, 3]
    events = await storage.read_events("s")
    assert [e.seq for e in events] == [1, 2, 3]
    assert [e.key for e in events] == ["k-1", None, "k-3"]
    assert events[0].seq == first.seq and events[0].event == AgentEvent.token("a")
    assert [e.seq for e in await storage.read_events("s", after_seq=1)] == [2, 3]
    assert [e.seq for e in await storage.read_events("s", after_seq=1, limit=1)] == [2]
    assert await storage.read_events("s", after_seq=3) == []
    assert await storage.read_events("s", after_seq=99) == []
    assert await storage.read_events("s", limit=0) == []


async def test_append_events_is_one_consecutive_batch(storage: JsonlStorage) -> None:
    await make(storage, "s")
    await storage.append_event("s", AgentEvent.token("0"))
    batch = [(AgentEvent.token(str(i)), f"k{i}") for i in range(1, 6)]
    stored = await storage.append_events("s", batch)
    assert [e.seq for e in stored] == [2, 3, 4, 5, 6]
    events = await storage.read_events("s", after_seq=1)
    assert [e.key for e in events] == ["k1", "k2", "k3", "k4", "k5"]
    assert await storage.append_events("s", []) == []
    assert await storage.last_seq("s") == 6


async def test_concurrent_appends_get_consecutive_seqs_in_call_order(
    storage: JsonlStorage,
) -> None:
    await make(storage, "s")
    await make(storage, "t")
    calls = []
    for i in range(100):
        session_id = "s" if i % 3 else "t"
        if i % 5 == 0:
            calls.append(storage.append_message(session_id, Message.user(str(i))))
        else:
            calls.append(storage.append_event(session_id, AgentEvent.token(str(i))))
    results = await asyncio.gather(*calls)
    for session_id in ("s", "t"):
        seqs = [r.seq for i, r in enumerate(results) if ("s" if i % 3 else "t") == session_id]
        assert seqs == list(range(1, len(seqs) + 1))
        events = await storage.read_events(session_id)
        assert [e.seq for e in events] == seqs
    # Fewer batches than appends: group commit at work.
    assert storage._writer.batches < 100


async def test_long_log_reads_from_the_middle(config: JsonlStorageConfig) -> None:
    async with await JsonlStorage.open(config.with_durability("os")) as storage:
        await make(storage, "s")
        payload = "x" * 2000
        for _ in range(20):
            await storage.append_events("s", [(AgentEvent.token(payload), None)] * 20)
        assert len(storage._records["s"].marks) > 1  # reads can seek
        for after in (0, 1, 150, 390, 399, 400):
            events = await storage.read_events("s", after_seq=after, limit=5)
            assert [e.seq for e in events] == list(range(after + 1, min(after + 5, 400) + 1))


async def test_last_seq_and_epoch(storage: JsonlStorage) -> None:
    session = await make(storage, "s")
    assert await storage.last_seq("s") == 0
    assert await storage.epoch("s") == session.metadata.epoch
    await storage.append_event("s", AgentEvent.token("a"))
    assert await storage.last_seq("s") == 1


# -- state and TTL ----------------------------------------------------------------


async def test_state_transitions(storage: JsonlStorage) -> None:
    await make(storage, "s", user_id="u")
    meta = await storage.update_session_state("s", SessionState.IDLE)
    assert meta.state == SessionState.IDLE
    result = await storage.list_sessions(SessionFilter(state=SessionState.IDLE))
    assert [m.id for m in result.sessions] == ["s"]
    await storage.append_message("s", Message.user("last words"))
    await storage.update_session_state("s", SessionState.CLOSED)
    # Durable at once: the checkpoint on disk says so.
    assert saved(storage.config, "s").metadata.state == SessionState.CLOSED
    with pytest.raises(SessionClosed):
        await storage.append_event("s", AgentEvent.token("after"))
    with pytest.raises(SessionClosed):
        await storage.append_message("s", Message.user("after"))
    with pytest.raises(InvalidTransition):
        await storage.update_session_state("s", SessionState.ACTIVE)
    # History stays readable.
    assert [m.content for m in await storage.get_session_history("s")] == ["last words"]
    loaded = await storage.load_session("s")
    assert loaded is not None and loaded.metadata.state == SessionState.CLOSED


async def test_expired_session(storage: JsonlStorage) -> None:
    session = Session.new("old", ttl=60)
    session.metadata.touch(utcnow() - timedelta(minutes=5))
    await storage.create_session(session)
    await make(storage, "fresh", ttl=60)
    await make(storage, "forever")
    with pytest.raises(SessionExpired):
        await storage.load_session("old")
    with pytest.raises(SessionExpired):
        await storage.get_session_history("old")
    with pytest.raises(SessionExpired):
        await storage.append_event("old", AgentEvent.token("x"))
    assert await storage.get_metadata("old") is not None
    assert await storage.cleanup_expired_sessions() == 1
    assert await storage.get_metadata("old") is None
    assert not (storage.config.base_path / "sessions" / "old.json").exists()
    assert not (storage.config.base_path / "events" / "old.jsonl").exists()
    assert await storage.cleanup_expired_sessions() == 0
    assert {m.id for m in (await storage.list_sessions(SessionFilter())).sessions} == {
        "fresh",
        "forever",
    }


async def test_expired_state_is_cleaned_up(storage: JsonlStorage) -> None:
    await make(storage, "s")
    await storage.update_session_state("s", SessionState.EXPIRED)
    with pytest.raises(SessionExpired):
        await storage.load_session("s")
    assert await storage.cleanup_expired_sessions() == 1


async def test_ttl_slides_with_activity(storage: JsonlStorage) -> None:
    session = Session.new("s", ttl=60)
    session.metadata.touch(utcnow() - timedelta(seconds=50))
    await storage.create_session(session)
    await storage.append_event("s", AgentEvent.token("still here"))
    meta = await storage.get_metadata("s")
    assert meta is not None and meta.expires_at is not None
    assert meta.expires_at > utcnow() + timedelta(seconds=55)


async def test_background_cleanup(config: JsonlStorageConfig) -> None:
    async with await JsonlStorage.open(config.with_cleanup_interval(0.05)) as storage:
        session = Session.new("old", ttl=1)
        session.metadata.touch(utcnow() - timedelta(seconds=5))
        await storage.create_session(session)
        await make(storage, "kept")
        for _ in range(100):
            if await storage.get_metadata("old") is None:
                break
            await asyncio.sleep(0.02)
        assert await storage.get_metadata("old") is None
        assert await storage.get_metadata("kept") is not None


# -- listing ----------------------------------------------------------------------


@pytest.mark.parametrize("enable_index", [True, False])
async def test_list_sessions_filters_sorts_pages(
    config: JsonlStorageConfig, enable_index: bool
) -> None:
    if not enable_index:
        config = config.disable_index()
    async with await JsonlStorage.open(config) as storage:
        ids = await populate(storage)
        everything = await storage.list_sessions(SessionFilter())
        assert everything.total == 12
        assert [m.id for m in everything.sessions] == ids[::-1]  # created_at desc
        asc = await storage.list_sessions(SessionFilter(sort_order=SortOrder.ASC, limit=3))
        assert [m.id for m in asc.sessions] == ids[:3] and asc.total == 12 and asc.limit == 3
        page = await storage.list_sessions(SessionFilter(offset=10, limit=5))
        assert [m.id for m in page.sessions] == ["s01", "s00"] and page.offset == 10
        user = await storage.list_sessions(SessionFilter(user_id="u1"))
        assert sorted(m.id for m in user.sessions) == ["s01", "s04", "s07", "s10"]
        idle = await storage.list_sessions(SessionFilter(state=SessionState.IDLE))
        assert sorted(m.id for m in idle.sessions) == ["s03", "s06"]
        both = await storage.list_sessions(SessionFilter(user_id="u0", state=SessionState.IDLE))
        assert [m.id for m in both.sessions] == ["s06", "s03"]
        cats = await storage.list_sessions(SessionFilter(title_contains="cats"))
        assert cats.total == 6
        boundary = everything.sessions[4].created_at  # s07
        after = await storage.list_sessions(SessionFilter(created_after=boundary))
        assert sorted(m.id for m in after.sessions) == ids[7:]
        before = await storage.list_sessions(SessionFilter(created_before=boundary))
        assert sorted(m.id for m in before.sessions) == ids[:7]
        active_after = utcnow() - timedelta(minutes=40)
        recent = await storage.list_sessions(SessionFilter(active_after=active_after))
        assert all(m.last_activity_at >= active_after for m in recent.sessions)
        by_count = await storage.list_sessions(SessionFilter(sort_by=SortBy.MESSAGE_COUNT))
        counts = [m.message_count for m in by_count.sessions]
        assert counts == sorted(counts, reverse=True) and counts[0] == 3
        for sort_by in (SortBy.UPDATED_AT, SortBy.LAST_ACTIVITY_AT):
            result = await storage.list_sessions(
                SessionFilter(sort_by=sort_by, sort_order=SortOrder.ASC)
            )
            keys = [getattr(m, sort_by.value) for m in result.sessions]
            assert keys == sorted(keys)
        users = await storage.list_user_sessions("u2")
        assert [m.id for m in users] == ["s11", "s08", "s05", "s02"]
        assert await storage.list_user_sessions("nobody") == []


async def test_listed_metadata_is_a_copy(storage: JsonlStorage) -> None:
    await make(storage, "s", user_id="u")
    result = await storage.list_sessions(SessionFilter())
    result.sessions[0].title = "changed"
    result.sessions[0].extra["x"] = 1
    meta = await storage.get_metadata("s")
    assert meta is not None and meta.title is None and meta.extra == {}


async def test_list_filters_accept_naive_times_as_utc(storage: JsonlStorage) -> None:
    await make(storage, "s", title="Cats and Dogs")
    naive_past = (utcnow() - timedelta(hours=1)).replace(tzinfo=None)
    result = await storage.list_sessions(
        SessionFilter(created_after=naive_past, active_after=naive_past)
    )
    assert [m.id for m in result.sessions] == ["s"]
    assert (await storage.list_sessions(SessionFilter(title_contains="Dogs"))).total == 1
    assert (await storage.list_sessions(SessionFilter(title_contains="dogs"))).total == 0

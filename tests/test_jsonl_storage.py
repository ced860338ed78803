"""JsonlStorage: every method of the storage contract, on real files in a temp dir."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from bamboo_session.persistence import (
    InvalidSessionId,
    InvalidTransition,
    JsonlStorage,
    JsonlStorageConfig,
    SessionClosed,
    SessionExists,
    SessionExpired,
    SessionFilter,
    SessionNotFound,
    SortBy,
    SortOrder,
    Storage,
    StorageError,
    StorageFull,
    StorageLocked,
    open_storage,
)
from bamboo_session.persistence.jsonl import message_index
from bamboo_session.protocol.models import (
    AgentEvent,
    Message,
    MessageEvent,
    Role,
    Session,
    SessionState,
    utcnow,
)
from tests.jsonl_support import saved

BAD_IDS = ["", ".", "..", "../etc", "a/b", "a b", "x" * 129, "é", "a\x00b"]


@pytest.fixture
def config(tmp_path: Path) -> JsonlStorageConfig:
    return JsonlStorageConfig(tmp_path / "data")


@pytest.fixture
async def storage(config: JsonlStorageConfig) -> AsyncIterator[JsonlStorage]:
    storage = await JsonlStorage.open(config)
    yield storage
    await storage.close()


async def make(storage: JsonlStorage, session_id: str, **kwargs: object) -> Session:
    session = Session.new(session_id, **kwargs)  # type: ignore[arg-type]
    await storage.create_session(session)
    return session


# -- config ---------------------------------------------------------------------------


def test_config_defaults_and_home_expansion() -> None:
    config = JsonlStorageConfig("~/.bamboo/sessions")
    assert config.base_path == Path.home() / ".bamboo" / "sessions"
    assert (config.default_ttl, config.max_sessions) == (None, None)
    assert config.cleanup_interval == 3600
    assert config.enable_index is True
    assert config.durability == "fsync"
    assert config.checkpoint_every > 1 and config.checkpoint_interval > 0


def test_config_builders_return_new_configs() -> None:
    base = JsonlStorageConfig.new("/tmp/x")
    built = (
        base.with_default_ttl(86400)
        .with_max_sessions(10000)
        .with_cleanup_interval(60)
        .disable_index()
        .with_durability("os")
        .with_checkpointing(every=8, interval=0.5)
    )
    assert (built.default_ttl, built.max_sessions, built.cleanup_interval) == (86400, 10000, 60)
    assert (built.enable_index, built.durability) == (False, "os")
    assert (built.checkpoint_every, built.checkpoint_interval) == (8, 0.5)
    assert base == JsonlStorageConfig("/tmp/x")  # untouched
    with pytest.raises(AttributeError):
        base.default_ttl = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    "change",
    [
        {"durability": "sometimes"},
        {"default_ttl": 0},
        {"max_sessions": -1},
        {"cleanup_interval": 0},
        {"checkpoint_every": 0},
        {"commit_window": -0.001},
        {"commit_window": 1.0},
    ],
)
def test_config_rejects_nonsense(change: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        JsonlStorageConfig("/tmp/x", **change)  # type: ignore[arg-type]


@pytest.mark.parametrize("given", ["soon", "nan", "inf", "-1", "0.5"])
async def test_a_bad_commit_window_in_the_url_is_named(tmp_path: Path, given: str) -> None:
    with pytest.raises(ValueError, match="commit_window must be"):
        await open_storage(f"jsonl://{tmp_path}/store?commit_window={given}")
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("given", ["many", "0", "-3", "1.5", ""])
async def test_a_bad_max_open_logs_in_the_url_is_named(tmp_path: Path, given: str) -> None:
    with pytest.raises(ValueError, match="max_open_logs must be"):
        await open_storage(f"jsonl://{tmp_path}/store?max_open_logs={given}")
    assert not (tmp_path / "store").exists()


async def test_max_open_logs_comes_from_the_url(tmp_path: Path) -> None:
    async with await open_storage(f"jsonl://{tmp_path}?max_open_logs=2") as storage:
        assert isinstance(storage, JsonlStorage) and storage.config.max_open_logs == 2
        for session_id in ("s1", "s2", "s3"):  # more than stay open: each reopened
            await storage.create_session(Session.new(session_id))
            assert (await storage.append_event(session_id, AgentEvent.token("t"))).seq == 1
        assert (await storage.append_event("s1", AgentEvent.token("u"))).seq == 2


async def test_the_commit_window_comes_from_the_url(tmp_path: Path) -> None:
    async with await open_storage(f"jsonl://{tmp_path}?commit_window=0.002") as storage:
        assert isinstance(storage, JsonlStorage)
        assert storage.config.commit_window == 0.002
        await storage.create_session(Session.new("s1"))
        assert (await storage.append_event("s1", AgentEvent.token("t"))).seq == 1


# -- lifecycle and layout ----------------------------------------------------------


async def test_open_lays_out_the_directory(config: JsonlStorageConfig) -> None:
    async with await JsonlStorage.open(config) as storage:
        assert isinstance(storage, Storage)
        assert storage.ready
        await make(storage, "s1")
        await storage.append_event("s1", AgentEvent.token("hi"))
        base = config.base_path
        assert (base / "sessions" / "s1.json").is_file()
        assert (base / "events" / "s1.jsonl").is_file()
        assert (base / "index").is_dir()
        assert (base / "LOCK").is_file()
    assert not storage.ready
    await storage.close()  # twice is fine
    with pytest.raises(StorageError, match="not open"):
        await storage.append_event("s1", AgentEvent.token("late"))


async def test_second_open_in_this_process_is_refused(storage: JsonlStorage) -> None:
    with pytest.raises(StorageLocked, match=str(storage.config.base_path)):
        await JsonlStorage.open(storage.config)


async def test_second_open_from_another_process_is_refused(storage: JsonlStorage) -> None:
    script = (
        "import asyncio, sys\n"
        "from bamboo_session.persistence import JsonlStorage, JsonlStorageConfig, StorageLocked\n"
        "async def main():\n"
        "    try:\n"
        "        await JsonlStorage.open(JsonlStorageConfig(sys.argv[1]))\n"
        "    except StorageLocked as exc:\n"
        "        print('locked:', exc)\n"
        "asyncio.run(main())\n"
    )
    result = subprocess.run(  # noqa: ASYNC221 - the lock is held; nothing else to run
        [sys.executable, "-c", script, str(storage.config.base_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.stdout.startswith("locked:"), result.stderr
    assert str(storage.layout.lock) in result.stdout


async def test_lock_is_released_on_close(config: JsonlStorageConfig) -> None:
    first = await JsonlStorage.open(config)
    await first.close()
    second = await JsonlStorage.open(config)
    await second.close()


# -- sessions ---------------------------------------------------------------------


async def test_create_and_load(storage: JsonlStorage) -> None:
    session = Session.new("session-001").with_user_id("user-123").with_title("My Chat")
    await storage.create_session(session)
    loaded = await storage.load_session("session-001")
    assert loaded is not None
    assert loaded.metadata == session.metadata
    assert loaded.messages == []
    meta = await storage.get_metadata("session-001")
    assert meta == session.metadata
    assert await storage.load_session("nope") is None
    assert await storage.get_metadata("nope") is None


async def test_create_keeps_initial_messages(storage: JsonlStorage) -> None:
    session = Session.new("s", user_id="u")
    session.messages = [Message.system("be brief"), Message(role=Role.USER, content="hi")]
    await storage.create_session(session)
    history = await storage.get_session_history("s")
    assert [m.content for m in history] == ["be brief", "hi"]
    assert all(m.id and m.created_at for m in history)
    meta = await storage.get_metadata("s")
    assert meta is not None and meta.message_count == 2 and meta.last_seq == 2  # in the log


async def test_create_twice_is_refused(storage: JsonlStorage) -> None:
    await make(storage, "s")
    with pytest.raises(SessionExists):
        await make(storage, "s")


async def test_max_sessions(config: JsonlStorageConfig) -> None:
    async with await JsonlStorage.open(config.with_max_sessions(2)) as storage:
        await make(storage, "a")
        await make(storage, "b")
        with pytest.raises(StorageFull):
            await make(storage, "c")
        await storage.delete_session("a")
        await make(storage, "c")


async def test_concurrent_creates_respect_max_sessions(config: JsonlStorageConfig) -> None:
    async with await JsonlStorage.open(config.with_max_sessions(3)) as storage:
        results = await asyncio.gather(
            *(make(storage, f"s{i}") for i in range(6)), return_exceptions=True
        )
        assert sum(isinstance(r, StorageFull) for r in results) == 3
        assert (await storage.list_sessions(SessionFilter())).total == 3


async def test_default_ttl_applies_only_without_a_ttl(config: JsonlStorageConfig) -> None:
    async with await JsonlStorage.open(config.with_default_ttl(600)) as storage:
        await make(storage, "plain")
        await make(storage, "own", ttl=30)
        plain = await storage.get_metadata("plain")
        own = await storage.get_metadata("own")
        assert plain is not None and own is not None
        assert plain.ttl == 600
        assert plain.expires_at == plain.last_activity_at + timedelta(seconds=600)
        assert own.ttl == 30


@pytest.mark.parametrize("bad", BAD_IDS)
async def test_invalid_ids_are_refused_everywhere(storage: JsonlStorage, bad: str) -> None:
    calls = [
        storage.create_session(Session.new(bad)),
        storage.load_session(bad),
        storage.get_metadata(bad),
        storage.delete_session(bad),
        storage.get_session_history(bad),
        storage.append_message(bad, Message.user("x")),
        storage.append_event(bad, AgentEvent.token("x")),
        storage.append_events(bad, [(AgentEvent.token("x"), None)]),
        storage.read_events(bad),
        storage.last_seq(bad),
        storage.epoch(bad),
        storage.update_session_state(bad, SessionState.IDLE),
        storage.get_history_page(bad, 10),
        storage.touch(bad),
    ]
    for call in calls:
        with pytest.raises(InvalidSessionId):
            await call
    assert not any(storage.config.base_path.rglob("*etc*"))


async def test_unknown_session_is_not_found(storage: JsonlStorage) -> None:
    calls = [
        storage.delete_session("ghost"),
        storage.get_session_history("ghost"),
        storage.append_message("ghost", Message.user("x")),
        storage.append_event("ghost", AgentEvent.token("x")),
        storage.read_events("ghost"),
        storage.last_seq("ghost"),
        storage.epoch("ghost"),
        storage.update_session_state("ghost", SessionState.IDLE),
        storage.get_history_page("ghost", 10),
        storage.touch("ghost"),
    ]
    for call in calls:
        with pytest.raises(SessionNotFound):
            await call


async def test_delete_removes_files_and_index(storage: JsonlStorage) -> None:
    await make(storage, "s", user_id="u")
    await storage.append_message("s", Message.user("hi"))
    await storage.delete_session("s")
    base = storage.config.base_path
    assert not (base / "sessions" / "s.json").exists()
    assert not (base / "events" / "s.jsonl").exists()
    assert await storage.load_session("s") is None
    assert await storage.list_user_sessions("u") == []
    with pytest.raises(SessionNotFound):
        await storage.delete_session("s")
    # The id is free again, with a fresh log.
    await make(storage, "s")
    stored = await storage.append_event("s", AgentEvent.token("again"))
    assert stored.seq == 1
    assert await storage.get_session_history("s") == []


async def test_delete_while_appending(storage: JsonlStorage) -> None:
    await make(storage, "s")
    appends = [asyncio.ensure_future(storage.append_event("s", AgentEvent.token("x")))]
    await storage.delete_session("s")
    await asyncio.gather(*appends, return_exceptions=True)
    assert not (storage.config.base_path / "events" / "s.jsonl").exists()


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


async def populate(storage: JsonlStorage) -> list[str]:
    now = utcnow()
    ids = []
    for i in range(12):
        session = Session.new(
            f"s{i:02d}", user_id=f"u{i % 3}", title=f"Chat {i} about cats" if i % 2 else f"Chat {i}"
        )
        session.metadata.created_at = now - timedelta(minutes=100 - i)
        session.metadata.touch(now - timedelta(minutes=50 - i))
        await storage.create_session(session)
        for _ in range(i % 4):
            await storage.append_message(session.id, Message.user("m"))
        ids.append(session.id)
    await storage.update_session_state("s03", SessionState.IDLE)
    await storage.update_session_state("s06", SessionState.IDLE)
    return ids


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


# -- durability modes and restart -------------------------------------------------


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


async def test_list_filters_accept_naive_times_as_utc(storage: JsonlStorage) -> None:
    await make(storage, "s", title="Cats and Dogs")
    naive_past = (utcnow() - timedelta(hours=1)).replace(tzinfo=None)
    result = await storage.list_sessions(
        SessionFilter(created_after=naive_past, active_after=naive_past)
    )
    assert [m.id for m in result.sessions] == ["s"]
    assert (await storage.list_sessions(SessionFilter(title_contains="Dogs"))).total == 1
    assert (await storage.list_sessions(SessionFilter(title_contains="dogs"))).total == 0


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

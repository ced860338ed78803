"""JsonlStorage, on real files in a temp dir: its config (and the options its URL
gives), the directory it lays out and its lock, and sessions (create, load, limits,
ids, delete). The rest of the storage contract is in test_jsonl_storage_logs.py, what
its files keep across a restart in test_jsonl_storage_files.py.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from bamboo_session.persistence import (
    InvalidSessionId,
    JsonlStorage,
    JsonlStorageConfig,
    SessionExists,
    SessionFilter,
    SessionNotFound,
    Storage,
    StorageError,
    StorageFull,
    StorageLocked,
    open_storage,
)
from bamboo_session.protocol.models import AgentEvent, Message, Role, Session, SessionState
from tests.jsonl_fixtures import config_fixture, storage_fixture  # noqa: F401 (fixtures)
from tests.jsonl_support import make

BAD_IDS = ["", ".", "..", "../etc", "a/b", "a b", "x" * 129, "é", "a\x00b"]


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
        {"busy_window": -0.001},
        {"busy_window": 1.0},
    ],
)
def test_config_rejects_nonsense(change: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        JsonlStorageConfig("/tmp/x", **change)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["commit_window", "busy_window"])
@pytest.mark.parametrize("given", ["soon", "nan", "inf", "-1", "0.5"])
async def test_a_bad_window_in_the_url_is_named(tmp_path: Path, name: str, given: str) -> None:
    with pytest.raises(ValueError, match=f"{name} must be"):
        await open_storage(f"jsonl://{tmp_path}/store?{name}={given}")
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


@pytest.mark.parametrize(("query", "seconds"), [("", 0.002), ("?busy_window=0", 0.0)])
async def test_the_busy_window_comes_from_the_url(
    tmp_path: Path, query: str, seconds: float
) -> None:
    """2 ms by default; 0 turns it off (a commit behind a sync then starts at once)."""
    async with await open_storage(f"jsonl://{tmp_path}{query}") as storage:
        assert isinstance(storage, JsonlStorage)
        assert storage.config.busy_window == seconds
        assert storage._writer._busy_window == seconds


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

"""persistence/migrate.py between real stores: every session arrives as the source holds
it (metadata, state, TTL, messages, events with seq, ts and key, epoch), verify agrees,
an interrupted run finishes when run again, a dry run changes nothing, and the new store
goes on where the old one stopped (seqs, idempotency keys, subscriptions); a rerun
into a store a server serves in the same process closes the viewers of a session it
imports as closed.

Backends: memory and sqlite both ways, jsonl as a source. Tests with JSONL as the
destination run once JsonlStorage implements SessionImport (import_events and
import_metadata), and skip until then."""

from __future__ import annotations

import asyncio
import sqlite3
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bamboo_session.persistence import JsonlStorage, Storage, open_storage
from bamboo_session.persistence.importing import SessionImport
from bamboo_session.persistence.migrate import Action, Progress, migrate
from bamboo_session.persistence.migrate_verify import verify
from bamboo_session.protocol.models import (
    AgentEvent,
    Message,
    Session,
    SessionMetadata,
    SessionState,
    ToolResult,
)
from tests.support import attach, run_server

URLS = {
    "memory": lambda _directory: "memory://",
    "sqlite": lambda directory: f"sqlite://{directory / 'store.db'}",
    "jsonl": lambda directory: f"jsonl://{directory / 'store'}",
}


async def open_store(kind: str, directory: Path) -> Storage:
    return await open_storage(URLS[kind](directory), cleanup_interval=None)


async def populate(store: Storage, bulk: int = 12, events: int = 150) -> None:
    """Sessions in every state, with messages, keyed events, TTLs and extras."""
    chat = Session.new("chat", user_id="u1", title="Chat", ttl=3600, extra={"tags": ["a", 1]})
    chat.messages = [Message.system("be brief")]
    await store.create_session(chat)
    await store.append_message("chat", Message.user("hello"), key="m1")
    await store.append_events(
        "chat",
        [
            (AgentEvent.thinking("hmm"), None),
            (AgentEvent.tool_start("t1", "search", {"q": "x"}), "t1-start"),
            (AgentEvent.tool_complete("t1", ToolResult(True, "found")), None),
            (AgentEvent.token("Hi"), "tok-1"),
        ],
    )
    await store.append_event("chat", AgentEvent.message(Message.assistant("Hi there")))
    await store.update_session_state("chat", SessionState.IDLE)
    await store.create_session(Session.new("closed", user_id="u2"))
    await store.append_events("closed", [(AgentEvent.token(str(i)), f"k{i}") for i in range(5)])
    # "" is a key like any other, kept apart from no key.
    empty = [(AgentEvent.token("empty key"), ""), (AgentEvent.token("no key"), None)]
    await store.append_events("closed", empty)
    await store.update_session_state("closed", SessionState.CLOSED)
    await store.create_session(Session.new("empty"))
    await store.create_session(Session.new("gone", ttl=60))
    await store.update_session_state("gone", SessionState.EXPIRED)
    for i in range(bulk):
        session_id = f"bulk-{i:03d}"
        await store.create_session(Session.new(session_id, user_id=f"u{i % 3}"))
        items = [
            (AgentEvent.token(f"{session_id}/{n}"), f"{session_id}/{n}") for n in range(events)
        ]
        await store.append_events(session_id, items)
        await store.append_message(session_id, Message.user(f"last of {session_id}"))


async def all_sessions(store: Storage) -> list[SessionMetadata]:
    from bamboo_session.persistence.migrate import source_sessions

    return [meta async for meta in source_sessions(store)]


async def assert_same(source: Storage, target: Storage) -> None:
    """The target holds every session of the source, exactly."""
    mine, theirs = await all_sessions(source), await all_sessions(target)
    assert [m.id for m in mine] == [m.id for m in theirs]
    for a, b in zip(mine, theirs, strict=True):
        b.connections = a.connections  # live, not stored
        if isinstance(source, JsonlStorage) != isinstance(target, JsonlStorage):
            # The JSONL store counts its log's lines; the others, events' JSON and keys.
            b.stored_bytes = a.stored_bytes
        assert a == b, a.id
        assert await source.read_events(a.id) == await target.read_events(b.id), a.id
        if not a.is_expired():  # an expired session's history is refused
            assert await source.get_session_history(a.id) == await target.get_session_history(b.id)


@pytest.fixture
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[list[Storage]]:
    opened: list[Storage] = []
    for number, kind in enumerate(request.param):
        store = await open_store(kind, tmp_path / f"{number}-{kind}")
        if number and not isinstance(store, SessionImport):
            await store.close()
            for other in opened:
                await other.close()
            pytest.skip(f"{kind} cannot import sessions yet (no SessionImport)")
        opened.append(store)
    try:
        yield opened
    finally:
        for store in opened:
            await store.close()


PAIRS = [
    ("memory", "sqlite"),
    ("sqlite", "memory"),
    ("sqlite", "sqlite"),
    ("jsonl", "sqlite"),
    ("sqlite", "jsonl"),
]


@pytest.mark.parametrize("stores", PAIRS, indirect=True, ids=["->".join(p) for p in PAIRS])
async def test_every_session_arrives_as_it_was(stores: list[Storage]) -> None:
    source, target = stores
    await populate(source)
    progress = await migrate(source, target)
    assert (progress.copied, progress.skipped, progress.conflicts) == (16, 0, [])
    assert (
        progress.events_done
        == progress.events_total
        == sum(m.last_seq for m in await all_sessions(source))
    )
    await assert_same(source, target)
    compared, differences = await verify(source, target)
    assert (compared, differences) == (16, [])


ROUND_TRIP = [("jsonl", "sqlite", "jsonl"), ("sqlite", "memory", "sqlite")]


@pytest.mark.parametrize(
    "stores", ROUND_TRIP, indirect=True, ids=["->".join(p) for p in ROUND_TRIP]
)
async def test_a_round_trip_gives_identical_sessions(stores: list[Storage]) -> None:
    first, middle, last = stores
    await populate(first)
    await migrate(first, middle)
    await migrate(middle, last)
    await assert_same(first, last)
    assert (await verify(first, last))[1] == []
    assert (await verify(middle, last))[1] == []


@pytest.mark.parametrize("stores", [("memory", "sqlite")], indirect=True)
async def test_the_new_store_goes_on_where_the_old_one_stopped(stores: list[Storage]) -> None:
    source, target = stores
    await populate(source, bulk=1)
    await migrate(source, target)
    # A client that saw up to last_seq under the old store: same epoch, next seq follows.
    old = await source.get_metadata("chat")
    assert old is not None
    assert await target.epoch("chat") == old.epoch
    subscription = await target.subscribe("chat", old.last_seq)
    appended = await target.append_event("chat", AgentEvent.token("after the move"))
    assert appended.seq == old.last_seq + 1 and not appended.duplicate
    batch = await asyncio.wait_for(subscription.next_batch(), 5)
    assert [e.seq for e in batch] == [old.last_seq + 1]
    subscription.close()
    # Idempotency keys came along: a retry of a publish made before the move is caught.
    retry = await target.append_event("chat", AgentEvent.token("Hi"), key="tok-1")
    assert retry.duplicate and retry.seq == 6
    # Closed stays closed; TTL and expiry came along.
    meta = await target.get_metadata("chat")
    assert meta is not None and meta.ttl == 3600 and meta.expires_at is not None
    with pytest.raises(Exception, match="closed"):
        await target.append_event("closed", AgentEvent.token("late"))


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("stores", [("sqlite", "sqlite")], indirect=True)
async def test_an_interrupted_run_finishes_when_run_again(stores: list[Storage]) -> None:
    source, target = stores
    await populate(source, bulk=30, events=300)

    def stop_midway(progress: Progress) -> None:
        if progress.events_done > progress.events_total // 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        await migrate(source, target, on_progress=stop_midway, concurrency=4)
    copied_before = len(await all_sessions(target))
    assert copied_before > 0

    dry = await migrate(source, target, dry_run=True)
    assert dry.resumed + dry.copied > 0 and dry.skipped > 0
    again = await migrate(source, target)
    assert again.skipped == dry.skipped and again.resumed == dry.resumed
    assert again.events_done == dry.events_total < again.events_total + 1
    await assert_same(source, target)
    assert (await verify(source, target))[1] == []
    final = await migrate(source, target)
    assert (final.skipped, final.copied, final.resumed, final.events_done) == (34, 0, 0, 0)


@pytest.mark.parametrize("stores", [("memory", "sqlite")], indirect=True)
async def test_a_dry_run_changes_nothing(stores: list[Storage]) -> None:
    source, target = stores
    await populate(source, bulk=2)
    planned = await migrate(source, target, dry_run=True)
    assert (planned.copied, planned.sessions_total) == (6, 6)
    assert planned.events_total == sum(m.last_seq for m in await all_sessions(source))
    assert planned.events_done == 0
    assert await all_sessions(target) == []


@pytest.mark.parametrize("stores", [("memory", "sqlite")], indirect=True)
async def test_verify_names_what_differs(stores: list[Storage]) -> None:
    source, target = stores
    await populate(source, bulk=2)
    await migrate(source, target)
    await target.append_event("bulk-000", AgentEvent.token("extra"))
    await target.update_session_state("chat", SessionState.ACTIVE)
    await target.delete_session("empty")
    await target.create_session(Session.new("stranger"))
    await source.append_event("bulk-001", AgentEvent.token("late"))
    compared, differences = await verify(source, target)
    assert compared == 6
    found = {(d.session_id, d.what.split(":")[0]) for d in differences}
    assert ("bulk-000", "last_seq") in found
    assert ("bulk-001", "last_seq") in found
    assert ("chat", "state") in found
    assert ("empty", "missing from the destination") in found
    assert ("stranger", "only in the destination") in found


async def differences_after_sql(
    stores: list[Storage], tmp_path: Path, sql: str
) -> list[tuple[str, list[str]]]:
    """The migrated SQLite destination changed behind the store's back by ``sql`` (one
    row), reopened and verified against the source: the differences found."""
    source, target = stores
    await target.close()
    db = sqlite3.connect(tmp_path / "1-sqlite" / "store.db")
    db.execute(sql)
    assert db.total_changes == 1
    db.commit()
    db.close()
    reopened = stores[1] = await open_store("sqlite", tmp_path / "1-sqlite")
    _compared, differences = await verify(source, reopened)
    return [(d.session_id, d.what.split(" ")[:2]) for d in differences]


@pytest.mark.parametrize("stores", [("sqlite", "sqlite")], indirect=True)
async def test_a_checksum_catches_a_changed_event(stores: list[Storage], tmp_path: Path) -> None:
    source, target = stores
    await populate(source, bulk=1)
    await migrate(source, target)
    sql = (
        "UPDATE events SET event = json_set(event, '$.content', 'forged') "
        "WHERE session_id = 'bulk-000' AND seq = 7"
    )
    assert await differences_after_sql(stores, tmp_path, sql) == [
        ("bulk-000", ["event", "checksum"])
    ]


@pytest.mark.parametrize("stores", [("sqlite", "sqlite")], indirect=True)
async def test_a_checksum_tells_an_empty_key_from_none(
    stores: list[Storage], tmp_path: Path
) -> None:
    source, target = stores
    await populate(source, bulk=0)
    await migrate(source, target)
    assert [e.key for e in await target.read_events("closed")][-2:] == ["", None]
    sql = "UPDATE events SET key = NULL WHERE session_id = 'closed' AND key = ''"
    assert await differences_after_sql(stores, tmp_path, sql) == [("closed", ["event", "checksum"])]


@pytest.mark.parametrize("stores", [("memory", "sqlite")], indirect=True)
async def test_a_session_of_the_same_id_and_another_epoch_is_a_conflict(
    stores: list[Storage],
) -> None:
    source, target = stores
    await source.create_session(Session.new("s1"))
    await source.append_event("s1", AgentEvent.token("mine"))
    await target.create_session(Session.new("s1"))
    await target.append_event("s1", AgentEvent.token("theirs"))
    progress = await migrate(source, target)
    assert [(c.session_id, c.action) for c in progress.conflicts] == [("s1", Action.CONFLICT)]
    assert "another session" in progress.conflicts[0].reason
    assert [e.event for e in await target.read_events("s1")] == [AgentEvent.token("theirs")]


@pytest.mark.parametrize("final", [SessionState.CLOSED, SessionState.EXPIRED])
@pytest.mark.parametrize("stores", [("memory", "sqlite")], indirect=True)
async def test_a_session_the_destination_closed_since_is_a_conflict(
    stores: list[Storage], final: SessionState
) -> None:
    """Served between two runs, the destination's copy was closed (or expired); the
    source still has it active. A rerun leaves it so (a closed session is never
    reopened: later attaches get 4409) and reports it."""
    source, target = stores
    await source.create_session(Session.new("s1"))
    await source.append_event("s1", AgentEvent.token("before"))
    await migrate(source, target)
    await target.update_session_state("s1", final)
    progress = await migrate(source, target)
    assert [(c.session_id, c.action) for c in progress.conflicts] == [("s1", Action.CONFLICT)]
    assert f"is {final.value}, the source's active" in progress.conflicts[0].reason
    found = await target.get_metadata("s1")
    assert found is not None and found.state == final


@pytest.mark.parametrize("stores", [("jsonl", "sqlite")], indirect=True)
async def test_verify_reads_pages_bounded_in_bytes(stores: list[Storage]) -> None:
    """A session of large events is checksummed a page of at most PAGE_BYTES at a time,
    as it is copied: not the 2,000 events of a page whatever their size."""
    source, target = stores
    await source.create_session(Session.new("big", user_id="u1"))
    content = "x" * (256 * 1024)
    for _ in range(BIG_EVENTS // 10):
        await source.append_events("big", [(AgentEvent.token(content), None)] * 10)
    await migrate(source, target)
    tracemalloc.start()
    try:
        compared, differences = await verify(source, target)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (compared, differences) == (1, [])
    # 20 MiB of events in the session: 12.7 MB at most with pages of 4 MiB;
    assert peak < 20 * 1024 * 1024, peak  # 42 MB when a page was 2,000 events


BIG_EVENTS = 80


@pytest.mark.parametrize("kind", ["memory", "sqlite", "jsonl"])
async def test_a_rerun_into_a_store_a_server_serves_closes_the_viewers(
    tmp_path: Path, kind: str
) -> None:
    """An embedder migrates into the store its own server serves: a session the rerun
    imports as closed gives its viewer the events imported before, then ``closed`` and
    1000, as a close would; the viewer waited for events that could no longer come."""
    async with run_server(tmp_path, store=URLS[kind](tmp_path)) as server:
        assert server._manager is not None
        target = server._manager.storage
        source = await open_store("memory", tmp_path)
        try:
            await source.create_session(Session.new("moved"))
            await source.append_event("moved", AgentEvent.token("before"))
            await migrate(source, target)
            async with attach(server, "moved", last_seq=1) as (viewer, _welcome):
                await source.append_event("moved", AgentEvent.token("after"))
                await source.update_session_state("moved", SessionState.CLOSED)
                await migrate(source, target)
                code, frames = await viewer.closed()
        finally:
            await source.close()
    seen = [(frame["type"], frame.get("seq")) for frame in frames if frame["type"] != "presence"]
    assert (seen, code) == ([("event", 2), ("closed", None)], 1000)

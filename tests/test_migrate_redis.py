"""``migrate`` into and out of Redis stores whose generation has a token (a Redis that
may lose writes and restarted: persistence/redis/generation.py), on real
redis-servers and real JSONL and SQLite files: the destination serves every session
under the epoch the source served, so verify finds nothing to report, a rerun skips
them all, and a client that held the source's epoch resumes with a replay. What
really differs is still reported: an event appended on one side, and a restart of the
destination's lossy Redis after the copy, which changes every epoch (its history may
be cut short) and refuses the old epoch's resume."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec
import pytest

from bamboo_session.persistence import SessionNotFound, Storage
from bamboo_session.persistence.migrate import Action, migrate, plan_session
from bamboo_session.persistence.migrate_verify import verify
from bamboo_session.persistence.redis.scripts import HistoryLost
from bamboo_session.persistence.redis.storage import RedisStorage
from bamboo_session.protocol.models import AgentEvent, Session
from tests.redis_lossy_support import crash_and_restart, lossy_redis, snapshot
from tests.redis_server import RedisServer, prefix_for
from tests.support import attach, opened, run_server
from tests.test_migrate import all_sessions, populate
from tests.test_migrate_cli import migrate as run_migrate

SOURCES = {
    "jsonl": lambda directory: f"jsonl://{directory / 'store'}",
    "sqlite": lambda directory: f"sqlite://{directory / 'store.db'}",
}


async def tokened_redis(
    start_redis: Callable[[str], RedisServer],
    directory: Path,
    before: Callable[[Storage], Awaitable[None]] | None = None,
) -> tuple[RedisServer, str]:
    """A lossy redis-server whose store has a generation token: a session saved in a
    snapshot (with what ``before`` makes), Redis killed and started again (the store's
    open then sets a fresh token), that session deleted."""
    server = lossy_redis(start_redis)
    url = server.url(prefix=prefix_for(directory), accept_lossy="true")
    async with opened(url) as store:
        await store.create_session(Session.new("seed"))
        if before is not None:
            await before(store)
        await snapshot(server)
    crash_and_restart(server)
    async with opened(url) as store:
        assert isinstance(store, RedisStorage) and store.generation.token != ""
        await store.delete_session("seed")
    return server, url


async def epochs(store: Storage) -> dict[str, str]:
    return {meta.id: meta.epoch for meta in await all_sessions(store)}


@pytest.mark.parametrize("kind", sorted(SOURCES))
async def test_sessions_migrated_into_a_tokened_redis_keep_their_epochs(
    kind: str, start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    _, url = await tokened_redis(start_redis, tmp_path / "target")
    async with opened(SOURCES[kind](tmp_path)) as source, opened(url) as target:
        await populate(source, bulk=3, events=20)
        await migrate(source, target)
        assert await epochs(target) == await epochs(source)
        assert await verify(source, target) == (7, [])
        again = await migrate(source, target)
        assert (again.skipped, again.copied, again.conflicts) == (7, 0, [])


async def test_verify_still_reports_what_really_differs(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    server, url = await tokened_redis(start_redis, tmp_path / "target")
    async with opened(SOURCES["sqlite"](tmp_path)) as source:
        await populate(source, bulk=2, events=10)
        async with opened(url) as target:
            await migrate(source, target)
            await target.append_event("bulk-000", AgentEvent.token("only in the target"))
            _, differences = await verify(source, target)
            assert {d.session_id for d in differences} == {"bulk-000"}
            assert "last_seq: 11 != 12" in [d.what for d in differences]
            await snapshot(server)
        crash_and_restart(server)  # lossy: the copy's history may be cut short
        async with opened(url) as target:
            mine, theirs = await epochs(source), await epochs(target)
            assert mine.keys() == theirs.keys()
            assert all(theirs[i] != mine[i] and theirs[i].startswith(mine[i]) for i in mine)
            _, differences = await verify(source, target)
            assert sorted({d.session_id for d in differences if "epoch" in d.what}) == sorted(mine)
            planned = await plan_session(source, target, (await all_sessions(source))[0])
            assert planned.action == Action.CONFLICT


async def test_redis_to_redis_both_tokened_keeps_the_served_epoch(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    _, first = await tokened_redis(
        start_redis, tmp_path / "first", lambda store: populate(store, bulk=2, events=10)
    )
    _, second = await tokened_redis(start_redis, tmp_path / "second")
    async with opened(first) as source:
        served = await epochs(source)
        assert all("." in epoch for epoch in served.values())  # changed by the restart
        async with opened(second) as target:
            await migrate(source, target)
            assert await epochs(target) == served
            assert await verify(source, target) == (6, [])
            appended = await target.append_event("chat", AgentEvent.token("after"))
            assert appended.seq == (await source.last_seq("chat")) + 1


async def test_a_client_resumes_with_the_source_epoch_against_the_tokened_redis(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    _, url = await tokened_redis(start_redis, tmp_path / "target")
    async with opened(SOURCES["sqlite"](tmp_path)) as source:
        await populate(source, bulk=1, events=8)
        held = await source.get_metadata("bulk-000")
        assert held is not None
        missed = await source.read_events("bulk-000", 5)
        async with opened(url) as target:
            await migrate(source, target)
    async with run_server(store=url) as server:
        hello = {"last_seq": 5, "epoch": held.epoch}
        async with attach(server, "bulk-000", **hello) as (peer, welcome):
            assert (welcome["resumed"], welcome["replay"]) == (True, len(missed))
            assert (welcome["epoch"], welcome["last_seq"]) == (held.epoch, held.last_seq)
            replayed = [await peer.recv_type("event") for _ in missed]
            assert [(f["seq"], f["event"]) for f in replayed] == [
                (e.seq, msgspec.json.decode(e.event_json)) for e in missed
            ]


def test_the_command_verifies_a_migration_into_a_tokened_redis(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    async def prepare() -> str:
        _, url = await tokened_redis(start_redis, tmp_path / "target")
        async with opened(SOURCES["sqlite"](tmp_path)) as source:
            await populate(source, bulk=2, events=5)
        return url

    url = asyncio.run(prepare())
    done = run_migrate("--from", SOURCES["sqlite"](tmp_path), "--to", url, "--verify")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "verify: all 6 sessions match" in done.stdout


async def test_a_session_keeps_its_epoch_until_the_token_it_was_created_under_changes(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    """Created under the token: served as given. After the next lossy restart: another
    epoch, and the one served before is this log's earlier generation (HistoryLost),
    for presence as for appends, not a session gone."""
    server, url = await tokened_redis(start_redis, tmp_path)
    async with opened(url) as store:
        assert isinstance(store, RedisStorage)
        made = Session.new("s")
        await store.create_session(made)
        assert await store.epoch("s") == made.metadata.epoch
        assert await store.presence.join("s", "c_1", "client", epoch=made.metadata.epoch) == 1
        with pytest.raises(ValueError, match="'~'"):
            odd = Session.new("t")
            odd.metadata.epoch = "a~b"
            await store.create_session(odd)
        await snapshot(server)
    crash_and_restart(server)
    async with opened(url) as store:
        assert isinstance(store, RedisStorage)
        now = await store.epoch("s")
        assert now == made.metadata.epoch + "." + store.generation.token
        with pytest.raises(HistoryLost):
            await store.presence.join("s", "c_2", "client", epoch=made.metadata.epoch)
        with pytest.raises(HistoryLost):
            stale = [(AgentEvent.token("x"), None)]
            await store.append_events("s", stale, epoch=made.metadata.epoch)
        with pytest.raises(SessionNotFound):
            await store.presence.join("s", "c_2", "client", epoch="another")
        assert await store.presence.join("s", "c_2", "client", epoch=now) >= 1

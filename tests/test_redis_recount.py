"""``bamboo-session recount`` on a real redis-server: a session stored by a version
before the byte counts (no ``bytes`` in its hash, in no user's sum: written here by raw
commands, as that version's scripts wrote it) is counted by the tool, after which the
user's bound refuses what it should, on a live server; a recount beside appends,
deletes and re-creations leaves every count and every sum exact; a recount of a store
whose counts are right changes nothing."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest

from bamboo_session.persistence import open_storage
from bamboo_session.persistence.events import stored_size
from bamboo_session.persistence.recount import recount
from bamboo_session.persistence.redis import RedisStorage
from bamboo_session.persistence.redis import recount as redis_recount
from bamboo_session.protocol.events import encode_event
from bamboo_session.protocol.micros import to_micros
from bamboo_session.protocol.models import AgentEvent, Message, Session, new_epoch, utcnow
from tests.redis_server import RedisServer, prefix_for
from tests.support import Peer, attach, run_server, token
from tests.test_cli_offline import tool as cli_tool

USER = "u ü"  # a space and a letter of two bytes: keys and sums carry it whole


@pytest.fixture
def url(redis_server: RedisServer, tmp_path: Path) -> Callable[[], str]:
    # A lease this short is taken 10 ms after a store with a cleanup loop opens, so the
    # dumps around a tool's run see it if anything held one: the tool must not.
    return lambda: redis_server.url(prefix=prefix_for(tmp_path), lease_ttl=0.03)


async def open_store(url: str, **options: Any) -> RedisStorage:
    """The test's own handle on the store, with no cleanup loop: the tool runs none
    (tools_store.py), and the loop's first hold on the lease (``lease_ttl / 3`` after
    the open, 10 s by default) writes the lease's keys, which a test slower than that
    would find among those the tool was to leave as they were."""
    return cast(RedisStorage, await open_storage(url, cleanup_interval=None, **options))


def tool(*argv: str) -> tuple[int, str, str]:
    """``bamboo-session ARGV`` as a process, as an operator runs it (forked once its
    imports are done: tests/test_cli_offline.py)."""
    return cli_tool(*argv, timeout=60)


def old_events(count: int, size: int = 120) -> list[tuple[bytes, str | None]]:
    """JSON and key of ``count`` events: tokens, some keyed (some keys not ASCII), and
    a message every tenth."""
    events: list[tuple[bytes, str | None]] = []
    for n in range(count):
        if n % 10 == 9:
            message = Message(role="user", content=f"message {n}").completed()
            events.append((encode_event(AgentEvent.message(message)), None))
        else:
            key = None if n % 3 else f"key-{n}-é"
            events.append((encode_event(AgentEvent.token(f"{n}:" + "x" * size)), key))
    return events


async def write_old_session(
    storage: RedisStorage,
    session_id: str,
    user_id: str | None,
    events: list[tuple[bytes, str | None]],
) -> int:
    """The keys of a session as a version before the byte counts wrote them (its
    create.lua and append.lua, by raw commands): the hash without ``bytes``, the
    indexes, the stream, the key window and the history, and no ``userbytes``. What
    its log holds, as the store counts it."""
    layout, call = storage.layout, storage.redis.call
    meta, log, keys, msgs, _ = layout.session_keys(session_id)
    now = to_micros(utcnow())
    messages = sum(1 for data, _ in events if data.startswith(b'{"type":"message"'))
    fields: list[Any] = ["id", session_id, "state", "disconnected", "created", now]
    fields += ["updated", now, "active", now, "msgs", messages, "seq", len(events)]
    fields += ["epoch", new_epoch(), "extra", b"{}"]
    if user_id is not None:
        fields += ["user", user_id]
    await call("HSET", meta, *fields)
    index = layout.index
    for name in ("created", "updated", "active"):
        await call("ZADD", index + name, now, session_id)
    await call("ZADD", index + "msgs", messages, session_id)
    await call("ZADD", index + "state:disconnected", now, session_id)
    if user_id is not None:
        await call("ZADD", index + f"user:{user_id}", now, session_id)
    for seq, (data, key) in enumerate(events, start=1):
        entry: list[Any] = ["e", data, "t", now] + ([] if key is None else ["k", key])
        await call("XADD", log, f"{seq}-0", *entry)
        if key is not None:
            await call("ZADD", keys, seq, key)
        if data.startswith(b'{"type":"message"'):
            await call("RPUSH", msgs, seq)
    return sum(stored_size(data, key) for data, key in events)


async def held(storage: RedisStorage, session_id: str) -> int:
    """What the session's stream holds, entry by entry, as append.lua counts it."""
    entries = await storage.redis.call("XRANGE", storage.layout.log(session_id), "-", "+")
    return sum(len(f.get(b"e", b"")) + len(f.get(b"k", b"")) for _, f in _fields(entries))


def _fields(entries: list[Any]) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """XRANGE's entries as (id, fields): redis-py makes a dict of the fields."""
    return [
        (i, f if isinstance(f, dict) else dict(zip(f[::2], f[1::2], strict=True)))
        for i, f in entries
    ]


async def counts(storage: RedisStorage) -> tuple[dict[str, int | None], dict[str, int]]:
    """Every session's ``bytes`` (None: none) and every user's sum, as stored."""
    layout, call = storage.layout, storage.redis.call
    ids = [m.decode() for m in await call("ZRANGE", layout.index + "created", 0, -1)]
    sessions: dict[str, int | None] = {}
    for session_id in ids:
        value = await call("HGET", layout.meta(session_id), "bytes")
        sessions[session_id] = None if value is None else int(value)
    sums = await call("HGETALL", layout.index + "userbytes")
    return sessions, {user.decode(): int(total) for user, total in sums.items()}


async def test_an_old_session_is_counted_then_the_users_bound_refuses(
    url: Callable[[], str],
) -> None:
    storage = await open_store(url())
    try:
        old = await write_old_session(storage, "old", USER, old_events(40))
        assert old > 5000
        cap = old + 2000
        async with run_server(store=url(), max_user_bytes=cap) as server:
            async with attach(server, "new", create=True, user_id=USER) as (peer, _):
                # The old session is in no sum: the user's 1,500 new bytes fit under the
                # bound, though the user's sessions hold more than it.
                for n in range(1, 4):
                    assert (await publish(peer, n, 500))["type"] == "ack"
                assert (await counts(storage))[1] == {USER: await held(storage, "new")}
                code, out, err = await asyncio.to_thread(tool, "recount", "--store", url())
                assert code == 0, err
                total = old + await held(storage, "new")
                assert out.splitlines() == [
                    f"session old (user {USER}): no count -> {old:,} bytes",
                    f"user {USER}: sum {old:+,} bytes, now {total:,}",
                    f"recount: 2 sessions holding {total:,} bytes, 1 fixed; 1 users, 1 sums fixed",
                ]
                assert await counts(storage) == ({"old": old, "new": total - old}, {USER: total})
                # Past the bound now: refused, nothing stored.
                refused = await publish(peer, 4, 500)
                assert refused["type"] == "error" and refused["code"] == "too_large", refused
                assert f"sessions of user {USER!r} hold {total}" in refused["message"]
                meta = await storage.get_metadata("old")
                assert meta is not None and meta.stored_bytes == old
                # Again: nothing left to fix.
                code, out, _ = await asyncio.to_thread(tool, "recount", "--store", url(), "old")
                assert (code, out.splitlines()[-1]) == (0, summary(1, old, 0, 1, 0))
    finally:
        await storage.close()


async def publish(peer: Peer, n: int, size: int) -> dict[str, Any]:
    await peer.send({"type": "event", "id": n, "event": token("y" * size)})
    while True:
        reply = await peer.recv()
        if reply["type"] in ("ack", "error") and reply.get("id") == n:
            return reply


def summary(sessions: int, total: int, fixed: int, users: int, sums: int) -> str:
    return (
        f"recount: {sessions:,} sessions holding {total:,} bytes, {fixed:,} fixed; "
        f"{users:,} users, {sums:,} sums fixed"
    )


async def test_a_recount_beside_appends_leaves_every_count_exact(
    url: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # One entry per script call: the recount of a session goes in as many steps as its
    # log has entries, with the appenders' scripts running between them.
    monkeypatch.setattr(redis_recount, "PAGE_BYTES", 1)
    tool_store = await open_store(url())
    live = await open_store(url(), max_user_bytes=10**9)
    try:
        old_ids = [f"old-{n}" for n in range(6)]
        for n, session_id in enumerate(old_ids):
            await write_old_session(tool_store, session_id, ("a", "b", None)[n % 3], old_events(60))
        for session_id, user in (("new-a", "a"), ("new-b", "b")):
            await live.create_session(Session.new(session_id, user_id=user))
            await live.append_event(session_id, AgentEvent.token("z" * 50), "first")
        # Drift beside the missing counts: a sum too large, a user with no session left.
        await tool_store.redis.call("HINCRBY", tool_store.layout.index + "userbytes", "b", 777)
        await tool_store.redis.call("HSET", tool_store.layout.index + "userbytes", "ghost", 5)

        stop = asyncio.Event()
        appended = 0

        async def append_to(session_id: str) -> None:
            nonlocal appended
            for n in itertools.count():
                if stop.is_set():
                    return
                key = f"k{n % 7}-ß" if n % 2 else None  # duplicates among them
                with contextlib.suppress(Exception):  # the re-created one, while it goes
                    await live.append_event(session_id, AgentEvent.token("w" * (n % 40)), key)
                    appended += 1
                await asyncio.sleep(0.002)  # slower than the recount: it catches up

        async def recreate(session_id: str) -> None:
            await asyncio.sleep(0.05)
            await live.delete_session(session_id)
            await live.create_session(Session.new(session_id, user_id="a"))

        recounter = redis_recount.RedisRecounter(tool_store, first_page=1)
        monkeypatch.setattr(tool_store, "bytes_recounter", lambda **_: recounter)
        raced: list[str] = []  # sessions appended to while they were being recounted
        recount_session = recounter.recount_session

        async def watched(session_id: str) -> Any:
            seq = tool_store.layout.meta(session_id)
            first = await tool_store.redis.call("HGET", seq, "seq")
            counted = await recount_session(session_id)
            if counted is not None and await tool_store.redis.call("HGET", seq, "seq") != first:
                raced.append(session_id)
            return counted

        monkeypatch.setattr(recounter, "recount_session", watched)
        appenders = [asyncio.create_task(append_to(s)) for s in [*old_ids, "new-a", "new-b"]]
        await asyncio.sleep(0.05)
        before = appended
        replaced = asyncio.create_task(recreate("old-0"))
        report = await recount(tool_store)
        during = appended - before
        await replaced
        # Rebuilt again and again while the appends go on, a user's sum is its sessions'
        # counts at every moment after (read in one MULTI: one moment of the store).
        for _ in range(25):
            for user in ("a", "b"):
                await recounter.rebuild_user(user)
                held_sum, counted = await sum_and_counts(tool_store, user)
                assert held_sum == counted, user
        stop.set()
        await asyncio.gather(*appenders)

        assert during > 50 and recounter.calls > 6 * 60, (during, recounter.calls)
        assert len(raced) >= 5, raced
        sessions, sums = await counts(tool_store)
        assert sessions == {s: await held(tool_store, s) for s in sessions}
        users = {"a": 0, "b": 0}
        for session_id in sessions:
            meta = await tool_store.get_metadata(session_id)
            assert meta is not None
            if meta.user_id is not None:
                users[meta.user_id] += meta.stored_bytes
        assert sums == users  # "ghost" is gone, "b" lost its 777
        assert report.user_moves["ghost"] == -5
        assert {fixed.session_id for fixed in report.fixed} >= set(old_ids[1:])
    finally:
        await live.close()
        await tool_store.close()


async def sum_and_counts(storage: RedisStorage, user: str) -> tuple[int, int]:
    """The user's sum and the sum of its sessions' counts, read in one transaction."""
    layout = storage.layout
    ids = await storage.redis.call("ZRANGE", layout.index + f"user:{user}", 0, -1)
    pipe = storage.redis.client.pipeline(transaction=True)
    pipe.execute_command("HGET", layout.index + "userbytes", user)
    for session_id in ids:
        pipe.execute_command("HGET", layout.meta(session_id.decode()), "bytes")
    held_sum, *counts = await pipe.execute()
    return int(held_sum or 0), sum(int(count or 0) for count in counts)


async def test_a_recount_of_a_right_store_changes_nothing(url: Callable[[], str]) -> None:
    storage = await open_store(url())
    try:
        for n, user in enumerate((USER, USER, "v", None)):
            session_id = f"s{n}"
            await storage.create_session(Session.new(session_id, user_id=user))
            for m in range(n * 5):
                await storage.append_event(session_id, AgentEvent.token("t" * m), f"k{m}-é")
            await storage.append_message(session_id, Message(role="user", content="hi"))
        await storage.delete_session("s1")
        before = await dump(storage)
        code, out, err = await asyncio.to_thread(tool, "recount", "--store", url())
        assert code == 0, err
        sessions, _ = await counts(storage)
        total = sum(value or 0 for value in sessions.values())
        assert out.splitlines() == [summary(3, total, 0, 2, 0)]
        assert await dump(storage) == before
    finally:
        await storage.close()


async def test_a_dry_run_writes_nothing_and_reports_what_the_run_applies(
    url: Callable[[], str],
) -> None:
    storage = await open_store(url())
    try:
        for n, user in enumerate((USER, "v", None)):  # old sessions: no count, no sum
            await write_old_session(storage, f"old-{n}", user, old_events(30 + n))
        for n, user in enumerate((USER, "v")):
            await storage.create_session(Session.new(f"new-{n}", user_id=user))
            await storage.append_event(f"new-{n}", AgentEvent.token("n" * 90), "k-é")
        await storage.redis.call("HINCRBY", storage.layout.meta("new-1"), "bytes", 40)
        await storage.redis.call("HINCRBY", storage.layout.index + "userbytes", "v", 777)
        await storage.redis.call("HSET", storage.layout.index + "userbytes", "ghost", 5)
        size = {s: await held(storage, s) for s in ("old-0", "old-1", "old-2", "new-0", "new-1")}
        expected = {
            ("old-0", "new-1"): [
                f"session old-0 (user {USER}): no count -> {size['old-0']:,} bytes",
                f"session new-1 (user v): {size['new-1'] + 40:,} -> {size['new-1']:,} bytes",
                f"user {USER}: sum {size['old-0']:+,} bytes, now {size['old-0'] + size['new-0']:,}",
                f"user v: sum -777 bytes, now {size['new-1']:,}",  # -40, then the rebuild
                summary(2, size["old-0"] + size["new-1"], 2, 2, 2),
            ],
            (): [
                f"session old-1 (user v): no count -> {size['old-1']:,} bytes",
                f"session old-2: no count -> {size['old-2']:,} bytes",
                f"user v: sum {size['old-1']:+,} bytes, now {size['old-1'] + size['new-1']:,}",
                "user ghost: sum -5 bytes, now 0",
                summary(5, sum(size.values()), 2, 3, 2),
            ],
        }
        # Some sessions (and their users' sums), then every one: each dry run leaves
        # every key as it was, and prints what the run right after it does.
        for ids, run in expected.items():
            before = await dump(storage)
            argv = ("recount", "--store", url(), *ids)
            code, dry_out, err = await asyncio.to_thread(tool, *argv, "--dry-run")
            assert code == 0, err
            assert await dump(storage) == before  # every key, and what it holds
            code, out, err = await asyncio.to_thread(tool, *argv)
            assert code == 0, err
            lines = out.splitlines()
            assert dry_out.splitlines() == [*lines[:-1], dry_totals(lines[-1])]
            assert lines == run
        sessions, sums = await counts(storage)
        assert sessions == {s: await held(storage, s) for s in sessions}
        assert sums == {
            USER: sessions["old-0"] + sessions["new-0"],
            "v": sessions["old-1"] + sessions["new-1"],
        }
    finally:
        await storage.close()


def dry_totals(totals: str) -> str:
    """A run's totals as a dry run prints them."""
    return totals.replace(" fixed", " to fix") + " (dry run: nothing written)"


async def dump(storage: RedisStorage) -> dict[bytes, bytes]:
    """Every key of the store's prefix and what it holds (DUMP)."""
    keys = await storage.redis.call("KEYS", f"{storage.layout.prefix}:*")
    return {key: await storage.redis.call("DUMP", key) for key in sorted(keys)}

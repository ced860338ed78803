"""What ``bamboo-session migrate`` refuses, and how it says so: a server cannot start on
the JSONL store a migrate copies (its lock is held, shared, for the run); a destination
that cannot be a store (a file, a path under a file, a directory that cannot be made)
is one line and exit 1, not a traceback; the same store as source and destination is
refused under any spelling, its files untouched (a Redis one by its server's run,
database and prefix, r333); and a Redis source that a server keeps
writing to during the run is not taken for copied whole: exit 1, each session created
or changed meanwhile named, and a rerun once the writes stop finishes the copy."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from bamboo_session.persistence import open_storage
from bamboo_session.persistence.migrate import source_changes, source_sessions
from bamboo_session.persistence.url import without_password
from bamboo_session.protocol.models import AgentEvent, Session, SessionState
from tests.redis_server import RedisServer, prefix_for
from tests.server_process import ServerProcess
from tests.support import opened
from tests.test_migrate_cli import ROOT, make_source, migrate
from tests.test_redis_acl import acl_user


def files_of(directory: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``directory``: its bytes and its modification time."""
    return {
        str(path.relative_to(directory)): (path.read_bytes(), path.stat().st_mtime_ns)
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


async def test_a_server_cannot_start_on_a_jsonl_store_migrate_copies(tmp_path: Path) -> None:
    url = f"jsonl://{tmp_path}"
    await make_source(url, sessions=2, events=3)
    # What migrate holds of its source for the whole run (migrate_cli.py).
    source = await open_storage(url, read_only=True, offline=True, cleanup_interval=None)
    try:
        another = await open_storage(url, read_only=True, offline=True, cleanup_interval=None)
        await another.close()  # a second migrate from the same source may read it too
        server = ServerProcess(tmp_path, tmp_path / "refused.log")
        try:
            port = await server.start_in_loop()
        except RuntimeError as refused:
            assert "in use" in str(refused) and "a migrate" in str(refused), refused
        else:
            server.kill()
            raise AssertionError(f"a server started (port {port}) on a store migrate reads")
    finally:
        await source.close()
    server = ServerProcess(tmp_path, tmp_path / "served.log")
    await server.start_in_loop()  # the lock went with the migrate's close
    try:
        assert server.stop() == 0
    finally:
        server.kill()


def test_a_destination_that_cannot_be_a_store_is_one_line(tmp_path: Path) -> None:
    asyncio.run(make_source(f"jsonl://{tmp_path / 'source'}", sessions=1, events=1))
    (tmp_path / "a-file").write_text("not a directory")
    cases = {
        f"jsonl://{tmp_path / 'a-file'}": "is a file, not a directory",
        f"jsonl://{tmp_path / 'a-file' / 'store'}": "Not a directory",
        "jsonl:///proc/bamboo-migrate-test": "cannot create the store directory",
    }
    for target, why in cases.items():
        run = migrate("--from", f"jsonl://{tmp_path / 'source'}", "--to", target)
        assert run.returncode == 1, run
        assert run.stderr.startswith(f"bamboo-session: cannot open the destination {target}: ")
        assert why in run.stderr and len(run.stderr.splitlines()) == 1, run.stderr
    assert (tmp_path / "a-file").read_text() == "not a directory"


def test_a_store_migrated_into_itself_is_refused(tmp_path: Path) -> None:
    store = tmp_path / "store"
    asyncio.run(make_source(f"jsonl://{store}", sessions=3, events=5))
    database = tmp_path / "store.db"
    asyncio.run(make_source(f"sqlite://{database}", sessions=1, events=1))
    (tmp_path / "link.db").symlink_to(database)
    before = files_of(tmp_path)
    pairs = [
        (f"jsonl://{store}", f"jsonl://{store}"),
        (f"jsonl://{store}", f"{store}/"),
        (f"jsonl://{store}", f"jsonl://{store}/../store"),
        (f"sqlite://{database}", f"sqlite://{tmp_path / 'link.db'}"),
    ]
    for source, target in pairs:
        for dry_run in ((), ("--dry-run",)):
            run = migrate("--from", source, "--to", target, *dry_run)
            assert run.returncode == 1, run
            assert run.stderr == (
                f"bamboo-session: the source and the destination are the same store: {target}\n"
            )
            assert run.stdout == ""
    assert files_of(tmp_path) == before  # no LOCK, snapshot or database file rewritten


def redis_spellings(port: int) -> list[tuple[str, str]]:
    """One store, two ways: the default prefix, the host's name, the default database."""
    return [
        (f"redis://127.0.0.1:{port}/0", f"redis://127.0.0.1:{port}/0?prefix=bamboo"),
        (f"redis://127.0.0.1:{port}/0?prefix=p", f"redis://localhost:{port}/0?prefix=p"),
        (f"redis://127.0.0.1:{port}?prefix=p", f"redis://127.0.0.1:{port}/0?prefix=p"),
    ]


@pytest.mark.parametrize("case", range(3))
def test_one_redis_store_spelt_two_ways_is_refused(
    start_redis: Callable[[str], RedisServer], tmp_path: Path, case: int
) -> None:
    server = start_redis("redis")  # its own: the default prefix is the test's alone
    source, target = redis_spellings(server.port)[case]
    asyncio.run(make_source(source, sessions=3, events=5))
    for dry_run in ((), ("--dry-run",)):
        run = migrate("--from", source, "--to", target, *dry_run)
        assert (run.returncode, run.stderr, run.stdout) == (
            1,
            f"bamboo-session: the source and the destination are the same store: {target}\n",
            "",
        ), run
    # Another database of the same server is another store.
    other = f"redis://localhost:{server.port}/1"
    run = migrate("--from", source, "--to", other)
    assert run.returncode == 0 and run.stdout.startswith("copied 3 sessions"), run


async def test_one_redis_store_that_refuses_info_is_known_by_its_address(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    server = start_redis("redis")
    source = await acl_user(server, tmp_path, "-info")  # no run_id to compare
    target = source.replace("127.0.0.1", "localhost")
    await make_source(source, sessions=2, events=1)
    run = await run_migrate("--from", source, "--to", target)
    assert (run.returncode, run.stdout) == (1, ""), run
    # (named with its password masked: r490)
    assert run.stderr.endswith(f"the same store: {without_password(target)}\n"), run.stderr


async def test_the_run_lists_what_the_source_changed_since_it_began(tmp_path: Path) -> None:
    url = f"jsonl://{tmp_path}"
    await make_source(url, sessions=4, events=3)
    async with opened(url) as store:
        began = {meta.id: meta async for meta in source_sessions(store)}
        assert await source_changes(store, began) == []
        await store.append_events("s0001", [(AgentEvent.token("late"), "late")])
        await store.update_session_state("s0002", SessionState.CLOSED)
        await store.delete_session("s0003")
        await store.create_session(Session.new("new"))
        changes = {c.session_id: c.what for c in await source_changes(store, began)}
    assert changes == {
        "s0001": "last seq 4 -> 5 during the run: events after seq 4 not copied",
        "s0002": "its state or times changed during the run: copied as they were before",
        "s0003": "deleted from the source during the run (the destination keeps its copy)",
        "new": "created during the run: not copied",
    }


# -- a Redis source its server keeps writing to -------------------------------------


async def test_a_redis_source_written_during_the_run_fails_naming_the_changes(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    source = redis_server.url(prefix=prefix_for(tmp_path))
    target = f"sqlite://{tmp_path / 'copy.db'}"
    await make_source(source, sessions=60, events=100)
    server = ServerProcess(tmp_path / "unused", tmp_path / "serve.log", "--store", source)
    await server.start_in_loop()
    try:
        began, stop, acked = asyncio.Event(), asyncio.Event(), {}
        writer = asyncio.create_task(keep_writing(server, began, stop, acked))
        await asyncio.wait_for(began.wait(), 30)  # the writes began before the run
        run = await run_migrate("--from", source, "--to", target)
        stop.set()
        await writer
    finally:
        assert server.stop() == 0
    assert run.returncode == 1, run
    changed = dict(
        line.removeprefix("changed: ").split(": ", 1)
        for line in run.stdout.splitlines()
        if line.startswith("changed: ")
    )
    assert changed.get("s0000", "").startswith("last seq "), run.stdout
    created = [id_ for id_, what in changed.items() if what == "created during the run: not copied"]
    assert created, run.stdout
    assert "the source changed during the run" in run.stderr, run.stderr
    assert "stop every server using it, then rerun migrate" in run.stderr

    rerun = await run_migrate("--from", source, "--to", target, "--verify")
    assert rerun.returncode == 0, rerun
    async with opened(target) as copy:
        meta = await copy.get_metadata("s0000")
        assert meta is not None and meta.last_seq == acked["s0000"]
        for session_id in acked:
            assert await copy.get_metadata(session_id) is not None, session_id


async def keep_writing(
    server: ServerProcess, began: asyncio.Event, stop: asyncio.Event, acked: dict[str, int]
) -> None:
    """A client appending to s0000, and now and then creating a session, until ``stop``:
    bounded by the run it overlaps (at most 2,000 appends)."""
    async with connect(server.url("s0000")) as ws:
        await ws.send(json.dumps({"type": "hello"}))
        assert (await reply_to(ws, "welcome"))["type"] == "welcome"
        for n in range(1, 2001):
            if stop.is_set():
                return
            event = {"type": "event", "id": n, "key": f"live-{n}"}
            await ws.send(json.dumps({**event, "event": {"type": "token", "content": "x"}}))
            reply = await reply_to(ws, "ack")
            assert reply["type"] == "ack" and reply["id"] == n, reply
            acked["s0000"] = reply["seq"]
            began.set()
            if n % 4 == 0:  # often: a loaded machine fit 16 appends in a whole run
                await create_one(server, f"late-{n}")
                acked[f"late-{n}"] = 0
            await asyncio.sleep(0.005)


async def create_one(server: ServerProcess, session_id: str) -> None:
    async with connect(server.url(session_id)) as ws:
        await ws.send(json.dumps({"type": "hello", "create": True}))
        assert (await reply_to(ws, "welcome"))["type"] == "welcome"
        await ws.send(
            json.dumps({"type": "event", "id": 1, "event": {"type": "token", "content": "x"}})
        )
        assert (await reply_to(ws, "ack"))["type"] == "ack"


async def reply_to(ws: ClientConnection, wanted: str) -> dict[str, Any]:
    """The next frame of type ``wanted`` (or an error), past any event pushed meanwhile."""
    while True:
        frame: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 30))
        if frame["type"] in (wanted, "error"):
            return frame


async def run_migrate(*args: str) -> subprocess.CompletedProcess[str]:
    """``migrate`` in a process of its own, without blocking the loop the test's
    client writes from."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bamboo_session.server",
        "migrate",
        "--progress",
        "none",
        *args,
        cwd=ROOT,
        env=os.environ,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(child.communicate(), 120)
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    assert child.returncode is not None
    return subprocess.CompletedProcess(args, child.returncode, out.decode(), err.decode())

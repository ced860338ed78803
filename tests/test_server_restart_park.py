"""After a ``kill -9`` and a restart on a store one process holds (JSONL, SQLite), no
session claims connections it cannot have: ``serve`` parks what the dead server left
``active`` or ``idle`` (``disconnected``, not activity), and the first attach after it
is activity (its TTL starts again), whatever state the store kept (r341: they came
back ``active`` with no connection, and their first attach did not count).

Real servers: killed with SIGKILL by pid, or in-process on a store handed in (which
the server does not park: the attach alone must count); real files in temp dirs."""

from __future__ import annotations

import asyncio
import json
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from bamboo_session.persistence import open_storage
from bamboo_session.persistence.base import SessionFilter, Storage
from bamboo_session.persistence.capabilities import ParksAttached
from bamboo_session.protocol.models import Session, SessionState, utcnow
from bamboo_session.server import restart_park
from bamboo_session.server.app import BambooServer
from bamboo_session.server.config import ServerConfig
from bamboo_session.server.restart_park import BATCH, RestartPark
from tests.instances import eventually
from tests.server_process import ServerProcess, assert_no_tracebacks
from tests.support import attach, get

STORES = ("jsonl", "sqlite")


def store_url(kind: str, directory: Path) -> str:
    if kind == "sqlite":
        return f"sqlite://{directory / 'sessions.db'}?durability=fsync"
    return f"jsonl://{directory / 'data'}?durability=fsync"


def http_json(port: int, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        answer: dict[str, Any] = json.loads(response.read())
    return answer


def listed(port: int, **query: str) -> dict[str, dict[str, Any]]:
    page = http_json(port, f"/api/v1/sessions?limit=1000&{urllib.parse.urlencode(query)}")
    return {metadata["id"]: metadata for metadata in page["sessions"]}


def serving(kind: str, tmp_path: Path) -> ServerProcess:
    """``serve`` started on a store of ``kind`` in ``tmp_path``, in a process of its own."""
    flags = ("--store", store_url(kind, tmp_path), "--default-ttl", "3600")
    server = ServerProcess(tmp_path / "data", tmp_path / "server.log", *flags)
    server.start()
    return server


async def hello(port: int, session_id: str) -> tuple[Any, dict[str, Any]]:
    ws = await connect(f"ws://127.0.0.1:{port}/api/v1/stream/{session_id}", open_timeout=10)
    await ws.send(json.dumps({"type": "hello", "create": True, "user_id": "u1"}))
    frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert frame["type"] == "welcome", frame
    return ws, frame["session"]


@pytest.mark.parametrize("kind", STORES)
async def test_sessions_attached_at_a_kill_are_listed_disconnected_after_the_restart(
    kind: str, tmp_path: Path
) -> None:
    server = serving(kind, tmp_path)
    try:
        attached = [await hello(server.port, f"chat-{n}") for n in range(3)]
        left, _ = await hello(server.port, "left")
        await left.close()
        await asyncio.sleep(0.5)  # its park, written lazily on JSONL: lost to the kill
        before = await asyncio.to_thread(listed, server.port)
        server.kill()
        for ws, _ in attached:
            ws.transport.abort()
        await server.start_in_loop()

        still_active = await asyncio.to_thread(listed, server.port, state="active")
        parked = await asyncio.to_thread(listed, server.port, state="disconnected")

        assert still_active == {}
        assert set(parked) == {"chat-0", "chat-1", "chat-2", "left"}
        for session_id, metadata in parked.items():
            assert metadata["connections"] == 0
            # A park is no activity. (Not ==: JSONL writes activity with the session's
            # next checkpoint, so the kill may lose the attach's; it is no later.)
            assert metadata["last_activity_at"] <= before[session_id]["last_activity_at"]
            assert metadata["expires_at"] <= before[session_id]["expires_at"]
        # The first attach after it is activity: listed as active after the restart.
        restarted = utcnow().isoformat()
        again, _ = await hello(server.port, "chat-1")
        recent = await asyncio.to_thread(listed, server.port, active_after=restarted)
        await again.close()
        assert set(recent) == {"chat-1"}
    finally:
        server.kill()
    assert_no_tracebacks(server.log_records())


@pytest.mark.parametrize("kind", STORES)
async def test_a_graceful_stop_leaves_its_sessions_disconnected_in_the_store(
    kind: str, tmp_path: Path
) -> None:
    # Its closes (1012) wrote no state: the store said `active` until the next start,
    # whose log took the stop for a death.
    server = serving(kind, tmp_path)
    try:
        attached = [await hello(server.port, f"chat-{n}") for n in range(3)]
        before = await asyncio.to_thread(listed, server.port, state="active")
        assert set(before) == {"chat-0", "chat-1", "chat-2"}
        assert await asyncio.to_thread(server.stop) == 0
        for ws, _ in attached:
            ws.transport.abort()
        stored = await open_storage(store_url(kind, tmp_path), default_ttl=3600)
        try:
            listing = await stored.list_sessions(SessionFilter(limit=10))
        finally:
            await stored.close()
        states = {meta.id: meta.state for meta in listing.sessions}
        assert states == dict.fromkeys(before, SessionState.DISCONNECTED)
        for meta in listing.sessions:  # a park is no activity
            listed_before = datetime.fromisoformat(before[meta.id]["last_activity_at"])
            assert meta.last_activity_at <= listed_before
        await server.start_in_loop()
        server.stop()
    finally:
        server.kill()
    records = server.log_records()
    at_stop = "parked the sessions left attached at the stop"
    assert [r["sessions"] for r in records if r.get("event") == at_stop] == [3]
    assert not [r for r in records if "a dead server" in r.get("event", "")]
    assert_no_tracebacks(records)


@pytest.fixture(params=("memory", *STORES))
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    url = "memory://" if request.param == "memory" else store_url(request.param, tmp_path)
    opened = await open_storage(url, default_ttl=3600)
    try:
        yield opened
    finally:
        await opened.close()


async def test_the_first_attach_to_a_session_stored_active_with_no_connection_restarts_its_ttl(
    storage: Storage,
) -> None:
    """The store handed in is not parked at the start: the attach alone decides, by the
    connections in this process, not by the ``active`` the store kept."""
    await storage.create_session(Session.new("chat", user_id="u1", ttl=3600))
    before = await storage.update_session_state("chat", SessionState.ACTIVE)
    await asyncio.sleep(0.05)  # store times have microseconds: a later touch shows
    config = ServerConfig(host="127.0.0.1", port=0, log_format="console", rate_limit=0)
    async with BambooServer(config, storage) as server:
        status, read = await get(server, "/api/v1/sessions/chat?limit=1")
        assert (status, read["metadata"]["state"]) == (200, "active")  # as the store kept
        async with attach(server, "chat", user_id="u1") as (_, welcome):
            session = welcome["session"]
            assert session["state"] == "active"
            assert datetime.fromisoformat(session["expires_at"]) > before.expires_at
            assert datetime.fromisoformat(session["last_activity_at"]) > before.last_activity_at

        # The detach comes in the actor's turn after the close: waited for, not slept on.
        async def parked() -> bool:
            status, read = await get(server, "/api/v1/sessions/chat?limit=1")
            return (status, read["metadata"]["state"]) == (200, "disconnected")

        await eventually(parked, timeout=20.0)


async def test_a_store_handed_in_is_not_parked_at_the_stop_either(storage: Storage) -> None:
    """The stop parks only where the start did (``serve``'s own store): an embedder's
    store keeps what the server found in it, as its start left it."""
    await storage.create_session(Session.new("left", user_id="u1", ttl=3600))
    await storage.update_session_state("left", SessionState.ACTIVE)
    config = ServerConfig(host="127.0.0.1", port=0, log_format="console", rate_limit=0)
    async with BambooServer(config, storage) as server:
        status, read = await get(server, "/api/v1/sessions/left?limit=1")
        assert (status, read["metadata"]["state"]) == (200, "active")
    meta = await storage.get_metadata("left")
    assert meta is not None and meta.state == SessionState.ACTIVE


@pytest.mark.parametrize("kind", STORES)
async def test_what_a_dead_server_stamped_ahead_of_the_restarts_clock_is_parked(
    kind: str, tmp_path: Path
) -> None:
    """The machine came back with its clock an hour behind the times its store holds
    (its clock set back before the crash, or one that boots before NTP sets it): the
    park fenced by the wall clock took what the dead server left ``active`` for written
    since its own start, and left it so for good (bench/clock_jump.py). The store's
    clock never goes back behind the times it holds: they are before the park's."""
    url = store_url(kind, tmp_path)
    storage = await open_storage(url, default_ttl=3600, cleanup_interval=None)
    try:
        for name in ("a", "b"):  # both made before either is moved ahead: past that,
            # the store's clock runs ahead at half speed, and may pass b's expiry
            await storage.create_session(Session.new(name, user_id="u", ttl=3600))
            await storage.update_session_state(name, SessionState.ACTIVE)
        for name in ("a", "b"):
            metadata = await storage.get_metadata(name)
            assert metadata is not None
            metadata.updated_at = metadata.last_activity_at = utcnow() + timedelta(hours=1)
            metadata.expires_at = metadata.last_activity_at + timedelta(hours=1)
            await storage.import_metadata(metadata)  # as a clock an hour ahead wrote it
    finally:
        await storage.close()
    storage = await open_storage(url, default_ttl=3600, cleanup_interval=None)
    try:
        park = RestartPark(storage)
        await park.begin()
        assert park.task is None and park.parked == 2
        for name in ("a", "b"):
            metadata = await storage.get_metadata(name)
            assert metadata is not None and metadata.state == SessionState.DISCONNECTED
    finally:
        await storage.close()


@pytest.mark.parametrize("kind", STORES)
async def test_the_batches_past_the_foreground_park_the_rest_and_leave_what_was_written_since(
    kind: str, tmp_path: Path
) -> None:
    """More than a batch, none of it before listening but the first batch
    (``foreground=0``): the task parks every one, but a session an attach made
    ``active`` once the park began, and an expired one (cleanup's), which holds up none
    after it. (A session written since while still ``active``: the stores' own tests,
    tests/test_storage_contract_park.py.)"""
    url = store_url(kind, tmp_path)
    storage = await open_storage(url, default_ttl=3600, cleanup_interval=None)
    try:
        total = BATCH + 200
        for number in range(total):
            ttl = 1 if number == 0 else 3600
            await storage.create_session(Session.new(f"s{number:05}", user_id="u", ttl=ttl))
            await storage.update_session_state(f"s{number:05}", SessionState.ACTIVE)
        await storage.create_session(Session.new("later", user_id="u", ttl=3600))
        await storage.update_session_state("later", SessionState.DISCONNECTED)
        await asyncio.sleep(1.1)  # s00000 expires, still stored
        park = RestartPark(storage)
        await park.begin(foreground=0)
        assert park.task is not None
        await storage.update_session_state("later", SessionState.ACTIVE)  # an attach meanwhile
        await park.task

        active = await storage.list_sessions(SessionFilter(state=SessionState.ACTIVE, limit=total))
        assert sorted(metadata.id for metadata in active.sessions) == ["later", "s00000"]
        assert park.parked == total - 1
    finally:
        await storage.close()


@pytest.mark.parametrize("kind", ["memory", *STORES])
async def test_a_stop_parks_up_to_its_bound_and_leaves_the_rest_to_the_next_start(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop with more attached than it parks (each one a checkpoint a JSONL close
    writes: 100,000 took 43 s) parks a bound's worth, in whole batches, and leaves the
    rest ``active`` for the next start's park. (Through ``serve``, and what its log says:
    tests/test_server_stop_park_bound.py.)"""
    monkeypatch.setattr(restart_park, "BATCH", 100)
    url = "memory://" if kind == "memory" else store_url(kind, tmp_path)
    storage = await open_storage(url, default_ttl=3600, cleanup_interval=None)
    try:
        total = 450
        for number in range(total):
            await storage.create_session(Session.new(f"s{number:05}", user_id="u", ttl=3600))
        park = RestartPark(storage, stop_most=200)
        await park.begin()  # nothing attached yet: nothing parked
        for number in range(total):
            await storage.update_session_state(f"s{number:05}", SessionState.ACTIVE)
        await park.park_at_stop()
        active = await storage.list_sessions(SessionFilter(state=SessionState.ACTIVE, limit=total))
        assert park.parked == 200
        assert len(active.sessions) == total - 200
    finally:
        await storage.close()


async def test_a_stop_bound_of_none_parks_nothing_at_the_stop(tmp_path: Path) -> None:
    """``--max-parked-at-stop 0``: the stop leaves every session to the next start."""
    storage = await open_storage("memory://", default_ttl=3600)
    try:
        await storage.create_session(Session.new("left", user_id="u", ttl=3600))
        park = RestartPark(storage, stop_most=0)
        await park.begin()
        await storage.update_session_state("left", SessionState.ACTIVE)  # an attach
        await park.park_at_stop()
        meta = await storage.get_metadata("left")
        assert park.parked == 0 and meta is not None and meta.state == SessionState.ACTIVE
    finally:
        await storage.close()


@pytest.mark.parametrize("kind", ["memory", *STORES])
async def test_a_close_while_the_park_goes_on_does_not_end_it(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A peer closes a session (once the server listens) that the park has not reached
    yet: the park goes on past it, and parks every other one (r345: a close between a
    batch's listing and its write raised InvalidTransition, which ended the park's task,
    and every session of the batches after it stayed ``active`` with no connection).
    The close comes between the store's first and second steps, whatever the machine's
    speed: a close timed from the outside met a park already done on a fast one."""
    url = "memory://" if kind == "memory" else store_url(kind, tmp_path)
    storage = await open_storage(url, default_ttl=3600, cleanup_interval=None)
    try:
        for number in range(30):
            await storage.create_session(Session.new(f"s{number:03}", user_id="u", ttl=3600))
            await storage.update_session_state(f"s{number:03}", SessionState.ACTIVE)
        monkeypatch.setattr(restart_park, "BATCH", 10)
        closed: list[str] = []
        assert isinstance(storage, ParksAttached)
        park_attached = storage.park_attached

        async def closing_after_the_first_step(since: datetime, batch: int) -> AsyncIterator[int]:
            steps = park_attached(since, batch)
            yield await anext(steps)
            waiting = await storage.list_sessions(SessionFilter(state=SessionState.ACTIVE))
            closed.append(waiting.sessions[0].id)
            await storage.update_session_state(closed[0], SessionState.CLOSED)
            async for parked in steps:
                yield parked

        monkeypatch.setattr(storage, "park_attached", closing_after_the_first_step)
        park = RestartPark(storage)
        await park.begin(foreground=0)  # the first batch, then the task
        assert park.task is not None
        await asyncio.wait({park.task})
        assert park.task.exception() is None, f"the park's task died: {park.task.exception()!r}"
        closed_now = await storage.get_metadata(closed[0])
        assert closed_now is not None and closed_now.state == SessionState.CLOSED
        active = await storage.list_sessions(SessionFilter(state=SessionState.ACTIVE))
        assert [metadata.id for metadata in active.sessions] == []
        assert park.parked == 29
    finally:
        await storage.close()

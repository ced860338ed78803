"""A server restarted on a store whose times are ahead of its machine's clock (the
clock set back while it was down, or wrong for a while before): what it stamps and
what it says (docs/protocol.md, Clocks).

- On SQLite, nothing is stamped behind what the store holds, the states written as
  sessions were parked included: the store's open read the newest ``updated_at`` of
  sessions ``active`` or ``idle`` only, so a session parked at its peer's close (its
  ``updated_at`` later than its activity) and attached again after the restart had its
  ``updated_at`` moved back, and was listed behind a session parked after it and
  quiet since. The first server runs on the real clock and stops; the second under
  libfaketime an hour behind it (skipped without it: apt-get install faketime), and
  stops gracefully too.
- A store holding times far ahead says, once, that its clock stands still.

Real servers, real stores in temp dirs."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection, connect

from bamboo_session.persistence import open_storage
from bamboo_session.persistence.base import SessionFilter, SortBy, SortOrder
from bamboo_session.protocol.models import Session, SessionMetadata, utcnow
from tests.faketime_support import needs_libfaketime, under_faketime
from tests.instances import eventually
from tests.server_process import ServerProcess, assert_no_tracebacks
from tests.test_store_clock import url_of


async def attached(server: ServerProcess, session_id: str, **hello: object) -> ClientConnection:
    """Attached (``hello``), one event acknowledged."""
    ws = await connect(server.url(session_id), open_timeout=10)
    await ws.send(json.dumps({"type": "hello", **hello}))
    assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "welcome"
    event = {"type": "token", "content": "x"}
    await ws.send(json.dumps({"type": "event", "id": 1, "event": event}))
    ack = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert ack["type"] == "ack", ack
    return ws


def read_state(server: ServerProcess, session_id: str) -> str:
    url = f"http://127.0.0.1:{server.port}/api/v1/sessions/{session_id}?limit=1"
    with urllib.request.urlopen(url, timeout=10) as answer:
        state: str = json.loads(answer.read())["metadata"]["state"]
    return state


async def parked(server: ServerProcess, session_id: str) -> bool:
    return await asyncio.to_thread(read_state, server, session_id) == "disconnected"


async def stored(url: str, *session_ids: str) -> tuple[list[SessionMetadata], list[str]]:
    """The sessions' metadata as the store holds it, and every id by ``updated_at``,
    the newest first."""
    storage = await open_storage(url, cleanup_interval=None)
    try:
        found = [await storage.get_metadata(session_id) for session_id in session_ids]
        listing = SessionFilter(sort_by=SortBy.UPDATED_AT, sort_order=SortOrder.DESC, limit=10)
        order = [metadata.id for metadata in (await storage.list_sessions(listing)).sessions]
    finally:
        await storage.close()
    return [metadata for metadata in found if metadata is not None], order


@needs_libfaketime
async def test_a_session_parked_at_the_stop_and_attached_after_a_restart_an_hour_behind(
    tmp_path: Path,
) -> None:
    url = f"sqlite://{tmp_path / 'sessions.db'}"
    flags = ("--store", url, "--default-ttl", "7200")
    first = ServerProcess(tmp_path / "data", tmp_path / "first.log", *flags)
    await first.start_in_loop()
    try:
        again = await attached(first, "again", create=True)
        quiet = await attached(first, "quiet", create=True)  # the last activity
        await again.close()  # each parked at its peer's close, after all activity
        await eventually(lambda: parked(first, "again"), timeout=10)
        await quiet.close()
        await eventually(lambda: parked(first, "quiet"), timeout=10)
    finally:
        assert await asyncio.to_thread(first.stop) == 0
    assert_no_tracebacks(first.log_records())
    (parked_again, parked_quiet), _ = await stored(url, "again", "quiet")
    assert parked_again.state == parked_quiet.state == "disconnected"

    second = ServerProcess(tmp_path / "data", tmp_path / "second.log", *flags)
    await under_faketime(second, FAKETIME="-1h").start_in_loop()
    try:
        await (await attached(second, "again")).close()
    finally:
        assert await asyncio.to_thread(second.stop) == 0  # a graceful stop, an hour behind
    assert_no_tracebacks(second.log_records())
    (again,), order = await stored(url, "again")
    assert again.updated_at > parked_again.updated_at  # it was moved back to its activity
    assert again.last_activity_at > parked_again.last_activity_at
    assert order == ["again", "quiet"]  # the session attached last is listed first


@pytest.mark.parametrize("kind", ["jsonl", "sqlite"])
async def test_a_store_holding_times_a_day_ahead_says_its_clock_stands_still(
    kind: str, tmp_path: Path
) -> None:
    """A machine that ran a moment with its clock a day ahead (booted with it wrong,
    then NTP stepped it back) left times a day ahead in its store: for that day every
    new time is that one plus a microsecond a write, and no session expires. Nothing
    said so; the log does now, once, at the start."""
    url = url_of(kind, tmp_path)
    storage = await open_storage(url, cleanup_interval=None)
    try:
        await storage.create_session(Session.new("ahead", user_id="u", ttl=60))
        metadata = await storage.get_metadata("ahead")
        assert metadata is not None
        metadata.updated_at = metadata.last_activity_at = utcnow() + timedelta(days=1)
        await storage.import_metadata(metadata)  # as the clock a day ahead wrote it
    finally:
        await storage.close()
    server = ServerProcess(tmp_path / "data", tmp_path / "serve.log", "--store", url)
    await server.start_in_loop()
    try:
        await (await attached(server, "new", create=True)).close()
    finally:
        server.kill()
    records = server.log_records()
    assert_no_tracebacks(records)
    said = [record for record in records if "ahead of this machine's clock" in record["event"]]
    assert len(said) == 1 and said[0]["level"] == "warning", said
    assert "23:59:" in said[0]["event"] or "1 day" in said[0]["event"], said

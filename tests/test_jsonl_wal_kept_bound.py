"""After a failed sync the JSONL store keeps every WAL segment until the next open
replays them (tests/test_jsonl_sync_failures.py). That WAL is bounded: past
``wal_kept_max_bytes`` every append, and every delete, is refused (``AppendsSuspended``)
until the store is opened again, rather than the WAL growing until the disk is full.
The failure is injected (EIO) in the retirement's ``datasync``."""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path

import pytest

from bamboo_session.persistence import (
    AppendsSuspended,
    JsonlStorage,
    JsonlStorageConfig,
    open_storage,
)
from bamboo_session.persistence.jsonl import retirement
from bamboo_session.protocol.models import AgentEvent, Session, utcnow
from tests.held_delete_support import embedded
from tests.jsonl_support import failing_once, segments
from tests.support import attach, open_peer, token

LIMIT = 1024 * 1024  # a few segments: each is allocated 256 KiB ahead of its records
APPENDS_MAX = 64  # each starts a segment: far more than the bound lets through
DELETES = 16  # refused deletes of one session: each would have started a segment


def kept_bytes(config: JsonlStorageConfig) -> int:
    return sum(path.stat().st_size for path in segments(config))


async def past_the_bound(
    storage: JsonlStorage, failing: dict[str, bool]
) -> tuple[list[str], AppendsSuspended]:
    """A retirement's sync fails, then appends to "a" until one is refused: the tokens
    acknowledged, and the refusal."""
    acked: list[str] = []
    failing["on"] = True
    for i in range(APPENDS_MAX):
        try:
            await storage.append_event("a", AgentEvent.token(str(i)))
        except AppendsSuspended as exc:
            assert storage.sync_failed
            return acked, exc
        acked.append(str(i))
        await storage._writer.retirement.settled()
    raise AssertionError("the kept WAL grew past its bound")


async def test_the_wal_kept_after_a_failed_sync_stops_appends_at_its_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # One byte per segment: each append starts a new one and retires the one before.
    config = JsonlStorageConfig(tmp_path, wal_kept_max_bytes=LIMIT).with_wal(segment_bytes=1)
    failing = failing_once(monkeypatch, retirement, "datasync")
    async with await JsonlStorage.open(config) as storage:
        for session_id in ("a", "b"):
            await storage.create_session(Session.new(session_id))
        acked, refused = await past_the_bound(storage, failing)
        assert "wal_kept_max_bytes" in str(refused)
        # Past the bound by one segment at most: the append that crossed it.
        assert LIMIT < kept_bytes(config) <= LIMIT + 2 * 256 * 1024
        with pytest.raises(AppendsSuspended):  # every session alike
            await storage.append_event("b", AgentEvent.token("refused"))
        tokens = [stored.event for stored in await storage.read_events("a")]
        assert tokens == [AgentEvent.token(t) for t in acked]  # still readable
    said = [r for r in caplog.records if "wal_kept_max_bytes" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.ERROR  # said once, not per append
    async with await JsonlStorage.open(config) as storage:  # the open settles it
        assert not storage.sync_failed
        assert segments(config) == []
        assert (await storage.append_event("b", AgentEvent.token("after"))).seq == 1
        tokens = [stored.event for stored in await storage.read_events("a")]
        assert tokens == [AgentEvent.token(t) for t in acked]


async def test_past_the_bound_deletes_are_refused_too_and_leave_the_sessions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A delete records itself in the WAL (a small record: here, with one byte per
    segment, a segment of its own), so a loop of them grew the kept WAL past the bound
    all the same. Past it a delete, the replacement of an expired session and the
    cleanup of one are refused as appends are, and change nothing; the next open,
    which settles the WAL, takes them."""
    config = JsonlStorageConfig(tmp_path, wal_kept_max_bytes=LIMIT).with_wal(segment_bytes=1)
    failing = failing_once(monkeypatch, retirement, "datasync")
    async with await JsonlStorage.open(config) as storage:
        for session_id in ("a", "b"):
            await storage.create_session(Session.new(session_id))
        old = Session.new("old", ttl=60)
        old.metadata.touch(utcnow() - timedelta(minutes=5))  # expired a while ago
        await storage.create_session(old)
        acked, _ = await past_the_bound(storage, failing)
        wal_before = segments(config)
        for _ in range(DELETES):
            with pytest.raises(AppendsSuspended, match="no appends and no deletes"):
                await storage.delete_session("b")
        with pytest.raises(AppendsSuspended, match="wal_kept_max_bytes"):
            await storage.create_session(Session.new("old"), replace_expired=True)
        assert await storage.cleanup_expired_sessions() == 0
        assert segments(config) == wal_before  # not one record more
        assert await storage.get_metadata("b") is not None
        assert await storage.get_metadata("old") is not None
        tokens = [stored.event for stored in await storage.read_events("a")]
        assert tokens == [AgentEvent.token(t) for t in acked]
    said = [r for r in caplog.records if "wal_kept_max_bytes" in r.getMessage()]
    assert len(said) == 1 and "no deletes" in said[0].getMessage()  # once, not per delete
    async with await JsonlStorage.open(config) as storage:  # the open settles it
        await storage.delete_session("b")
        assert await storage.cleanup_expired_sessions() == 1
        assert await storage.get_metadata("b") is None
        assert await storage.get_metadata("old") is None


async def test_without_a_failed_sync_the_bound_does_not_apply(tmp_path: Path) -> None:
    """Segments retired as they go: the WAL never holds more than the current one."""
    config = JsonlStorageConfig(tmp_path, wal_kept_max_bytes=1).with_wal(segment_bytes=1)
    async with await JsonlStorage.open(config) as storage:
        await storage.create_session(Session.new("a"))
        for i in range(8):
            assert (await storage.append_event("a", AgentEvent.token(str(i)))).seq == i + 1


async def test_wal_kept_max_bytes_comes_from_the_url(tmp_path: Path) -> None:
    async with await open_storage(f"jsonl://{tmp_path}?wal_kept_max_bytes=4096") as storage:
        assert isinstance(storage, JsonlStorage)
        assert storage.config.wal_kept_max_bytes == 4096
    async with await open_storage(f"jsonl://{tmp_path}") as storage:
        assert isinstance(storage, JsonlStorage)
        assert storage.config.wal_kept_max_bytes == 1024**3


@pytest.mark.parametrize("given", ["lots", "0", "-1", "1.5", "1GiB", ""])
async def test_a_bad_wal_kept_max_bytes_in_the_url_is_named(tmp_path: Path, given: str) -> None:
    with pytest.raises(ValueError, match="wal_kept_max_bytes must be"):
        await open_storage(f"jsonl://{tmp_path}/store?wal_kept_max_bytes={given}")
    assert not (tmp_path / "store").exists()


async def test_a_client_is_told_internal_past_the_bound_and_the_restart_takes_its_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over the wire: past the bound, an append gets ``internal`` saying only a restart
    lets it in (docs/protocol.md), the connection stays; after the restart the same
    append, with the same key, is taken."""
    config = JsonlStorageConfig(tmp_path, wal_kept_max_bytes=LIMIT).with_wal(segment_bytes=1)
    failing = failing_once(monkeypatch, retirement, "datasync")
    async with embedded(config) as server:
        async with attach(server, role="agent") as (agent, welcome):
            session_id = welcome["session"]["id"]
            failing["on"] = True
            refused = None
            for i in range(1, APPENDS_MAX + 1):
                frame = {"type": "event", "id": i, "key": f"k{i}", "event": token(str(i))}
                await agent.send(frame)
                reply = await agent.recv()
                while reply["type"] not in ("ack", "error"):
                    reply = await agent.recv()
                if reply["type"] == "error":
                    refused = (frame, reply)
                    break
                assert isinstance(server.storage, JsonlStorage)
                await server.storage._writer.retirement.settled()
            assert refused is not None, "the kept WAL grew past its bound"
            frame, error = refused
            assert error["code"] == "internal" and error["id"] == frame["id"], error
            assert error["message"].startswith(
                "the store takes no appends to this session until the server restarts"
            ), error
            assert (await agent.request({"type": "ping", "id": 0}, "pong"))["id"] == 0
    async with embedded(config) as server:  # the restart: its open replays the WAL
        async with attach(server, session_id, role="agent") as (agent, welcome):
            assert welcome["session"]["last_seq"] == frame["id"] - 1
            assert (await agent.request(frame, "ack"))["seq"] == frame["id"]


async def test_past_the_bound_a_hello_that_would_replace_an_expired_session_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over the wire: the replacement would delete the expired session (a WAL record):
    the ``hello`` is closed 1011 with the words appends get (docs/protocol.md), and
    the expired session stays; after the restart the same ``hello`` replaces it."""
    config = JsonlStorageConfig(tmp_path, wal_kept_max_bytes=LIMIT).with_wal(segment_bytes=1)
    failing = failing_once(monkeypatch, retirement, "datasync")
    async with embedded(config) as server:
        storage = server.storage
        assert isinstance(storage, JsonlStorage)
        old = Session.new("old", ttl=60)
        old.metadata.touch(utcnow() - timedelta(minutes=5))  # expired a while ago
        await storage.create_session(old)
        await storage.create_session(Session.new("a"))
        await past_the_bound(storage, failing)
        async with open_peer(server, "old") as peer:
            await peer.send({"type": "hello", "create": True})
            code, _frames = await peer.closed()
            assert code == 1011
            reason = peer.ws.close_reason or ""
            assert reason.startswith("the store takes no appends to this session"), reason
        assert await storage.get_metadata("old") == old.metadata
    async with embedded(config) as server:
        async with attach(server, "old", create=True) as (_peer, welcome):
            assert welcome["session"]["last_seq"] == 0
            assert welcome["session"]["epoch"] != old.metadata.epoch


async def test_past_the_bound_a_server_delete_is_refused_and_the_session_stays_attachable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server's delete past the bound: the caller gets the store's refusal, the
    session's peer is closed 1011 ``session not deleted`` (it resumes), and nothing is
    left held: the session takes a new peer, and the refused delete again refused."""
    config = JsonlStorageConfig(tmp_path, wal_kept_max_bytes=LIMIT).with_wal(segment_bytes=1)
    failing = failing_once(monkeypatch, retirement, "datasync")
    async with embedded(config) as server:
        storage = server.storage
        assert isinstance(storage, JsonlStorage)
        await storage.create_session(Session.new("a"))
        await storage.create_session(Session.new("b"))
        await past_the_bound(storage, failing)
        async with attach(server, "b") as (peer, _welcome):
            with pytest.raises(AppendsSuspended, match="no deletes"):
                await server.manager.delete_session("b")
            code, _frames = await peer.closed()
            assert code == 1011 and peer.ws.close_reason == "session not deleted"
        async with attach(server, "b") as (peer, welcome):
            assert welcome["session"]["id"] == "b"
            assert (await peer.request({"type": "ping", "id": 1}, "pong"))["id"] == 1
            with pytest.raises(AppendsSuspended):
                await server.manager.delete_session("b")
        assert await storage.get_metadata("b") is not None

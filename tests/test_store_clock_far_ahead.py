"""A JSONL or SQLite store whose files hold a time in the year 9999 (a hand edit: no
clock stamps one, and ``--default-ttl`` stops at 100 years): its clock, which never
gives a time behind one the store holds (persistence/clock.py), was held there, and
every stamp, a microsecond past it, overflowed: after the open every write failed
(OverflowError; r372). A time more than 100 years past the machine's clock is now left
out of the clock, with an error naming the file (and, on SQLite, the session) that
holds it; the store opens and writes at the machine's clock. Real stores in temp
dirs."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bamboo_session.persistence import open_storage
from bamboo_session.persistence.jsonl import checkpoint
from bamboo_session.persistence.jsonl.checkpoint import Found
from bamboo_session.persistence.sqlite.schema import time_text
from bamboo_session.protocol.models import AgentEvent, Session, SessionState, utcnow

YEAR_9999 = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)


async def made(url: str) -> None:
    storage = await open_storage(url, cleanup_interval=None)
    try:
        await storage.create_session(Session.new("edited", ttl=60, now=storage.now()))
    finally:
        await storage.close()


def edit_checkpoint(path: Path) -> None:
    """``updated_at`` and ``last_activity_at`` set to the year 9999, as an editor
    leaves the file: whole, a valid checkpoint (its CRC made again)."""
    found = checkpoint.read(path)
    assert isinstance(found, Found)
    metadata = found.checkpoint.metadata
    metadata.updated_at = metadata.last_activity_at = YEAR_9999
    checkpoint.create(path, found.checkpoint, found.generation + 1)


def edit_database(path: Path) -> None:
    with sqlite3.connect(path) as db:
        text = time_text(YEAR_9999)
        db.execute(
            "UPDATE sessions SET updated_at = ?, last_activity_at = ? WHERE id = 'edited'",
            (text, text),
        )
    db.close()


@pytest.mark.parametrize("kind", ["jsonl", "sqlite"])
async def test_a_store_holding_a_time_in_the_year_9999_opens_and_writes(
    kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if kind == "jsonl":
        url, held_in = f"jsonl://{tmp_path}", tmp_path / "sessions" / "edited.json"
        await made(url)
        edit_checkpoint(held_in)
    else:
        url = f"sqlite://{tmp_path / 'sessions.db'}"
        held_in = tmp_path / "sessions.db"
        await made(url)
        edit_database(held_in)

    storage = await open_storage(url, cleanup_interval=None)
    try:
        before = utcnow()
        await storage.create_session(Session.new("new", ttl=60, now=storage.now()))
        await storage.append_event("new", AgentEvent.token("x"))
        await storage.update_session_state("new", SessionState.IDLE)
        new = await storage.get_metadata("new")
        assert new is not None and new.expires_at is not None
        assert before <= new.updated_at <= utcnow() + timedelta(seconds=1)  # the machine's
        assert (await storage.read_events("new"))[-1].ts <= utcnow() + timedelta(seconds=1)
        edited = await storage.get_metadata("edited")
        assert edited is not None and edited.updated_at == YEAR_9999  # read as it is
    finally:
        await storage.close()
    said = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any(str(held_in) in line and "100 years" in line for line in said), said
    if kind == "sqlite":
        assert any("'edited'" in line for line in said), said


def edit_other_checkpoint(path: Path, moment: datetime) -> None:
    found = checkpoint.read(path)
    assert isinstance(found, Found)
    metadata = found.checkpoint.metadata
    metadata.updated_at = metadata.last_activity_at = moment
    checkpoint.create(path, found.checkpoint, found.generation + 1)


@pytest.mark.parametrize("kind", ["jsonl", "sqlite"])
async def test_a_time_in_the_year_9999_hides_no_other_time_ahead_from_the_clock(
    kind: str, tmp_path: Path
) -> None:
    """Beside the session edited to the year 9999, one written by a clock an hour ahead
    (since set right): the store's clock still never goes back behind that one's times,
    and its next write is not stamped behind them. SQLite's open read only the newest
    of each column, the year 9999's, left out: the hour ahead went unseen."""
    ahead = utcnow() + timedelta(hours=1)
    url = f"jsonl://{tmp_path}" if kind == "jsonl" else f"sqlite://{tmp_path / 'sessions.db'}"
    await made(url)
    storage = await open_storage(url, cleanup_interval=None)
    try:
        await storage.create_session(Session.new("ahead", ttl=7200, now=storage.now()))
    finally:
        await storage.close()
    if kind == "jsonl":
        edit_checkpoint(tmp_path / "sessions" / "edited.json")
        edit_other_checkpoint(tmp_path / "sessions" / "ahead.json", ahead)
    else:
        edit_database(tmp_path / "sessions.db")
        with sqlite3.connect(tmp_path / "sessions.db") as db:
            text = time_text(ahead)
            db.execute(
                "UPDATE sessions SET updated_at = ?, last_activity_at = ? WHERE id = 'ahead'",
                (text, text),
            )
        db.close()

    storage = await open_storage(url, cleanup_interval=None)
    try:
        assert storage.now() >= ahead
        await storage.append_event("ahead", AgentEvent.token("x"))
        metadata = await storage.get_metadata("ahead")
        assert metadata is not None and metadata.updated_at >= ahead  # not back behind
        assert (await storage.read_events("ahead"))[-1].ts >= ahead
    finally:
        await storage.close()

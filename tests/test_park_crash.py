"""kill -9 at any instant of a restart's park and of the close after it, on the stores a
process holds alone (JSONL, SQLite): no acknowledged write is lost, no file is left
damaged, and the next start parks what is left.

A child (tests/park_crash_child.py) runs rounds of attaches, appends, a close, the
store's park (``park_attached``) and the store's close (on JSONL the chunked
checkpoints of every session the park moved, the first writes after an open that its
one ``syncfs`` made safe), and is killed at a random instant, between two steps of the
park, or in the middle of the close's checkpoints. After each kill, a copy of the
store as the kill left it (the next child opens the original) is checked as a restart
would find it: every checkpoint file holds a valid slot (JSONL), the database passes
``integrity_check`` (SQLite), the open keeps nothing aside as damaged; every
acknowledged event is there at its seq, gap-free, every session told closed is closed,
and after the park no session is left ``active`` or ``idle``."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bamboo_session.persistence import JsonlStorage, open_storage
from bamboo_session.persistence.base import SessionFilter
from bamboo_session.persistence.capabilities import ParksAttached
from bamboo_session.persistence.jsonl import checkpoint
from bamboo_session.protocol.models import SessionState, Token
from tests.forks import ForkedChild

CHILD = Path(__file__).with_name("park_crash_child.py")
SESSIONS = 150  # the child's
STORES = ["jsonl", "sqlite"]


@dataclass
class Acked:
    """What the children were told is stored: events by seq, and closes."""

    events: dict[str, dict[int, str]] = field(default_factory=dict)
    closed: set[str] = field(default_factory=set)

    def add(self, lines: list[str]) -> None:
        for line in lines:
            kind, _, words = line.partition(" ")
            session_id, *rest = words.split(" ")
            if kind == "ack":
                seq, tag = int(rest[0]), rest[1]
                assert seq not in self.events.setdefault(session_id, {}), line
                self.events[session_id][seq] = tag
            elif kind == "closed":
                self.closed.add(session_id)


def url_of(kind: str, directory: Path) -> str:
    if kind == "sqlite":
        return f"sqlite://{directory / 'sessions.db'}?durability=fsync"
    return f"jsonl://{directory}?durability=fsync"


def complete_lines(out: bytes) -> list[str]:
    text = out.decode()
    return text[: text.rfind("\n") + 1].splitlines()  # a line the kill cut was never said


def killed_at_its_own_point(directory: Path, kind: str, seed: int, point: str) -> list[str]:
    child = ForkedChild([str(CHILD), url_of(kind, directory), str(seed), point])
    out, err = child.communicate(timeout=120)
    assert child.returncode == -9, err.decode()
    return complete_lines(out)


def killed_at_random(directory: Path, kind: str, seed: int, rng: random.Random) -> list[str]:
    """Killed within about two rounds of its ``rounds``-th, timed by its own pace (the
    rounds as the parent sees them), not from its start."""
    child = ForkedChild(
        [str(CHILD), url_of(kind, directory), str(seed), "random"],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert child.stdout is not None
    read, seen = bytearray(), []
    rounds = rng.randint(1, 3)
    while len(seen) < rounds:
        line = child.stdout.readline()
        if not line:
            break  # it ended first: its stderr says why, below
        read += line
        if line.startswith(b"round"):
            seen.append(time.monotonic())
    interval = (seen[-1] - seen[0]) / (len(seen) - 1) if len(seen) > 1 else 0.3
    time.sleep(rng.uniform(0.0, min(2 * interval, 2.0)))
    child.kill()
    out, err = child.communicate(timeout=30)
    assert child.returncode == -9, err.decode()
    return complete_lines(bytes(read) + out)


def check_files_as_left(kind: str, directory: Path) -> None:
    if kind == "sqlite":
        with sqlite3.connect(directory / "sessions.db") as db:
            assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        return
    for path in (directory / "sessions").glob("*.json"):
        assert isinstance(checkpoint.read(path), checkpoint.Found), f"{path} has no valid slot"


async def check_restart(kind: str, directory: Path, acked: Acked) -> None:
    storage = await open_storage(url_of(kind, directory), cleanup_interval=None)
    try:
        if isinstance(storage, JsonlStorage):
            assert storage.recovery is not None and storage.recovery.damaged == 0
            assert await storage.damaged_files() == []
        assert isinstance(storage, ParksAttached)
        [_ async for _ in storage.park_attached(storage.now(), 1000)]
        for session_id, by_seq in acked.events.items():
            events = await storage.read_events(session_id)
            assert [event.seq for event in events] == list(range(1, len(events) + 1))
            found = {e.seq: e.event.content for e in events if isinstance(e.event, Token)}
            for seq, tag in by_seq.items():
                assert found.get(seq) == tag, f"acknowledged {session_id} seq {seq} lost"
            meta = await storage.get_metadata(session_id)
            assert meta is not None and meta.last_seq == len(events)
        for session_id in acked.closed:
            meta = await storage.get_metadata(session_id)
            assert meta is not None and meta.state == SessionState.CLOSED, session_id
        listed = await storage.list_sessions(SessionFilter(limit=1000))
        states = {meta.state for meta in listed.sessions}
        assert states <= {SessionState.DISCONNECTED, SessionState.CLOSED}, states
    finally:
        await storage.close()


def check(kind: str, directory: Path, acked: Acked, lines: list[str], copy: Path) -> None:
    """The store as the kill left it, checked on a copy: the next child opens the
    original as the kill left it (no clean close of a check's in between)."""
    acked.add(lines)
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(directory, copy, symlinks=True)
    check_files_as_left(kind, copy)
    asyncio.run(check_restart(kind, copy, acked))


@pytest.mark.parametrize("kind", STORES)
def test_kills_at_random_instants_of_the_park_and_the_close(tmp_path: Path, kind: str) -> None:
    rng = random.Random(int.from_bytes(os.urandom(4)))
    directory, acked = tmp_path / "store", Acked()
    for seed in range(4):
        lines = killed_at_random(directory, kind, seed, rng)
        assert "round" in lines, "the child made no round before its kill"
        check(kind, directory, acked, lines, tmp_path / "copy")
    assert acked.events and acked.closed


@pytest.mark.parametrize("kind", STORES)
def test_a_kill_between_two_steps_of_the_park(tmp_path: Path, kind: str) -> None:
    directory, acked = tmp_path / "store", Acked()
    for seed, step in enumerate((1, 3)):
        lines = killed_at_its_own_point(directory, kind, seed, f"step-{step}")
        assert lines.count("step") == step and "closing" not in lines
        check(kind, directory, acked, lines, tmp_path / "copy")


def test_a_kill_in_the_middle_of_the_chunked_close(tmp_path: Path) -> None:
    """JSONL: the close after a park writes the checkpoints of every session it moved,
    64 to a thread job, the first write of each after the open: killed at the n-th."""
    rng = random.Random(int.from_bytes(os.urandom(4)))
    directory, acked = tmp_path / "store", Acked()
    # The second round's close writes the 60 and more sessions it made live and parked.
    for seed, nth in enumerate((1, rng.randint(2, 40), 60)):
        lines = killed_at_its_own_point(directory, "jsonl", seed, f"checkpoint-{nth}")
        assert lines.count("round") == 2 and lines[-1] == "closing", (nth, lines)
        check("jsonl", directory, acked, lines, tmp_path / "copy")

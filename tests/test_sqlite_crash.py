"""Crash and write-failure tests of the SQLite backend, as JSONL's: a child process
appends (printing each acknowledged append at once) and is SIGKILLed at a random
instant, several times over one file; after each kill every acknowledged event and
message is there once, in order, gap-free, and the file passes SQLite's integrity
check. Writes that fail (RLIMIT_FSIZE: EFBIG, a disk I/O error to SQLite) acknowledge
nothing, leave nothing, and appends work again once the cause is gone."""

from __future__ import annotations

import asyncio
import json
import os
import random
import sqlite3
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bamboo_session.persistence import open_storage
from bamboo_session.protocol.models import MessageEvent
from tests import kills
from tests.write_failures import assert_told_once, check_report

CHILD = Path(__file__).with_name("sqlite_child.py")  # its writefail: tests/write_failures.py
ROUNDS = 6
ENOUGH = 51  # acknowledged appends, over all the rounds


@dataclass
class Acked:
    """Everything the children acknowledged, per session: seq -> tag."""

    events: dict[str, dict[int, str]] = field(default_factory=dict)
    messages: dict[str, list[tuple[int, str]]] = field(default_factory=dict)

    def add(self, line: str) -> None:
        _ack, session_id, seqs, kind, tag = line.split(" ")
        numbers = [int(seq) for seq in seqs.split(",")]
        by_seq = self.events.setdefault(session_id, {})
        for i, seq in enumerate(numbers):
            assert seq not in by_seq, f"seq {seq} of {session_id} acknowledged twice"
            by_seq[seq] = f"{tag}.{i}" if kind == "batch" else tag
        if kind == "message":
            self.messages.setdefault(session_id, []).append((numbers[0], tag))


def _tag(event: object) -> str:
    if isinstance(event, MessageEvent):
        return event.message.content
    content = getattr(event, "content", "")
    assert isinstance(content, str)
    return content


def run_and_kill(path: Path, seed: int, rng: random.Random, acks: int = 0) -> list[str]:
    """Start a child, kill it at a random instant (with ``acks``: after that many
    acknowledgements), return its complete ack lines."""
    return kills.run_and_kill(kills.child_argv(CHILD, path, seed), rng, late=0.5, acks=acks)


async def verify(path: Path, acked: Acked) -> None:
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        db.close()
    async with await open_storage(f"sqlite://{path}") as storage:
        for session_id, by_seq in acked.events.items():
            events = await storage.read_events(session_id)
            assert [e.seq for e in events] == list(range(1, len(events) + 1))
            found = {e.seq: _tag(e.event) for e in events}
            for seq, tag in by_seq.items():
                assert found.get(seq) == tag, f"acknowledged {session_id} seq {seq} lost"
            history = await storage.get_session_history(session_id)
            in_log = [
                (e.seq, e.event.message.content)
                for e in events
                if isinstance(e.event, MessageEvent)
            ]
            assert [m.content for m in history] == [content for _, content in in_log]
            positions = {seq: i for i, (seq, _content) in enumerate(in_log)}
            for seq, tag in acked.messages.get(session_id, []):
                assert in_log[positions[seq]][1] == tag
            meta = await storage.get_metadata(session_id)
            assert meta is not None
            assert meta.last_seq == len(events) and meta.message_count == len(history)


def test_sigkill_at_random_instants_loses_no_acknowledged_write(tmp_path: Path) -> None:
    rng = random.Random(int.from_bytes(os.urandom(4)))
    path = tmp_path / "store.db"
    acked = Acked()

    def check(lines: list[str]) -> None:
        for line in lines:
            acked.add(line)
        if path.exists():
            asyncio.run(verify(path, acked))

    def run_round(seed: int, acks: int) -> list[str]:
        return run_and_kill(path, seed=seed, rng=rng, acks=acks)

    total = kills.kill_rounds(run_round, check, ROUNDS, ENOUGH)
    assert total >= ENOUGH, "the child ended before it acknowledged enough"


def test_failed_writes_fail_cleanly_and_recover(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    result = subprocess.run(
        [sys.executable, str(CHILD), "writefail", str(path), "150000"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    seqs = check_report(report)
    assert_told_once(result.stderr, f"a write to {path} failed: disk I/O error")
    for reason in report["reasons"]:
        assert "\n" not in reason
        assert "could not write to the SQLite store" in reason
        assert "nothing of this call was stored" in reason

    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert [s for (s,) in db.execute("SELECT seq FROM events ORDER BY seq")] == seqs
    db.close()

"""Crash tests: a child process appends (printing each acknowledged append at once) and
is SIGKILLed at a random instant, several times over one data directory. After each
kill, every acknowledged event and message is there, in order, gap-free, and no line of
any log is torn. And an ordinary kill -9 is not damage: lines written but never
acknowledged are cut at the next open, quietly, and nothing is kept aside. A delete the
caller was told failed stays undone after a kill -9."""

from __future__ import annotations

import asyncio
import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bamboo_session.persistence import JsonlStorage, JsonlStorageConfig
from bamboo_session.protocol.log_lines import decode_stored_event
from bamboo_session.protocol.models import AgentEvent, MessageEvent
from tests import kills
from tests.jsonl_support import JSONL_CHILD, killed_child

ROUNDS = 6
ENOUGH = 51  # acknowledged appends, over all the rounds


@dataclass
class Acked:
    """Everything the children acknowledged, per session: seq -> (kind, tag)."""

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


def run_and_kill(base: Path, seed: int, rng: random.Random, acks: int = 0) -> list[str]:
    """Start a child, kill it at a random instant (with ``acks``: after that many
    acknowledgements), return its complete ack lines."""
    return kills.run_and_kill(kills.child_argv(JSONL_CHILD, base, seed), rng, late=0.4, acks=acks)


async def verify(base: Path, acked: Acked) -> None:
    # A kill may leave a torn line: the kernel ends a write a fatal signal interrupts at
    # a page boundary (a CI run saw a batch straddling one cut at 77,824 bytes, 19
    # pages). The open cuts it; after the open none may be left.
    async with await JsonlStorage.open(JsonlStorageConfig(base)) as storage:
        for log in (base / "events").glob("*.jsonl"):
            raw = log.read_bytes()
            assert not raw or raw.endswith(b"\n"), f"torn line left in {log}"
            seqs = [decode_stored_event(line).seq for line in raw.splitlines()]
            assert seqs == list(range(1, len(seqs) + 1)), f"{log} is not gap-free"
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


def _tag(event: object) -> str:
    if isinstance(event, MessageEvent):
        return event.message.content
    content = getattr(event, "content", "")
    assert isinstance(content, str)
    return content


def test_sigkill_at_random_instants_loses_no_acknowledged_write(tmp_path: Path) -> None:
    rng = random.Random(int.from_bytes(os.urandom(4)))
    base = tmp_path / "data"
    acked = Acked()

    def check(lines: list[str]) -> None:
        for line in lines:
            acked.add(line)
        if base.exists():
            asyncio.run(verify(base, acked))

    def run_round(seed: int, acks: int) -> list[str]:
        return run_and_kill(base, seed=seed, rng=rng, acks=acks)

    total = kills.kill_rounds(run_round, check, ROUNDS, ENOUGH)
    assert total >= ENOUGH, "the child ended before it acknowledged enough"


def test_a_kill_between_write_and_sync_is_no_damage(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Killed after a batch reached the log but before its WAL record was written: the
    batch was never acknowledged, and the next open cuts it as ordinary recovery, at
    info level, keeping no ``.damaged-`` file."""
    base = tmp_path / "data"
    child = killed_child("killsync", base)
    assert child.stdout.splitlines() == ["acked"]
    lines = (base / "events" / "k.jsonl").read_bytes().splitlines()
    assert len(lines) == 8, "the unacknowledged batch should be in the log before the open"

    async def reopen() -> None:
        async with await JsonlStorage.open(JsonlStorageConfig(base)) as storage:
            events = await storage.read_events("k")
            assert [e.event for e in events] == [AgentEvent.token(f"acked{i}") for i in range(5)]
            assert storage.recovery is not None
            assert (storage.recovery.torn_lines_cut, storage.recovery.damaged) == (1, 0)
            assert await storage.damaged_files() == []
            assert (await storage.append_event("k", AgentEvent.token("next"))).seq == 6

    with caplog.at_level(logging.INFO, logger="bamboo_session.persistence"):
        asyncio.run(reopen())
    assert not list(base.rglob("*damaged*"))
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    cut = [r for r in caplog.records if "unacknowledged" in r.getMessage()]
    assert cut and all(r.levelno == logging.INFO for r in cut), caplog.text


@pytest.mark.parametrize("power_cut", [False, True], ids=["kill", "kill-and-power-cut"])
def test_a_delete_told_failed_stays_undone_after_a_kill(tmp_path: Path, power_cut: bool) -> None:
    """The WAL recorded the deletion, then the tombstone could not be made: the caller
    was told the delete failed, and the session is still there after a kill -9 that
    came before its next append (the WAL's record of the deletion is cancelled). With
    a power cut too (its log's unsynced lines lost: here, all of them), the WAL's
    records of its events count again after the cancellation, and restore them."""
    base = tmp_path / "data"
    child = killed_child("faileddelete", base)
    assert child.stdout.splitlines() == ["told failed"]
    blocker = JsonlStorageConfig(base).layout.tombstone("d")
    (blocker / "x").unlink()  # the test's obstacle, not the store's
    blocker.rmdir()
    if power_cut:
        os.truncate(base / "events" / "d.jsonl", 0)

    async def reopen() -> None:
        async with await JsonlStorage.open(JsonlStorageConfig(base)) as storage:
            meta = await storage.get_metadata("d")
            assert meta is not None, "a delete the caller was told failed took effect"
            events = await storage.read_events("d")
            assert [e.event for e in events] == [AgentEvent.token(f"acked{i}") for i in range(5)]
            assert (await storage.append_event("d", AgentEvent.token("next"))).seq == 6
            await storage.delete_session("d")  # and it can be deleted for good
        async with await JsonlStorage.open(JsonlStorageConfig(base)) as storage:
            assert await storage.get_metadata("d") is None

    asyncio.run(reopen())


@pytest.mark.parametrize("power_cut", [False, True], ids=["kill", "kill-and-power-cut"])
def test_an_append_sharing_a_commit_with_the_cancellation_is_not_a_new_session(
    tmp_path: Path, power_cut: bool
) -> None:
    """The session is back from a failed delete and another task appends to it at
    once: its append and the WAL's cancellation of the deletion share a group commit
    (a commit window holds it). Replay must not take that append's record for a new
    session's (then the earlier records stay forgotten, and with a power cut the
    acknowledged events before it are lost)."""
    base = tmp_path / "data"
    child = killed_child("faileddelete-racing", base)
    assert sorted(child.stdout.splitlines()) == ["appended during 6", "told failed"]
    blocker = JsonlStorageConfig(base).layout.tombstone("d")
    (blocker / "x").unlink()
    blocker.rmdir()
    if power_cut:
        os.truncate(base / "events" / "d.jsonl", 0)

    async def reopen() -> None:
        async with await JsonlStorage.open(JsonlStorageConfig(base)) as storage:
            assert await storage.damaged_files() == []
            events = await storage.read_events("d")
            expected = [AgentEvent.token(f"acked{i}") for i in range(5)]
            assert [e.event for e in events] == [*expected, AgentEvent.token("during")]
            assert [e.seq for e in events] == list(range(1, 7))

    asyncio.run(reopen())

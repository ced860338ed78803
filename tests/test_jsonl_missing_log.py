"""A JSONL session whose checkpoint is on disk and whose empty log is not: what a crash
between a create's two writes leaves (``lifecycle.py``: "a valid empty session"), by a
server or by a ``migrate`` into a JSONL store (r326). The next writable open makes the
empty log, so that keyed appends, pages, resume, history, delete and a rerun of migrate
work on it; a read-only open leaves it missing and reads the session as empty. A log
missing under a checkpoint that counted events is loss, and stays reported as such.

The crash states are made by hand (a create, then its log removed, as a kill between
the two writes leaves it), and ``migrate`` is killed for real, by pid, mid-copy.
"""

from __future__ import annotations

import asyncio
import logging
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest

from bamboo_session.persistence import JsonlStorage, JsonlStorageConfig, open_storage
from bamboo_session.persistence.jsonl.layout import Layout
from bamboo_session.protocol.models import AgentEvent, Message, Session
from tests.support import attach, run_server

ROOT = Path(__file__).resolve().parent.parent
MIGRATE = [sys.executable, "-m", "bamboo_session.server.migrate_cli", "--progress", "none"]


async def create_without_log(directory: Path, session: Session) -> Path:
    """The session created in the JSONL store at ``directory``, then its log removed:
    what a kill between a create's durable checkpoint and its empty log leaves."""
    async with await open_storage(f"jsonl://{directory}", cleanup_interval=None) as store:
        await store.create_session(session)
    log = Layout(directory).log(session.metadata.id)
    log.unlink()
    return log


def migrate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MIGRATE, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


async def test_a_keyed_append_pages_and_resume_on_a_session_a_crash_left_without_log(
    tmp_path: Path,
) -> None:
    log = await create_without_log(tmp_path, Session.new("cut", user_id="u"))
    async with run_server(tmp_path) as server:
        assert log.is_file() and log.stat().st_size == 0  # made, empty, by the open
        async with attach(server, "cut") as (peer, welcome):
            assert welcome["last_seq"] == 0
            token = {"type": "token", "content": "a"}
            keyed = {"type": "event", "id": 1, "key": "k", "event": token}
            assert await peer.request(keyed, "ack") == {"type": "ack", "seq": 1, "id": 1}
            retry = await peer.request({**keyed, "id": 2}, "ack")
            assert retry == {"type": "ack", "seq": 1, "id": 2, "duplicate": True}
            page = await peer.request({"type": "events", "id": 3, "after_seq": 0}, "events")
            assert [e["seq"] for e in page["events"]] == [1] and page["last_seq"] == 1
            epoch = welcome["epoch"]
        async with attach(server, "cut", last_seq=0, epoch=epoch) as (peer, welcome):
            assert welcome["resumed"] is True and welcome["replay"] == 1
            assert (await peer.recv_type("event"))["seq"] == 1
    # Acknowledged, so there after a restart, with its key.
    async with await JsonlStorage.open(JsonlStorageConfig(tmp_path)) as store:
        assert [e.seq for e in await store.read_events("cut")] == [1]
        again = await store.append_event("cut", AgentEvent.token("a"), key="k")
        assert again.seq == 1 and again.duplicate


@pytest.mark.parametrize("with_snapshot", [False, True], ids=["crash", "snapshot"])
async def test_history_and_delete_of_a_session_whose_log_a_crash_left_uncreated(
    tmp_path: Path, with_snapshot: bool
) -> None:
    config = JsonlStorageConfig(tmp_path)
    log = await create_without_log(tmp_path, Session.new("cut", user_id="u"))
    if not with_snapshot:  # else the clean close's snapshot stands for the checkpoint
        config.layout.snapshot.unlink()
    async with await JsonlStorage.open(config) as store:
        assert store.recovery is not None and store.recovery.epochs_renewed == 0
        assert store.recovery.from_snapshot == int(with_snapshot)
        assert await store.get_session_history("cut") == []
        await store.append_message("cut", Message.user("hi"), key="m")
        assert [m.content for m in await store.get_session_history("cut")] == ["hi"]
    async with await JsonlStorage.open(config) as store:
        assert [m.content for m in await store.get_session_history("cut")] == ["hi"]
        await store.delete_session("cut")
        assert await store.get_metadata("cut") is None
    assert not log.exists() and not config.layout.checkpoint("cut").exists()


async def test_a_read_only_open_reads_such_a_session_as_empty_and_writes_nothing(
    tmp_path: Path,
) -> None:
    log = await create_without_log(tmp_path, Session.new("cut", user_id="u"))
    config = JsonlStorageConfig(tmp_path, read_only=True)
    async with await JsonlStorage.open(config) as store:
        assert await store.read_events("cut") == []
        assert await store.get_session_history("cut") == []
        assert await store.last_seq("cut") == 0
    assert not log.exists()


async def test_a_log_lost_under_events_is_still_reported_as_lost(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = JsonlStorageConfig(tmp_path)
    async with await JsonlStorage.open(config) as store:
        await store.create_session(Session.new("s", user_id="u"))
        await store.append_events("s", [(AgentEvent.token(f"t{n}"), f"k{n}") for n in range(3)])
        epoch = await store.epoch("s")
    config.layout.snapshot.unlink()
    config.layout.log("s").unlink()
    with caplog.at_level(logging.WARNING):
        async with await JsonlStorage.open(config) as store:
            assert store.recovery is not None and store.recovery.epochs_renewed == 1
            assert await store.epoch("s") != epoch and await store.last_seq("s") == 0
            # A session again, for what comes next: a key of the lost history is new.
            assert (await store.append_event("s", AgentEvent.token("x"), key="k0")).seq == 1
    assert "less than were acknowledged (3); starting a new epoch" in caplog.text


async def test_a_migrate_rerun_finishes_after_a_kill_between_create_and_log(
    tmp_path: Path,
) -> None:
    source, target = tmp_path / "source", tmp_path / "target"
    async with await open_storage(f"jsonl://{source}", cleanup_interval=None) as store:
        await store.create_session(Session.new("s1", user_id="u"))
        await store.append_events("s1", [(AgentEvent.token(f"t{n}"), f"k{n}") for n in range(5)])
        meta = await store.get_metadata("s1")
    assert meta is not None
    # migrate's first step for s1 (a live, empty copy), then the kill
    empty = msgspec.structs.replace(meta, last_seq=0, message_count=0, stored_bytes=0)
    await create_without_log(target, Session(empty, []))

    rerun = migrate("--from", f"jsonl://{source}", "--to", f"jsonl://{target}", "--verify")

    assert rerun.returncode == 0, rerun.stderr
    assert "verify: all 1 sessions match" in rerun.stdout


async def test_migrate_copies_such_a_session_from_a_source_it_only_reads(tmp_path: Path) -> None:
    source, target = tmp_path / "source", tmp_path / "target"
    log = await create_without_log(source, Session.new("cut", user_id="u"))

    run = migrate("--from", f"jsonl://{source}", "--to", f"jsonl://{target}", "--verify")

    assert run.returncode == 0, run.stderr
    assert "verify: all 1 sessions match" in run.stdout
    assert not log.exists()  # the source is only read


async def make_source(url: str, sessions: int, events: int) -> None:
    async with await open_storage(url, cleanup_interval=None) as store:

        async def one(i: int) -> None:
            session_id = f"s{i:03d}"
            await store.create_session(Session.new(session_id, user_id=f"u{i % 3}"))
            await store.append_message(session_id, Message.user(f"hi {i}"), key="m")
            items = [(AgentEvent.token(f"{i}/{n}"), f"k{n}") for n in range(events)]
            await store.append_events(session_id, items)

        await asyncio.gather(*(one(i) for i in range(sessions)))


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["kill", "term"])
def test_a_migrate_into_jsonl_killed_at_any_instant_finishes_when_run_again(
    tmp_path: Path, signum: signal.Signals
) -> None:
    source, target = f"jsonl://{tmp_path / 'source'}", f"jsonl://{tmp_path / 'target'}"
    asyncio.run(make_source(source, sessions=60, events=20))
    rng = random.Random()
    sessions_dir = tmp_path / "target" / "sessions"
    for _ in range(3):  # each kill once the target holds a random number of sessions
        child = subprocess.Popen(
            [*MIGRATE, "--from", source, "--to", target],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        threshold, deadline = rng.randrange(1, 50), time.monotonic() + 60
        while child.poll() is None and time.monotonic() < deadline:
            if sessions_dir.is_dir() and len(list(sessions_dir.glob("*.json"))) >= threshold:
                break
            time.sleep(0.002)
        child.send_signal(signum)
        child.wait(30)

    rerun = migrate("--from", source, "--to", target, "--verify")

    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "verify: all 60 sessions match" in rerun.stdout

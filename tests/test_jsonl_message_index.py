"""The message index (persistence/jsonl/message_index.py): a page of N messages reads
N entries and N log lines, whatever the history's length; the file is derived, so
whatever a crash or a stray write did to it is found and rebuilt from the log."""

from __future__ import annotations

import asyncio
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest

from bamboo_session.persistence.jsonl import JsonlStorage, JsonlStorageConfig, message_index, reads
from bamboo_session.persistence.jsonl.checkpoint import Coverage
from bamboo_session.persistence.jsonl.message_index import ENTRY, HEADER_SIZE
from bamboo_session.protocol.models import AgentEvent, Message, Session
from tests.jsonl_support import crash_state, saved


async def long_history(config: JsonlStorageConfig, messages: int = 3000) -> None:
    """Session "s": messages m0.. with a token after each tenth."""
    async with await JsonlStorage.open(config) as storage:
        await storage.create_session(Session.new("s"))
        batch: list[Any] = []
        for i in range(messages):
            batch.append((AgentEvent.message(Message.user(f"m{i}")), None))
            if i % 10 == 0:
                batch.append((AgentEvent.token("t"), None))
            if len(batch) >= 500:
                await storage.append_events("s", batch)
                batch = []
        await storage.append_events("s", batch)


def spy_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the log lines each history read asks for."""
    asked: list[int] = []
    real = reads.read_spans

    def read_spans(path: str, spans: Any) -> list[bytes]:
        asked.append(len(spans))
        return real(path, spans)

    monkeypatch.setattr(reads, "read_spans", read_spans)
    return asked


async def test_a_page_reads_its_messages_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = JsonlStorageConfig(tmp_path, message_cache_bytes=0)
    await long_history(config)
    assert config.layout.message_index("s").stat().st_size == HEADER_SIZE + 3000 * ENTRY.size
    asked = spy_reads(monkeypatch)
    async with await JsonlStorage.open(config) as storage:
        page = await storage.get_history_page("s", 20, before=1500)
        assert [m.content for m in page.messages] == [f"m{i}" for i in range(1480, 1500)]
        assert (page.start, page.has_more) == (1480, True)
        newest = await storage.get_history_page("s", 5)
        assert [m.content for m in newest.messages] == [f"m{i}" for i in range(2995, 3000)]
        assert asked == [20, 5]
        assert len(await storage.get_session_history("s")) == 3000  # asked for all of it


async def test_entries_not_yet_in_the_file_come_from_memory(tmp_path: Path) -> None:
    config = JsonlStorageConfig(tmp_path).with_checkpointing(every=10_000, interval=3600)
    async with await JsonlStorage.open(config) as storage:
        await storage.create_session(Session.new("s"))
        for i in range(30):
            await storage.append_message("s", Message.user(f"m{i}"))
        assert not config.layout.message_index("s").exists()  # written at a checkpoint
        storage._messages.drop("s")  # nothing cached: the pages come from the index
        page = await storage.get_history_page("s", 3, before=10)
        assert [m.content for m in page.messages] == ["m7", "m8", "m9"]
    assert saved(config, "s").index == Coverage(30, 30, config.layout.log("s").stat().st_size)


async def test_messages_written_while_a_checkpoint_writes_the_index_are_in_it_after_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Messages appended while a checkpoint appends the index entries before them stay
    pending; the checkpoint that then covers their seqs must leave the session dirty,
    so that close writes them. (It did not: close left the index 273 entries short,
    the last batch of test_a_page_reads_its_messages_only, in a loaded suite.)"""
    config = JsonlStorageConfig(tmp_path).with_checkpointing(every=10, interval=3600)
    entered, gate = threading.Event(), threading.Event()
    real_append = message_index.append

    def held_append(*args: Any) -> Any:
        entered.set()
        gate.wait(10)
        return real_append(*args)

    monkeypatch.setattr(message_index, "append", held_append)
    storage = await JsonlStorage.open(config)
    try:
        await storage.create_session(Session.new("s"))
        for i in range(10):  # the tenth starts a checkpoint, whose index append is held
            await storage.append_message("s", Message.user(f"m{i}"))
        assert await asyncio.to_thread(entered.wait, 10)
        for i in range(10, 15):
            await storage.append_message("s", Message.user(f"m{i}"))
        monkeypatch.setattr(message_index, "append", real_append)
        gate.set()
    finally:
        gate.set()
        await storage.close()
    assert config.layout.message_index("s").stat().st_size == HEADER_SIZE + 15 * ENTRY.size


async def test_a_close_whose_index_entries_fail_still_saves_the_snapshot(tmp_path: Path) -> None:
    """Index entries are derived data: a close that cannot write them still writes every
    checkpoint and the index snapshot (a session left dirty by its pending entries
    alone is not one that "could not be checkpointed"), and the next open finds the
    messages from the log."""
    config = JsonlStorageConfig(tmp_path).with_checkpointing(every=10_000, interval=3600)
    storage = await JsonlStorage.open(config)
    try:
        await storage.create_session(Session.new("s"))
        for i in range(5):
            await storage.append_message("s", Message.user(f"m{i}"))
        config.layout.message_index("s").unlink(missing_ok=True)
        config.layout.message_index("s").mkdir()  # the entries cannot be written
    finally:
        await storage.close()
    assert (config.layout.index / "snapshot.msgpack").exists()
    config.layout.message_index("s").rmdir()
    async with await JsonlStorage.open(config) as storage:
        history = await storage.get_session_history("s")
    assert [m.content for m in history] == [f"m{i}" for i in range(5)]


@pytest.mark.parametrize("damage", ["missing", "short", "long", "other epoch", "wrong entry"])
async def test_a_damaged_index_is_rebuilt_from_the_log(tmp_path: Path, damage: str) -> None:
    config = JsonlStorageConfig(tmp_path, message_cache_bytes=0)
    await long_history(config, messages=200)
    path = config.layout.message_index("s")
    data = path.read_bytes()
    if damage == "missing":
        path.unlink()
    elif damage == "short":  # the last pages never reached the disk
        path.write_bytes(data[: HEADER_SIZE + 150 * ENTRY.size + 7])
    elif damage == "long":  # entries of a checkpoint that was lost
        path.write_bytes(data + data[-ENTRY.size :] * 3)
    elif damage == "other epoch":
        path.write_bytes(message_index.header("another session") + data[HEADER_SIZE:])
    else:  # a hole of zeros where entries should be
        hole = HEADER_SIZE + 40 * ENTRY.size
        path.write_bytes(data[:hole] + bytes(5 * ENTRY.size) + data[hole + 5 * ENTRY.size :])
    crash_state(config)
    async with await JsonlStorage.open(config) as storage:
        history = await storage.get_session_history("s")
        assert [m.content for m in history] == [f"m{i}" for i in range(200)]
        page = await storage.get_history_page("s", 4, before=44)
        assert [m.content for m in page.messages] == ["m40", "m41", "m42", "m43"]
    assert path.read_bytes() == data  # rebuilt as it was


def test_prepare_adds_what_the_log_holds_beyond_the_file(tmp_path: Path) -> None:
    log = tmp_path / "s.jsonl"
    lines = [
        b'{"seq":1,"ts":"2025-01-01T00:00:00Z","event":{"type":"message","message":'
        b'{"role":"user","content":"a","id":"m1"}}}',
        b'{"seq":2,"ts":"2025-01-01T00:00:00Z","event":{"type":"token","content":"t"}}',
        b'{"seq":3,"ts":"2025-01-01T00:00:00Z","event":{"type":"message","message":'
        b'{"role":"user","content":"b","id":"m2"}}}',
    ]
    log.write_bytes(b"".join(line + b"\n" for line in lines))
    index = tmp_path / "s.idx"
    size = log.stat().st_size
    coverage, memory = message_index.prepare(index, log, "e", Coverage(), 3, size, True)
    assert (coverage, memory) == (Coverage(2, 3, size), b"")
    first = len(lines[0]) + len(lines[1]) + 2
    assert message_index.read(index, 0, 2) == [(1, 0, len(lines[0])), (3, first, len(lines[2]))]
    # Read-only: the same entries, in memory, and no file written.
    other = tmp_path / "other.idx"
    coverage, memory = message_index.prepare(other, log, "e", Coverage(), 3, size, False)
    assert coverage == Coverage() and message_index.entries_of(memory) == [
        (1, 0, len(lines[0])),
        (3, first, len(lines[2])),
    ]
    assert not other.exists()


async def test_a_checkpoint_whose_index_lags_its_metadata_reads_back_whole(
    tmp_path: Path,
) -> None:
    """A message appended while a checkpoint writes its index entries is counted by that
    checkpoint's metadata but not by its index coverage (the next checkpoint indexes it).
    Opened from there, as a kill -9 leaves the files, the history is whole and the index
    gets the missing entry from the log."""
    config = JsonlStorageConfig(tmp_path / "live").with_checkpointing(every=10_000, interval=3600)
    crashed = JsonlStorageConfig(tmp_path / "crashed")
    expected = [f"m{i}" for i in range(12)]
    async with await JsonlStorage.open(config) as storage:
        await storage.create_session(Session.new("s"))
        for text in expected[:11]:
            await storage.append_message("s", Message.user(text))
        # Every file-work thread busy: the checkpoint's index write waits for one, while
        # the append (the log writer's own thread) goes through.
        gate = threading.Event()
        jobs = storage._jobs
        blockers = [asyncio.create_task(jobs.run(gate.wait, 10)) for _ in range(jobs.threads)]
        for _ in range(1000):
            if jobs.unfinished == jobs.threads:
                break
            await asyncio.sleep(0.001)
        writing = asyncio.create_task(storage._checkpoints.write("s"))
        lock = storage._records["s"].checkpoint_lock()
        for _ in range(1000):  # taken: the entries are counted, their write waits
            if lock.locked():
                break
            await asyncio.sleep(0.001)
        await storage.append_message("s", Message.user(expected[11]))
        gate.set()
        await asyncio.gather(writing, *blockers)
        written = saved(config, "s")
        assert (written.metadata.last_seq, written.metadata.message_count) == (12, 12)
        assert written.index.count == 11 and written.index.seq == 11
        shutil.copytree(config.base_path, crashed.base_path)
    index = crashed.layout.message_index("s")
    assert index.stat().st_size == HEADER_SIZE + 11 * ENTRY.size
    async with await JsonlStorage.open(crashed.with_caches(message_bytes=0)) as storage:
        page = await storage.get_history_page("s", 5)
        assert [m.content for m in page.messages] == expected[7:]
        assert [m.content for m in await storage.get_session_history("s")] == expected
        assert await storage.last_seq("s") == 12
    assert [seq for seq, _, _ in message_index.read(index, 0, 12)] == list(range(1, 13))

"""Stores written by the previous format (commit 620cb47: checkpoints holding every
message) open and read back the same sessions; the first writable open converts them
(tests/fixtures/jsonl-620cb47: written by that code, see its generate.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import msgspec
import pytest

from bamboo_session.persistence import JsonlStorage, JsonlStorageConfig, SessionFilter
from bamboo_session.persistence.jsonl import wal
from bamboo_session.persistence.jsonl.layout import Layout
from bamboo_session.protocol.models import AgentEvent, Message, SessionState
from tests.jsonl_support import saved

FIXTURE = Path(__file__).parent / "fixtures" / "jsonl-620cb47"
EXPECTED: dict[str, dict[str, Any]] = json.loads((FIXTURE / "expected.json").read_text())


def copy_of(store: str, tmp_path: Path) -> Path:
    base = tmp_path / store
    shutil.copytree(FIXTURE / store, base)
    return base


def files_of(base: Path) -> dict[str, bytes]:
    return {str(p.relative_to(base)): p.read_bytes() for p in base.rglob("*") if p.is_file()}


async def read_back(storage: JsonlStorage) -> dict[str, Any]:
    found = {}
    for meta in (await storage.list_sessions(SessionFilter(limit=1000))).sessions:
        history = await storage.get_session_history(meta.id)
        events = await storage.read_events(meta.id)
        found[meta.id] = {
            "metadata": msgspec.to_builtins(meta),
            "history": msgspec.to_builtins(history),
            "events": [json.loads(msgspec.json.encode(_line(e))) for e in events],
        }
    return found


def _line(event: Any) -> dict[str, Any]:
    line = {"seq": event.seq, "ts": event.ts, "event": event.event_json}
    if event.key is not None:
        line["key"] = event.key
    return line


def same_sessions(found: dict[str, Any], expected: dict[str, Any]) -> None:
    assert sorted(found) == sorted(expected)
    for session_id, old in expected.items():
        new = found[session_id]
        assert new["history"] == old["history"], session_id
        assert new["events"] == old["events"], session_id
        for field in ("user_id", "title", "state", "epoch", "last_seq", "message_count", "ttl"):
            assert new["metadata"][field] == old["metadata"][field], (session_id, field)
        assert new["metadata"]["extra"] == old["metadata"]["extra"]
        assert new["metadata"]["created_at"] == old["metadata"]["created_at"]


@pytest.mark.parametrize("store", ["clean", "crashed"])
async def test_an_old_store_reads_back_the_same_sessions(store: str, tmp_path: Path) -> None:
    config = JsonlStorageConfig(copy_of(store, tmp_path))
    async with await JsonlStorage.open(config) as storage:
        assert storage.recovery is not None and storage.recovery.converted == 5
        same_sessions(await read_back(storage), EXPECTED[store])
        page = await storage.get_history_page("initial", 2)
        assert [m.content for m in page.messages] == ["hello", "hi there"] and page.start == 1
        page = await storage.get_history_page("initial", 5, before=1)
        assert [m.content for m in page.messages] == ["be brief"] and not page.has_more
        # A byte budget over the preamble's messages: the newest first, at least one.
        page = await storage.get_history_page("initial", 5, before=2, max_bytes=0)
        assert [m.content for m in page.messages] == ["hello"] and page.start == 1
        page = await storage.get_history_page("initial", 5, max_bytes=1 << 20)
        assert [m.content for m in page.messages] == ["be brief", "hello", "hi there"]
        # Read forwards: the preamble's first, the log's once those fit (at least one).
        preamble = (await storage.get_session_history("initial"))[:2]
        both = sum(len(msgspec.json.encode(message)) for message in preamble)
        for start, budget, contents in [
            (0, 0, ["be brief"]),
            (0, both, ["be brief", "hello"]),
            (0, None, ["be brief", "hello", "hi there"]),
            (1, 1 << 20, ["hello", "hi there"]),
            (2, 0, ["hi there"]),
        ]:
            page = await storage.get_history_from("initial", start, 5, max_bytes=budget)
            assert [m.content for m in page.messages] == contents and page.start == start
    # Converted: checkpoints of the new format, the initial messages in a preamble.
    assert saved(config, "initial").preamble == 2
    assert config.layout.preamble("initial").exists()
    assert not config.layout.preamble("plain").exists()
    async with await JsonlStorage.open(config) as storage:
        assert storage.recovery is not None and storage.recovery.converted == 0
        assert storage.recovery.from_snapshot == 5
        same_sessions(await read_back(storage), EXPECTED[store])


async def test_a_converted_store_goes_on_as_before(tmp_path: Path) -> None:
    config = JsonlStorageConfig(copy_of("crashed", tmp_path))
    async with await JsonlStorage.open(config) as storage:
        # Keys stay known across the conversion: the window is read from the log.
        again = await storage.append_message("plain", Message.user("late 0, again"), "late-0")
        assert again.duplicate and again.seq == 10
        assert (await storage.append_message("initial", Message.user("more"))).seq == 3
        history = [m.content for m in await storage.get_session_history("initial")]
        assert history == ["be brief", "hello", "hi there", "more"]
        meta = await storage.get_metadata("closed")
        assert meta is not None and meta.state == SessionState.CLOSED
        await storage.append_event("idle.1", AgentEvent.token("x"))
    async with await JsonlStorage.open(config) as storage:
        history = [m.content for m in await storage.get_session_history("initial")]
        assert history == ["be brief", "hello", "hi there", "more"]
        assert await storage.last_seq("idle.1") == 5


@pytest.mark.parametrize("store", ["clean", "crashed"])
async def test_a_read_only_open_converts_nothing(store: str, tmp_path: Path) -> None:
    base = copy_of(store, tmp_path)
    before = files_of(base)
    storage = await JsonlStorage.open(JsonlStorageConfig(base, read_only=True))
    try:
        found = await read_back(storage)
    finally:
        await storage.close()
    assert files_of(base) == before
    expected = EXPECTED[store]
    same_sessions(found, expected)


async def test_an_old_session_whose_acknowledged_seqs_are_lost_starts_a_new_epoch(
    tmp_path: Path,
) -> None:
    """The WAL acknowledged seqs of an old-format session that neither it nor the log
    can restore: the conversion starts a new epoch, as for a session of today's format."""
    config = JsonlStorageConfig(copy_of("clean", tmp_path))
    log = config.layout.log("plain")
    lines = log.read_bytes().splitlines(keepends=True)
    last = json.loads(lines[-1])
    beyond = dict(last, seq=last["seq"] + 2)  # seq + 1 lost with the WAL record before it
    config.layout.wal.mkdir(exist_ok=True)
    line = json.dumps(beyond, separators=(",", ":")).encode() + b"\n"
    config.layout.segment(1).write_bytes(wal.encode_lines("plain", beyond["seq"], 10**6, line))
    async with await JsonlStorage.open(config) as storage:
        meta = await storage.get_metadata("plain")
        assert meta is not None and meta.last_seq == last["seq"]
        assert meta.epoch != EXPECTED["clean"]["plain"]["metadata"]["epoch"]


@pytest.mark.parametrize("store", ["clean", "crashed"])
async def test_stored_bytes_are_each_log_s_size_once_open(store: str, tmp_path: Path) -> None:
    """The JSONL store's stored_bytes (what --max-session-bytes bounds) is its log's
    size: right for a store written before the count existed, and after a crash (its
    torn tail cut, the WAL's events replayed), with nothing to migrate."""
    base = copy_of(store, tmp_path)
    storage = await JsonlStorage.open(JsonlStorageConfig(base, cleanup_interval=None))
    try:
        for meta in (await storage.list_sessions(SessionFilter(limit=1000))).sessions:
            log = Layout(base).log(meta.id)
            size = log.stat().st_size if log.exists() else 0
            assert meta.stored_bytes == size, meta.id
        await storage.append_event("plain", AgentEvent.token("one more"))
        meta = await storage.get_metadata("plain")
        assert meta is not None
    finally:
        await storage.close()
    assert meta.stored_bytes == (base / "events" / "plain.jsonl").stat().st_size

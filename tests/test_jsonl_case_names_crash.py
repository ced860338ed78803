"""A format-1 JSONL store's move to format 2's case-folded names (persistence/jsonl/
case_names.py) killed at every one of its renames, on a store holding every kind of
file a session has (checkpoint, log, message index, a delete cut short, a replacement
of an expired session, a damaged file kept aside, a temporary file, WAL segments
holding acknowledged lines the logs lack), and names an operator or a peer may leave
in the directories that look like a stem and are not: the next open reads exactly
what an open without the kill reads, every acknowledged event included, and nothing
is renamed twice, kept aside or removed that it should keep. Also: any subset of
the renames undone by a power cut; the renaming said in the log before it starts, and
a real server on a format-1 store; the record's leftover of a kill; delete, expiry and
replace of ids differing only in case; format-1 files copied into a format-2 store."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any

import msgspec
import pytest

from bamboo_session.persistence import JsonlStorage, JsonlStorageConfig
from bamboo_session.persistence.jsonl.layout import Layout, format_2_name
from bamboo_session.protocol.models import AgentEvent, Message, Session
from tests import kills
from tests.case_names_child import CASE_IDS
from tests.forks import ForkedChild
from tests.server_process import ServerProcess, assert_no_tracebacks
from tests.test_jsonl_case_names import (
    CHILD,
    assert_case_safe,
    check_filled,
    fill,
    read,
    to_format_1,
)

WITH_CAPITALS = [i for i in CASE_IDS if i != i.lower()]
# Files a peer or an operator may leave that look like a session's stem and are none:
# masks of no id (0, leading zeros, past the id's length, on a digit), an upper-case
# stem, an empty mask, two tildes. Never read as a session, never removed or renamed.
NOT_STEMS = (
    "chat~0.json",
    "chat~01.json",
    "chat~1f.json",
    "chat~10.preamble",
    "c1at~2.json",
    "Chat~1.json",
    "chat~.jsonl",
    "chat~1~1.idx",
)


async def build(base: Path) -> dict[str, set[str]]:
    """The store, in format 1: CASE_IDS with tokens and messages, then a child's
    appends killed with -9 and the logs cut back to what they held before it (a power
    loss: only the WAL has those lines), then files of a delete cut short, of a
    replacement under way, kept aside, temporary. The child's acknowledged tags."""
    async with await JsonlStorage.open(JsonlStorageConfig(base)) as storage:
        for session_id in [*CASE_IDS, "Gone", "Old", "ChAt"]:
            await storage.create_session(Session.new(session_id, user_id="u", title=session_id))
            await storage.append_event(session_id, AgentEvent.token(f"{session_id}/0"))
            await storage.append_message(session_id, Message.user(f"{session_id}/said"))
    layout = Layout(base)
    sizes = {i: layout.log(i).stat().st_size for i in CASE_IDS}
    argv = [str(CHILD), "write", str(base), "5"]  # seed 5: a checkpoint every 256 appends
    acked: dict[str, set[str]] = {i: set() for i in CASE_IDS}
    for line in kills.run_and_kill_after(argv, random.Random(5), "ack", 30):
        _ack, session_id, _seq, tag = line.split(" ")
        acked[session_id].add(tag)
    assert sum(map(len, acked.values())) >= 30 and list(layout.segments())
    for session_id, size in sizes.items():  # the appends' lines only in the WAL now
        with layout.log(session_id).open("r+b") as log_file:
            log_file.truncate(size)
    # A delete cut short after its checkpoint became the tombstone.
    layout.checkpoint("Gone").rename(layout.tombstone("Gone"))
    # A create replacing an expired Old: its checkpoint written, the old files still there.
    other = base.parent / "other"
    async with await JsonlStorage.open(JsonlStorageConfig(other)) as storage:
        await storage.create_session(Session.new("Old", user_id="u", title="new Old"))
    shutil.copy(Layout(other).checkpoint("Old"), layout.replacement("Old"))
    # ChAt's checkpoint and log gone: its index is a stray.
    layout.checkpoint("ChAt").unlink()
    layout.log("ChAt").unlink()
    layout.damaged(layout.log("Chat"), "123-456").write_bytes(b"kept for the operator")
    layout.checkpoint("Chat").with_name(layout.checkpoint_name("Chat") + ".0a1b2c3d.tmp").touch()
    to_format_1(base)
    for name in NOT_STEMS:
        directory = layout.events if name.endswith((".jsonl", ".idx")) else layout.sessions
        (directory / name).write_bytes(name.encode())
    (layout.sessions / "CHAT.json.link").symlink_to("CHAT.json")
    return acked


async def dump(base: Path) -> dict[str, Any]:
    """What a reader sees of every session, the store opened for writing."""
    async with await JsonlStorage.open(JsonlStorageConfig(base)) as storage:
        seen: dict[str, Any] = {}
        for meta in sorted(await storage.list_user_sessions("u"), key=lambda m: m.id):
            events = await storage.read_events(meta.id)
            history = await storage.get_session_history(meta.id)
            seen[meta.id] = {
                "meta": [
                    meta.title,
                    meta.epoch,
                    meta.last_seq,
                    meta.message_count,
                    meta.stored_bytes,
                ],
                "events": [(e.seq, str(e.ts), e.key, msgspec.json.encode(e.event)) for e in events],
                "history": [m.content for m in history],
            }
        assert storage.store_format == "jsonl/2"
    return seen


def others(base: Path) -> dict[str, bytes]:
    """The files no session owns (the not-stems, the kept-aside one, the link)."""
    found = {}
    for directory in (base / "sessions", base / "events"):
        for path in directory.iterdir():
            if path.name in NOT_STEMS or ".damaged-" in path.name or ".link" in path.name:
                found[path.name] = path.read_bytes() if not path.is_symlink() else b"link"
    return found


async def format_1_store(root: Path) -> tuple[Path, Any, Any]:
    """The format-1 store, what a plain open of a copy of it reads, its other files."""
    base = root / "data"
    acked = await build(base)
    reference = root / "reference"
    shutil.copytree(base, reference, symlinks=True)
    seen = await dump(reference)
    for session_id, tags in acked.items():
        tokens = {json.loads(e[3]).get("content") for e in seen[session_id]["events"]}
        assert tags <= tokens, session_id
    assert "Gone" not in seen and seen["Old"]["meta"][0] == "new Old"
    assert seen["Old"]["meta"][2] == 0
    return base, seen, others(reference)


def renames_of(base: Path) -> int:
    names = [p.name for d in (base / "sessions", base / "events") for p in d.iterdir()]
    return sum(n != n.lower() and n not in NOT_STEMS and not n.endswith(".link") for n in names)


async def test_every_rename_index_killed(tmp_path: Path) -> None:
    source, seen, kept = await format_1_store(tmp_path)
    total = renames_of(source)
    assert total > 20, total
    for renames in range(total + 1):
        base = tmp_path / f"k{renames}"
        shutil.copytree(source, base, symlinks=True)
        child = ForkedChild([str(CHILD), "migrate", str(base), str(renames)])
        out, err = child.communicate(timeout=60)
        if renames < total:  # killed before its renames-th rename: the move unfinished
            assert child.returncode == -9, (renames, out, err.decode())
            record = json.loads((base / "FORMAT").read_text())
            assert record == {"format": 2, "renaming": True}, renames
        else:
            assert out == b"opened\n", (child.returncode, err.decode())
        assert await dump(base) == seen, renames
        assert json.loads((base / "FORMAT").read_text()) == {"format": 2}
        assert others(base) == kept, renames
        assert [n for n in others(base) if ".damaged-" in n] == ["chat~1.jsonl.damaged-123-456"]
        Layout(base).snapshot.unlink()  # from every file, not the snapshot the dump left
        assert await dump(base) == seen, renames
        shutil.rmtree(base)


async def test_a_record_write_killed_after_the_renames_leaves_no_leftover(tmp_path: Path) -> None:
    """A kill in the write of the last record (``{"format": 2}``) leaves its temporary
    file; the next open, which writes the record again, removes it."""
    base = tmp_path / "data"
    async with await JsonlStorage.open(JsonlStorageConfig(base)) as storage:
        await storage.create_session(Session.new("Chat", user_id="u", title="Chat"))
    (base / "FORMAT").write_text('{"format": 2, "renaming": true}\n')
    (base / "FORMAT.0badc0de.tmp").write_text('{"format": 2}\n')  # killed before its rename
    async with await JsonlStorage.open(JsonlStorageConfig(base)) as storage:
        assert await storage.get_metadata("Chat") is not None
    assert sorted(p.name for p in base.iterdir() if p.is_file()) == ["CLOCK", "FORMAT", "LOCK"]
    assert json.loads((base / "FORMAT").read_text()) == {"format": 2}


async def test_the_renaming_is_said_before_it_starts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a large store the renames take seconds before the server listens (20,000
    sessions: bench/RESULTS.md): the log says what is happening first, not only after."""
    base = tmp_path / "data"
    async with await JsonlStorage.open(JsonlStorageConfig(base)) as storage:
        for session_id in WITH_CAPITALS:
            await storage.create_session(Session.new(session_id, user_id="u"))
    to_format_1(base)
    said_before: list[list[str]] = []
    rename = os.rename

    def noting_rename(source: Any, target: Any) -> None:
        said_before.append([r.getMessage() for r in caplog.records])
        rename(source, target)

    monkeypatch.setattr(os, "rename", noting_rename)
    with caplog.at_level(logging.INFO, logger="bamboo_session.persistence.jsonl"):
        async with await JsonlStorage.open(JsonlStorageConfig(base)):
            pass
    assert said_before
    told = [m for m in said_before[0] if "renaming" in m and "format 2" in m]
    assert len(told) == 1 and f"{2 * len(WITH_CAPITALS)} files" in told[0], said_before[0]


async def test_a_server_on_a_format_1_store_says_it_renames_then_serves_it(
    tmp_path: Path,
) -> None:
    """``serve`` on a store an older version left: the log says the renaming before
    it starts, the server listens once it is done, and every session reads back over
    HTTP with its own events."""
    data = tmp_path / "data"
    await fill(data)
    renamed = to_format_1(data)
    server = ServerProcess(data, tmp_path / "server.log")
    await server.start_in_loop()
    try:
        for session_id in CASE_IDS:
            path = f"{session_id}/events?after_seq=0"
            log = await asyncio.to_thread(read, server, path)
            tokens = [r["event"].get("content") for r in log["events"]]
            assert tokens[:2] == [f"{session_id}/0", f"{session_id}/1"], session_id
    finally:
        assert server.stop() == 0
    said = [str(r.get("event", "")) for r in server.log_records()]
    starts = [n for n, line in enumerate(said) if f"renaming {renamed} files" in line]
    ends = [n for n, line in enumerate(said) if f"{renamed} files renamed" in line]
    listening = [n for n, line in enumerate(said) if line.startswith("listening on")]
    assert len(starts) == 1 and starts[0] < ends[0] < listening[0], said
    assert_no_tracebacks(server.log_records())
    assert_case_safe(data)


async def test_delete_expiry_and_replace_of_ids_differing_only_in_case(tmp_path: Path) -> None:
    """Each takes its own session's files and no other's: ``Chat`` deleted, ``CHAT``
    expired and swept, ``cHaT`` replaced by a create once expired; ``chat`` keeps
    everything, across a restart (which reads the directories back)."""
    base, layout = tmp_path / "data", Layout(tmp_path / "data")
    config = JsonlStorageConfig(base, cleanup_interval=None)
    async with await JsonlStorage.open(config) as storage:
        for session_id in ("Chat", "chat", "CHAT", "cHaT"):
            ttl = 1 if session_id in ("CHAT", "cHaT") else None
            await storage.create_session(Session.new(session_id, user_id="u", ttl=ttl))
            await storage.append_message(session_id, Message.user(f"{session_id}/said"))
        await storage.delete_session("Chat")
        await asyncio.sleep(1.5)
        new = Session.new("cHaT", user_id="u", title="new")
        await storage.create_session(new, replace_expired=True)
        assert await storage.cleanup_expired_sessions() == 1
    kept = {"chat": 3, "cHaT": 2, "Chat": 0, "CHAT": 0}  # checkpoint, log, index
    for session_id, count in kept.items():
        files = [layout.checkpoint(session_id), *layout.session_files(session_id)]
        assert sum(path.exists() for path in files) == count, session_id
    async with await JsonlStorage.open(config) as storage:
        assert sorted(m.id for m in await storage.list_user_sessions("u")) == ["cHaT", "chat"]
        history = await storage.get_session_history("chat")
        assert [m.content for m in history] == ["chat/said"]
        replaced = await storage.get_metadata("cHaT")
        assert replaced is not None and replaced.title == "new" and replaced.last_seq == 0
    assert_case_safe(base)


async def test_files_of_format_1_copied_into_a_format_2_store_are_named_in_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A session restored from a backup taken before the upgrade (its files under
    format 1's names) is not read, and each of its files is named in a warning with
    the name that has it read; renamed so, the session is back whole."""
    backup, base = tmp_path / "backup", tmp_path / "data"
    async with await JsonlStorage.open(JsonlStorageConfig(backup)) as storage:
        await storage.create_session(Session.new("Old", user_id="u", title="restored"))
        await storage.append_message("Old", Message.user("from the backup"))
    to_format_1(backup)
    async with await JsonlStorage.open(JsonlStorageConfig(base)) as storage:
        await storage.create_session(Session.new("chat", user_id="u"))
    for name in ("sessions/Old.json", "events/Old.jsonl", "events/Old.idx"):
        shutil.copy(backup / name, base / name)
    with caplog.at_level(logging.WARNING):
        async with await JsonlStorage.open(JsonlStorageConfig(base)) as storage:
            assert await storage.get_metadata("Old") is None
    said = " ".join(r.getMessage() for r in caplog.records)
    for old, new in (("Old.json", "old~1.json"), ("Old.jsonl", "old~1.jsonl")):
        assert f"{old}: a name of store format 1" in said and f"names it {new}" in said, said
    for directory in ("sessions", "events"):
        for path in (base / directory).glob("Old.*"):
            path.rename(path.with_name("old~1" + path.name[3:]))
    async with await JsonlStorage.open(JsonlStorageConfig(base)) as storage:
        history = await storage.get_session_history("Old")
        assert [m.content for m in history] == ["from the backup"]


@pytest.mark.parametrize("seed", range(4))
async def test_any_subset_of_renames_lost_to_a_power_cut_is_finished(
    tmp_path: Path, seed: int
) -> None:
    """A power cut can undo renames not yet synced, not only the last ones: any subset
    of the files under their new names, the rest under their old ones, is finished by
    the next open, which still takes the index snapshot a clean close left (the
    renames keep each file's inode, size and mtime)."""
    base = tmp_path / "data"
    await fill(base)
    to_format_1(base)
    layout, rng = Layout(base), random.Random(seed)
    for directory in (layout.sessions, layout.events):
        for path in directory.iterdir():
            new = format_2_name(path.name)
            if new is not None and rng.random() < 0.5:
                path.rename(directory / new)
    (base / "FORMAT").write_text('{"format": 2, "renaming": true}\n')
    async with await JsonlStorage.open(JsonlStorageConfig(base)) as storage:
        assert storage.recovery.from_snapshot == len(CASE_IDS)
        await check_filled(storage)
    assert json.loads((base / "FORMAT").read_text()) == {"format": 2}
    assert_case_safe(base)
    assert layout.damaged_files() == []

"""Session ids differing only in case keep their own files on any file system (store
format 2, persistence/jsonl/layout.py): every name in the store's session and event
directories is lower case and none is another's once folded, which is what a
case-insensitive file system (macOS's default, SMB shares) needs, and which is asserted
here on the file system the tests run on. Format 1 (files named by the ids themselves)
is renamed at the first writable open, a kill -9 at any rename is finished by the next
open, and a read-only open of a format-1 store reads it as it is, changing nothing.

No case-insensitive file system is mounted here: tmpfs casefolding needs a kernel with
CONFIG_UNICODE, vfat is not built in, and no FUSE one (ciopfs) is installed."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import string
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from bamboo_session.persistence import JsonlStorage, JsonlStorageConfig, StorageError
from bamboo_session.persistence.jsonl.layout import (
    REPLACEMENT_SUFFIX,
    TMP_SUFFIX,
    Layout,
    file_stem,
    id_of_stem,
)
from bamboo_session.protocol.models import AgentEvent, Message, MessageEvent, Session
from tests import kills
from tests.case_names_child import CASE_IDS
from tests.disk_full_support import mounted_tmpfs
from tests.forks import ForkedChild
from tests.server_process import ServerProcess, assert_no_tracebacks
from tests.test_store_format import ls
from tests.test_store_format_faults import fill_disk

CHILD = Path(__file__).with_name("case_names_child.py")
NAME_MAX = 255
ID_ALPHABET = string.ascii_letters + string.digits + "_.-"


def assert_case_safe(base: Path) -> None:
    """No two names in a directory of sessions' files are one on a case-insensitive
    file system: every one is lower case (so none equals another once folded)."""
    for directory in (base / "sessions", base / "events"):
        names = [path.name for path in directory.iterdir()]
        assert [n for n in names if n != n.lower()] == [], directory
        assert len({n.lower() for n in names}) == len(names)


def tree_digest(base: Path) -> dict[str, str]:
    return {
        str(p.relative_to(base)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(base.rglob("*"))
        if p.is_file() and p.name != "LOCK"
    }


def to_format_1(base: Path) -> int:
    """The store as a version of format 1 wrote it: each file named by its session's
    id (the only difference between the formats). The files renamed."""
    renamed = 0
    for directory in (base / "sessions", base / "events"):
        for path in directory.iterdir():
            if "~" not in path.name:
                continue
            end = path.name.index(".", path.name.index("~"))
            session_id = id_of_stem(path.name[:end])
            assert session_id is not None, path
            path.rename(directory / (session_id + path.name[end:]))
            renamed += 1
    (base / "FORMAT").write_text('{"format": 1}\n')
    return renamed


async def fill(base: Path) -> None:
    """Each of CASE_IDS with its title, two tokens and a message, all its own."""
    async with await JsonlStorage.open(JsonlStorageConfig(base)) as storage:
        for session_id in CASE_IDS:
            await storage.create_session(Session.new(session_id, user_id="u", title=session_id))
            for n in range(2):
                await storage.append_event(session_id, AgentEvent.token(f"{session_id}/{n}"))
            await storage.append_message(session_id, Message.user(f"{session_id}/said"))


async def check_filled(storage: JsonlStorage) -> None:
    listed = await storage.list_user_sessions("u")
    for session_id in CASE_IDS:
        metadata = await storage.get_metadata(session_id)
        assert metadata is not None and metadata.title == session_id, session_id
        events = await storage.read_events(session_id)
        tokens = [e.event.content for e in events if not isinstance(e.event, MessageEvent)]
        assert tokens == [f"{session_id}/0", f"{session_id}/1"], (session_id, tokens)
        history = await storage.get_session_history(session_id)
        assert [m.content for m in history] == [f"{session_id}/said"]
    assert sorted(m.id for m in listed) == sorted(CASE_IDS)


def test_stems_read_back_fold_apart_and_fit_a_file_name() -> None:
    rng = random.Random(440)
    ids = [*CASE_IDS, "123", "_.-", "x.json", "A"]
    ids += ["".join(rng.choices(ID_ALPHABET, k=rng.randint(1, 128))) for _ in range(2000)]
    stems = {file_stem(i): i for i in ids}
    assert len(stems) == len(set(ids))  # no two ids share a stem, even folded
    for stem, session_id in stems.items():
        assert stem == stem.lower() and id_of_stem(stem) == session_id
        assert (stem == session_id) == (session_id == session_id.lower())
    longest = max(len(file_stem(i)) for i in ("A" * 128, "Ab" * 64, "a" * 127 + "A"))
    tails = (REPLACEMENT_SUFFIX + ".0123abcd" + TMP_SUFFIX, ".jsonl.damaged-4194304-" + "9" * 20)
    assert all(longest + len(tail) <= NAME_MAX for tail in tails)
    for never_made in ("Chat", "chat~01", "chat~0", "chat~10", "c1at~2", "chat~1~1", "chat~"):
        assert id_of_stem(never_made) is None, never_made


async def test_ids_differing_only_in_case_keep_their_own_files(tmp_path: Path) -> None:
    base = tmp_path / "data"
    await fill(base)
    assert_case_safe(base)
    for fast_start in (True, False):  # from the snapshot, and from every file
        if not fast_start:
            Layout(base).snapshot.unlink()
        async with await JsonlStorage.open(JsonlStorageConfig(base)) as storage:
            await check_filled(storage)
        assert_case_safe(base)


async def test_ids_differing_only_in_case_after_kill_9(tmp_path: Path) -> None:
    base = tmp_path / "data"
    acked: dict[str, set[str]] = {i: set() for i in CASE_IDS}

    def run_round(seed: int, acks: int) -> list[str]:
        argv = [str(CHILD), "write", str(base), str(seed)]
        return kills.run_and_kill(argv, random.Random(seed), late=0.3, acks=acks)

    def check(lines: list[str]) -> None:
        for line in lines:
            _ack, session_id, _seq, tag = line.split(" ")
            acked[session_id].add(tag)

    total = kills.kill_rounds(run_round, check, rounds=3, enough=40)
    assert total >= 40
    assert_case_safe(base)
    async with await JsonlStorage.open(JsonlStorageConfig(base)) as storage:
        for session_id, tags in acked.items():
            found = [e.event.content for e in await storage.read_events(session_id)]
            assert all(tag.startswith(session_id + "/") for tag in found), session_id
            assert tags <= set(found), session_id
    assert_case_safe(base)


async def test_a_format_1_store_is_read_as_it_is_then_renamed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    base = tmp_path / "data"
    await fill(base)
    assert to_format_1(base) > 0
    before = tree_digest(base)
    reader = await JsonlStorage.open(JsonlStorageConfig(base, read_only=True))
    assert reader.store_format == "jsonl/1"
    await check_filled(reader)
    await reader.close()
    listed = await asyncio.to_thread(ls, f"jsonl://{base}")
    assert listed.returncode == 0 and all(i in listed.stdout for i in CASE_IDS), listed
    assert tree_digest(base) == before  # nothing renamed, nothing written
    with caplog.at_level(logging.WARNING):
        async with await JsonlStorage.open(JsonlStorageConfig(base)) as storage:
            assert storage.store_format == "jsonl/2"
            await check_filled(storage)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert json.loads((base / "FORMAT").read_text()) == {"format": 2}
    assert_case_safe(base)
    async with await JsonlStorage.open(JsonlStorageConfig(base)) as storage:
        await check_filled(storage)


async def test_a_format_1_store_on_a_full_disk_opens_by_its_old_names(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Its record cannot be written: it opens as format 1, as before the upgrade,
    renamed by the first open with room."""
    with mounted_tmpfs(tmp_path / "disk", "2m") as mount:
        base = mount / "data"
        await fill(base)
        to_format_1(base)
        await asyncio.to_thread(fill_disk, mount)
        with caplog.at_level(logging.WARNING):
            storage = await JsonlStorage.open(JsonlStorageConfig(base))
        assert storage.store_format == "jsonl/1"
        await check_filled(storage)
        await storage.close()
        assert [r for r in caplog.records if "could not be written" in r.getMessage()]
        assert (base / "sessions" / "Chat.json").exists()
        assert json.loads((base / "FORMAT").read_text()) == {"format": 1}
        (mount / "filler").unlink()
        async with await JsonlStorage.open(JsonlStorageConfig(base)) as storage:
            assert storage.store_format == "jsonl/2"
            await check_filled(storage)
        assert_case_safe(base)


@pytest.mark.parametrize("renames", [0, 1, 5, 17])
async def test_a_renaming_killed_midway_is_finished_by_the_next_open(
    tmp_path: Path, renames: int
) -> None:
    base = tmp_path / "data"
    await fill(base)
    assert to_format_1(base) > 17
    child = ForkedChild([str(CHILD), "migrate", str(base), str(renames)])
    out, err = child.communicate(timeout=60)
    assert child.returncode == -9, (out, err.decode())
    assert json.loads((base / "FORMAT").read_text()) == {"format": 2, "renaming": True}
    before = tree_digest(base)
    with pytest.raises(StorageError, match="renaming of the store's files to format 2 was cut"):
        await JsonlStorage.open(JsonlStorageConfig(base, read_only=True))
    assert tree_digest(base) == before
    async with await JsonlStorage.open(JsonlStorageConfig(base)) as storage:
        await check_filled(storage)
    assert json.loads((base / "FORMAT").read_text()) == {"format": 2}
    assert_case_safe(base)


async def test_a_file_under_both_names_is_kept_aside_not_overwritten(tmp_path: Path) -> None:
    base = tmp_path / "data"
    await fill(base)
    layout = Layout(base)
    new = layout.checkpoint("Chat")
    old = new.with_name("Chat.json")
    old.write_bytes(b"another version's checkpoint")
    (base / "FORMAT").write_text('{"format": 2, "renaming": true}\n')
    async with await JsonlStorage.open(JsonlStorageConfig(base)) as storage:
        await check_filled(storage)
        assert [p.read_bytes() for p in layout.damaged_files()] == [b"another version's checkpoint"]
    assert_case_safe(base)


def read(server: ServerProcess, path: str) -> dict[str, Any]:
    url = f"http://127.0.0.1:{server.port}/api/v1/sessions/{path}"
    with urllib.request.urlopen(url, timeout=30) as answer:
        found: dict[str, Any] = json.loads(answer.read())
    return found


async def test_a_server_keeps_chat_and_chat_apart_across_a_restart(tmp_path: Path) -> None:
    """Through the wire: ``Chat`` and ``chat`` each created by a peer, written to,
    and read back over HTTP after a restart, each with only its own events."""
    data = tmp_path / "data"
    server = ServerProcess(data, tmp_path / "first.log")
    await server.start_in_loop()
    try:
        for session_id in ("Chat", "chat", "CHAT"):
            async with connect(server.url(session_id), open_timeout=30) as ws:
                await ws.send(json.dumps({"type": "hello", "create": True}))
                assert json.loads(await asyncio.wait_for(ws.recv(), 30))["type"] == "welcome"
                event = {"type": "token", "content": f"only {session_id}"}
                await ws.send(json.dumps({"type": "event", "id": 1, "event": event}))
                while (answer := json.loads(await asyncio.wait_for(ws.recv(), 30)))[
                    "type"
                ] != "ack":
                    assert answer["type"] != "error", answer
    finally:
        assert server.stop() == 0
    assert_case_safe(data)
    checker = ServerProcess(data, tmp_path / "second.log")
    await checker.start_in_loop()
    try:
        for session_id in ("Chat", "chat", "CHAT"):
            log = await asyncio.to_thread(read, checker, f"{session_id}/events?after_seq=0")
            assert [r["event"]["content"] for r in log["events"]] == [f"only {session_id}"]
    finally:
        assert checker.stop() == 0
    assert_no_tracebacks(checker.log_records())
    assert_no_tracebacks(server.log_records())

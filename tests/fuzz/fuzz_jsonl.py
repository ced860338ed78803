"""atheris harness: the JSONL store's readers of a damaged disk (persistence/jsonl/).

A template store holds one session ``s`` (messages, keyed events) closed cleanly; each
input replaces one of its files with fuzzed bytes (the checkpoint, the event log, the
message index, the index snapshot, or a WAL segment left by a crash) and opens a
store over the copy, then reads and appends to ``s`` and closes. What a damaged file
may cause is a damage report (the file kept aside, the session cut or gone): never an
exception out of ``open``, a read, an append or ``close`` other than the session being
missing (``SessionNotFound``), never a read that returns what ``s`` never held, and
never a task of the store left running once it is closed.

What is fuzzed is the reading and recovery of a damaged file, not the medium: the
stores live in memory (``/dev/shm``, where the host has it), one event loop (uvloop,
the server's) serves every input, and a store opens at ``durability=os``, but for one
input in eight (by its CRC-32): at ``fsync``, the default, whose appends go through the
WAL and the sync helper. Each store at ``fsync`` on the disk, in a loop of its own, made
it 3.5 to 57 inputs a second (the load decides), now 85 to 145 (bench/RESULTS.md, h494).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
import zlib
from pathlib import Path

import atheris
import msgspec
import uvloop
from harness import ROOT, run

with atheris.instrument_imports(include=["bamboo_session"]):
    from bamboo_session.persistence import JsonlStorage, JsonlStorageConfig
    from bamboo_session.persistence.base import SessionFilter, SessionNotFound
    from bamboo_session.persistence.jsonl import checkpoint, wal
    from bamboo_session.persistence.jsonl.layout import Layout
    from bamboo_session.protocol.models import AgentEvent, Message, Session


def _work_dir() -> Path:
    """Where the stores are made, anew at each run (libFuzzer ends the process without
    unwinding): in memory when the host has it, one place per tree, else under build/."""
    memory = Path("/dev/shm")
    if memory.is_dir() and os.access(memory, os.W_OK):
        tree = hashlib.sha256(str(ROOT).encode()).hexdigest()[:12]
        return memory / f"bamboo-fuzz-{tree}" / "jsonl-stores"
    return ROOT / "build" / "fuzz" / "jsonl-stores"


WORK = _work_dir()
TEMPLATE = WORK / "template"
# Which file an input replaces: its first byte, modulo the count.
TARGETS = ("sessions/s.json", "events/s.jsonl", "events/s.idx", "index/snapshot.msgpack")
SEGMENT = "wal/0000000000000001.wal"
# One input in this many opens its store at fsync, the others at os: chosen by its
# CRC-32, so that an input always runs the same way, and the share stays what it is
# however many of the corpus's inputs are kept for what fsync alone reaches.
FSYNC_ONE_IN = 8
HALF_LOG = 0  # set once the template is made
# A checkpoint's stamp no file has, in the seeds' snapshot where the template's was:
# each input's copy puts its own checkpoint's in its place, so that the open takes an
# entry the input left whole (it trusts one only while the checkpoint's inode, size and
# mtime are those it names, which no copy's were: no snapshot entry was ever taken).
STAMP_STAND_IN = msgspec.msgpack.encode((2**63 - 3, 2**63 - 5, 2**63 - 7))
SNAPSHOT = TARGETS[3]
# The template's files (path: bytes) and directories, written afresh for each input.
TEMPLATE_FILES: dict[str, bytes] = {}
TEMPLATE_DIRS: list[str] = []
LOOP = uvloop.new_event_loop()


async def _make_template() -> None:
    storage = await JsonlStorage.open(JsonlStorageConfig(TEMPLATE))
    await storage.create_session(Session.new("s", user_id="u", title="t"))
    for n in range(3):
        await storage.append_event("s", AgentEvent.token(f"t{n}"), key=f"k{n}")
        await storage.append_event("s", AgentEvent.message(Message.user(f"m{n}")))
    await storage.close()


async def _open_and_use(config: JsonlStorageConfig) -> None:
    storage = await JsonlStorage.open(config)
    try:
        await storage.list_sessions(SessionFilter())
        try:
            events = await storage.read_events("s")
            seqs = [event.seq for event in events]
            assert seqs == list(range(1, len(seqs) + 1)), seqs
            for event in events:
                event.event  # noqa: B018 - decodes the stored JSON, as a reader does
            await storage.get_history_page("s", 10)
            appended = await storage.append_event("s", AgentEvent.token("after"), key="k0")
            assert appended.seq >= 1
            assert await storage.last_seq("s") >= appended.seq
        except SessionNotFound:
            pass
        await storage.damaged_files()
    finally:
        await storage.close()


def _fresh_copy(base: Path) -> None:
    shutil.rmtree(base, ignore_errors=True)
    for directory in TEMPLATE_DIRS:
        (base / directory).mkdir(parents=True, exist_ok=True)
    for name, content in TEMPLATE_FILES.items():
        (base / name).write_bytes(content)


def one_input(data: bytes) -> None:
    if not data:
        return
    base = WORK / "store"
    _fresh_copy(base)
    choice = data[0] % (len(TARGETS) + 1)
    if choice == len(TARGETS):
        # A crash's image: a WAL segment, and a log that lost what it covers.
        (base / "wal").mkdir(exist_ok=True)
        (base / SEGMENT).write_bytes(data[1:])
        (base / SNAPSHOT).unlink(missing_ok=True)
        os.truncate(base / "events/s.jsonl", HALF_LOG)
    elif TARGETS[choice] == SNAPSHOT:
        stamp = checkpoint.stamp_of(os.stat(base / "sessions/s.json"))
        (base / SNAPSHOT).write_bytes(
            data[1:].replace(STAMP_STAND_IN, msgspec.msgpack.encode(stamp))
        )
    else:
        # Without the snapshot, which would answer for the session at start.
        (base / SNAPSHOT).unlink(missing_ok=True)
        (base / TARGETS[choice]).write_bytes(data[1:])
    durability = "fsync" if zlib.crc32(data) % FSYNC_ONE_IN == 0 else "os"
    LOOP.run_until_complete(_open_and_use(JsonlStorageConfig(base, durability=durability)))
    # asyncio.run would have cancelled them quietly: a closed store leaves none.
    left = [task for task in asyncio.all_tasks(LOOP) if not task.done()]
    assert not left, left


def _seeds() -> list[bytes]:
    seeds = []
    for index, target in enumerate(TARGETS):
        if target in TEMPLATE_FILES:
            seeds.append(bytes([index]) + TEMPLATE_FILES[target])
    # The old checkpoint format too: it has no CRC, so damage can reach its decoding.
    found = checkpoint.read(TEMPLATE / "sessions/s.json")
    assert isinstance(found, checkpoint.Found)
    metadata = found.checkpoint.metadata
    legacy = checkpoint.LegacyCheckpoint(metadata, [Message.user("m0")], metadata.last_seq, 0)
    seeds.append(b"\x00" + msgspec.json.encode(legacy))
    log = (TEMPLATE / "events/s.jsonl").read_bytes()
    lines = log.splitlines(keepends=True)
    half = log[:HALF_LOG]
    record = wal.encode_lines("s", len(lines) // 2 + 1, len(half), log[len(half) :])
    seeds.append(bytes([len(TARGETS)]) + record + wal.encode_deleted("x", "e"))
    return seeds


def _keep_template() -> None:
    for path in sorted(TEMPLATE.rglob("*")):
        name = str(path.relative_to(TEMPLATE))
        if path.is_dir():
            TEMPLATE_DIRS.append(name)
        else:
            TEMPLATE_FILES[name] = path.read_bytes()
    stamp = msgspec.msgpack.encode(checkpoint.stamp_of(os.stat(TEMPLATE / "sessions/s.json")))
    assert TEMPLATE_FILES[SNAPSHOT].count(stamp) == 1
    TEMPLATE_FILES[SNAPSHOT] = TEMPLATE_FILES[SNAPSHOT].replace(stamp, STAMP_STAND_IN)


if __name__ == "__main__":
    logging.disable(logging.CRITICAL)  # damage reports are expected: not the fuzzer's
    shutil.rmtree(WORK, ignore_errors=True)
    LOOP.run_until_complete(_make_template())
    _keep_template()
    _lines = TEMPLATE_FILES["events/s.jsonl"].splitlines(keepends=True)
    HALF_LOG = len(b"".join(_lines[: len(_lines) // 2]))  # where the crash cut the log
    assert Layout(TEMPLATE).base.exists()
    words = ['"seq"', '"ts"', '"event"', '"key"', '"type"', '"message"', '"sid"', '"off"']
    words += ['"crc"', '"lines"', '"deleted"', '"epoch"', '"last_seq"', "\n", "}\n", '"gen"']
    run("jsonl", one_input, _seeds(), words)

"""atheris harness: the JSONL store's readers of a damaged disk (persistence/jsonl/).

A template store holds one session ``s`` (messages, keyed events) closed cleanly; each
input replaces one of its files with fuzzed bytes (the checkpoint, the event log, the
message index, the index snapshot, or a WAL segment left by a crash) and opens a
store over the copy, then reads and appends to ``s`` and closes. What a damaged file
may cause is a damage report (the file kept aside, the session cut or gone): never an
exception out of ``open``, a read, an append or ``close`` other than the session being
missing (``SessionNotFound``), and never a read that returns what ``s`` never held.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from pathlib import Path

import atheris
import msgspec
from harness import ROOT, run

with atheris.instrument_imports(include=["bamboo_session"]):
    from bamboo_session.persistence import JsonlStorage, JsonlStorageConfig
    from bamboo_session.persistence.base import SessionFilter, SessionNotFound
    from bamboo_session.persistence.jsonl import checkpoint, wal
    from bamboo_session.persistence.jsonl.layout import Layout
    from bamboo_session.protocol.models import AgentEvent, Message, Session

# Under build/, made anew at each run: libFuzzer ends the process without unwinding.
WORK = ROOT / "build" / "fuzz" / "jsonl-stores"
TEMPLATE = WORK / "template"
# Which file an input replaces: its first byte, modulo the count.
TARGETS = ("sessions/s.json", "events/s.jsonl", "events/s.idx", "index/snapshot.msgpack")
SEGMENT = "wal/0000000000000001.wal"
HALF_LOG = 0  # set once the template is made


async def _make_template() -> None:
    storage = await JsonlStorage.open(JsonlStorageConfig(TEMPLATE))
    await storage.create_session(Session.new("s", user_id="u", title="t"))
    for n in range(3):
        await storage.append_event("s", AgentEvent.token(f"t{n}"), key=f"k{n}")
        await storage.append_event("s", AgentEvent.message(Message.user(f"m{n}")))
    await storage.close()


async def _open_and_use(base: Path) -> None:
    storage = await JsonlStorage.open(JsonlStorageConfig(base))
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


def one_input(data: bytes) -> None:
    if not data:
        return
    base = WORK / "store"
    shutil.rmtree(base, ignore_errors=True)
    shutil.copytree(TEMPLATE, base)
    choice = data[0] % (len(TARGETS) + 1)
    if choice == len(TARGETS):
        # A crash's image: a WAL segment, and a log that lost what it covers.
        (base / "wal").mkdir(exist_ok=True)
        (base / SEGMENT).write_bytes(data[1:])
        (base / "index/snapshot.msgpack").unlink(missing_ok=True)
        os.truncate(base / "events/s.jsonl", HALF_LOG)
    else:
        if choice != 3:  # else the snapshot would answer for the session at start
            (base / "index/snapshot.msgpack").unlink(missing_ok=True)
        (base / TARGETS[choice]).write_bytes(data[1:])
    asyncio.run(_open_and_use(base))


def _seeds() -> list[bytes]:
    seeds = []
    for index, target in enumerate(TARGETS):
        path = TEMPLATE / target
        if path.exists():
            seeds.append(bytes([index]) + path.read_bytes())
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


if __name__ == "__main__":
    logging.disable(logging.CRITICAL)  # damage reports are expected: not the fuzzer's
    shutil.rmtree(WORK, ignore_errors=True)
    asyncio.run(_make_template())
    _lines = (TEMPLATE / "events/s.jsonl").read_bytes().splitlines(keepends=True)
    HALF_LOG = len(b"".join(_lines[: len(_lines) // 2]))  # where the crash cut the log
    assert Layout(TEMPLATE).base.exists()
    words = ['"seq"', '"ts"', '"event"', '"key"', '"type"', '"message"', '"sid"', '"off"']
    words += ['"crc"', '"lines"', '"deleted"', '"epoch"', '"last_seq"', "\n", "}\n", '"gen"']
    run("jsonl", one_input, _seeds(), words)

"""A child process for the JSONL crash and disk-full tests (run as a script, not collected).

``python tests/jsonl_child.py crash DIR SEED``: appends events and messages to a few
sessions from several concurrent tasks forever, printing one line per acknowledged
append (``ack <session> <seq> <kind> <tag>``), flushed at once; the parent kills it.

``python tests/jsonl_child.py diskfull DIR LIMIT``: with RLIMIT_FSIZE at LIMIT bytes,
appends until appends fail, checks that failed appends moved nothing, lifts the limit,
appends again, and prints a JSON report (tests/write_failures.py, shared with SQLite).

``python tests/jsonl_child.py killsync DIR N``: appends N events to session ``k`` (each
acknowledged), then one more batch, and SIGKILLs itself when the writer is about to
append that batch to the WAL: its lines are in the log, never synced nor acknowledged.

``python tests/jsonl_child.py faileddelete DIR N``: appends N events to session ``d``
(each acknowledged), then deletes it while a directory stands at its tombstone's path:
the WAL records the deletion, the rename fails, the caller is told so (``told failed``);
then SIGKILLs itself, before anything else is appended. ``faileddelete-racing``: the
same, with a commit window, while another task appends to ``d`` as soon as it is back
(``appended during <seq>``): that append and the WAL's cancellation of the deletion
share one group commit.

``python tests/jsonl_child.py syncfaildelete DIR N``: appends N events to session ``d``
(each acknowledged) and one to ``o``, then deletes ``d`` with no descriptor left to open
(RLIMIT_NOFILE): the checkpoint's rename to the tombstone needs none, the sync of its
directory fails. Prints what the caller was told (``deleted`` or ``told failed``), then
SIGKILLs itself: the crash at that instant.

``python tests/jsonl_child.py undonedelete DIR N``: ``syncfaildelete`` without the WAL:
the delete fails and its rename is undone; prints what the caller was told, then what
an append to ``d`` got (``append refused`` or ``append acked``), then SIGKILLs itself.
``undonedelete-midway``: SIGKILLs itself once the sync failed, before the rename back.

``python tests/jsonl_child.py permissions DIR 0``, as a user that file modes bind (not
root): ``a``'s log, then the directory of every log, made unwritable in turn while
``a``'s log is not open; prints what each append to ``a`` raised (``<class>: <text>``),
and, while the directory refuses, whether ``b``'s (its log open) was stored.

``python tests/jsonl_child.py retiredsyncfaildelete DIR N``: the same, but the WAL
segment that records the deletion is retired before the checkpoint's rename (a
checkpoint of ``d`` in progress holds the rename back: its lock is taken here, while
an append to ``o`` starts a new segment), and a directory at ``d``'s message index
keeps the tombstone. Prints what the caller was told, then SIGKILLs itself.
"""

from __future__ import annotations

import asyncio
import os
import random
import resource
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from write_failures import end_outages_soon, write_past_limit

from bamboo_session.persistence import (
    JsonlStorage,
    JsonlStorageConfig,
    SessionLogFailed,
    SessionNotFound,
    StorageError,
)
from bamboo_session.persistence.jsonl import deletes, wal
from bamboo_session.persistence.jsonl.layout import Layout
from bamboo_session.protocol.models import AgentEvent, Message, Session

CRASH_SESSIONS = ("c0", "c1", "c2")


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


async def crash(base: str, seed: int) -> None:
    rng = random.Random(seed)
    config = JsonlStorageConfig(
        base,
        checkpoint_every=rng.choice([3, 20, 256]),
        checkpoint_interval=rng.choice([0.01, 0.2, 5.0]),
    )
    storage = await JsonlStorage.open(config)
    for session_id in CRASH_SESSIONS:
        if await storage.get_metadata(session_id) is None:
            await storage.create_session(Session.new(session_id, user_id="crash"))
    say("ready")

    async def appender(worker: int) -> None:
        n = 0
        while True:
            n += 1
            session_id = rng.choice(CRASH_SESSIONS)
            tag = f"{seed}-{worker}-{n}"
            roll = rng.random()
            if roll < 0.3:
                stored = [await storage.append_message(session_id, Message.user(tag), key=tag)]
                kind = "message"
            elif roll < 0.4:
                batch = [(AgentEvent.token(f"{tag}.{i}"), None) for i in range(3)]
                stored = await storage.append_events(session_id, batch)
                kind = "batch"
            else:
                stored = [await storage.append_event(session_id, AgentEvent.token(tag))]
                kind = "token"
            if roll > 0.97:
                await storage.touch(session_id)  # metadata moves: a checkpoint follows
            seqs = ",".join(str(event.seq) for event in stored)
            say(f"ack {session_id} {seqs} {kind} {tag}")

    await asyncio.gather(*(appender(worker) for worker in range(4)))


async def diskfull(base: str, limit: int) -> None:
    end_outages_soon()
    storage = await JsonlStorage.open(JsonlStorageConfig(base))
    await write_past_limit(storage, limit, _reason)


def _reason(exc: StorageError) -> str:
    if "earlier append" in str(exc):
        return "behind a failed one"
    return "its own log's write" if isinstance(exc, SessionLogFailed) else "write"


async def permissions(base: str) -> None:
    config = JsonlStorageConfig(base, max_open_logs=1)  # b's append closes a's log
    layout = config.layout
    async with await JsonlStorage.open(config) as storage:
        for session_id in "ab":
            await storage.create_session(Session.new(session_id))
            await storage.append_event(session_id, AgentEvent.token("fits"))
        for refusing, mode, back in (
            (layout.log("a"), 0o444, 0o644),
            (layout.events, 0o600, 0o755),
        ):
            refusing.chmod(mode)
            try:
                await storage.append_event("a", AgentEvent.token("refused"))
            except StorageError as exc:
                say(f"{type(exc).__name__}: {exc}")
            await storage.append_event("b", AgentEvent.token("its log open"))
            say("b stored")
            refusing.chmod(back)
        await storage.append_event("a", AgentEvent.token("back"))
        say("a stored")


async def killsync(base: str, acked: int) -> None:
    storage = await JsonlStorage.open(JsonlStorageConfig(base))
    await storage.create_session(Session.new("k"))
    for i in range(acked):
        await storage.append_event("k", AgentEvent.token(f"acked{i}"))
    say("acked")

    def die(segment: wal.SegmentFile, data: bytes) -> int:
        os.kill(os.getpid(), signal.SIGKILL)
        return 0

    wal.SegmentFile.write = die  # type: ignore[method-assign]
    await storage.append_events("k", [(AgentEvent.token(f"never{i}"), None) for i in range(3)])
    say("not killed")


async def faileddelete(base: str, acked: int, racing: bool = False) -> None:
    config = JsonlStorageConfig(base, commit_window=0.05 if racing else 0.0)
    storage = await JsonlStorage.open(config)
    await storage.create_session(Session.new("d", user_id="u"))
    for i in range(acked):
        await storage.append_event("d", AgentEvent.token(f"acked{i}"))
    blocker = config.layout.tombstone("d")
    blocker.mkdir()
    (blocker / "x").touch()  # renaming the checkpoint over it fails (EISDIR, ENOTEMPTY)

    async def append_once_back() -> None:
        while True:
            try:
                stored = await storage.append_event("d", AgentEvent.token("during"))
            except SessionNotFound:  # not back yet
                await asyncio.sleep(0)
            else:
                say(f"appended during {stored.seq}")
                return

    deleting = asyncio.create_task(storage.delete_session("d"))
    await asyncio.sleep(0)  # the session is gone from memory: the delete is under way
    racer = asyncio.create_task(append_once_back()) if racing else None
    try:
        await deleting
    except StorageError:
        say("told failed")
    else:
        say("deleted")
    if racer is not None:
        await racer
    os.kill(os.getpid(), signal.SIGKILL)


async def syncfaildelete(base: str, acked: int) -> None:
    # One log open at a time: the append to "o" closes d's, so the delete frees none
    # (its sync would take that one).
    config = JsonlStorageConfig(base, max_open_logs=1, **_NO_BACKGROUND_FILES)
    storage = await JsonlStorage.open(config)
    await _d_and_o(storage, acked)
    say(await _told(storage.delete_session("d"), _no_descriptor_left()))
    os.kill(os.getpid(), signal.SIGKILL)


async def undonedelete(base: str, acked: int, midway: bool) -> None:
    config = JsonlStorageConfig(base, max_open_logs=1, **_NO_BACKGROUND_FILES)
    config = config.with_wal(enabled=False)
    storage = await JsonlStorage.open(config)
    await _d_and_o(storage, acked)
    if midway:  # the rename to the tombstone done, its sync failed, nothing undone yet
        deletes._undo_unsynced_delete = lambda *_: os.kill(os.getpid(), signal.SIGKILL)
    say(await _told(storage.delete_session("d"), _no_descriptor_left()))
    try:
        await storage.append_event("d", AgentEvent.token("after"))
    except StorageError:
        say("append refused")
    else:
        say("append acked")
    os.kill(os.getpid(), signal.SIGKILL)


async def retiredsyncfaildelete(base: str, acked: int) -> None:
    layout = JsonlStorageConfig(base).layout
    config = JsonlStorageConfig(
        base, max_open_logs=1, checkpoint_interval=3600.0, wal_segment_age=0.05
    )
    storage = await JsonlStorage.open(config)
    await _d_and_o(storage, acked)
    layout.message_index("d").unlink(missing_ok=True)
    layout.message_index("d").mkdir()
    (layout.message_index("d") / "x").touch()
    checkpointing = storage._records["d"].checkpoint_lock()  # as a checkpoint holds it
    await checkpointing.acquire()
    deleting = asyncio.ensure_future(storage.delete_session("d"))
    await _until(lambda: bool(_segments_recording_deletion(layout)))
    await asyncio.sleep(0.1)  # past the segment's age: the next commit starts a new one
    await storage.append_event("o", AgentEvent.token("rotates"))
    await _until(lambda: not _segments_recording_deletion(layout))  # retired
    # Its removal syncs the directory after the unlink: a descriptor still open then,
    # taken into account below and closed after, let the delete's own sync succeed.
    await storage._writer.retirement.settled()
    fill = _no_descriptor_left()
    checkpointing.release()
    say(await _told(deleting, fill))
    os.kill(os.getpid(), signal.SIGKILL)


async def _d_and_o(storage: JsonlStorage, acked: int) -> None:
    """Session ``d`` of ``acked`` events, then ``o`` of one: with one log open at a
    time, the append to ``o`` closes d's (with the WAL, once it is synced: after the
    append is acknowledged, before the writer's next batch, which the flush waits for)."""
    await storage.create_session(Session.new("d", user_id="u"))
    for i in range(acked):
        await storage.append_event("d", AgentEvent.token(f"acked{i}"))
    await storage.create_session(Session.new("o", user_id="u"))
    await storage.append_event("o", AgentEvent.token("other"))
    await storage._writer.flush()


async def _told(deleting: Awaitable[None], fill: list[int]) -> str:
    """What the caller of a delete was told (``deleted`` or ``told failed``); the
    descriptors of ``fill`` closed once it is."""
    try:
        await deleting
    except StorageError:
        return "told failed"
    else:
        return "deleted"
    finally:
        for fd in fill:
            os.close(fd)


async def _until(done: Callable[[], bool]) -> None:
    """Poll ``done`` (the WAL's files: no event tells of them) for up to 20 s."""
    for _ in range(2000):
        if done():
            return
        await asyncio.sleep(0.01)
    raise TimeoutError("the WAL never got there")


def _segments_recording_deletion(layout: Layout) -> list[Path]:
    """The WAL segments that hold a record of a deletion."""
    return [path for _, path in layout.segments() if b'"deleted":true' in path.read_bytes()]


# For the children that take every descriptor: no periodic checkpoint or segment
# retirement, however long a loaded machine makes the run. A descriptor of theirs, open
# at that instant and closed after, would free one for the sync meant to fail.
_NO_BACKGROUND_FILES = {"checkpoint_interval": 3600.0, "wal_segment_age": 3600.0}


def _no_descriptor_left() -> list[int]:
    """Every descriptor taken (the soft limit lowered to the highest open one): the next
    open fails with EMFILE. The descriptors that fill the gaps, to close after."""
    highest = max(int(name) for name in os.listdir("/proc/self/fd"))
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1, hard))
    fill = []
    while True:
        try:
            fill.append(os.dup(0))
        except OSError:
            return fill


if __name__ == "__main__":
    mode, directory, number = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if mode == "crash":
        asyncio.run(crash(directory, number))
    elif mode == "permissions":
        asyncio.run(permissions(directory))
    elif mode == "killsync":
        asyncio.run(killsync(directory, number))
    elif mode == "syncfaildelete":
        asyncio.run(syncfaildelete(directory, number))
    elif mode.startswith("undonedelete"):
        asyncio.run(undonedelete(directory, number, midway=mode.endswith("-midway")))
    elif mode == "retiredsyncfaildelete":
        asyncio.run(retiredsyncfaildelete(directory, number))
    elif mode.startswith("faileddelete"):
        asyncio.run(faileddelete(directory, number, racing=mode.endswith("-racing")))
    else:
        asyncio.run(diskfull(directory, number))

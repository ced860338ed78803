"""A child process for the tests of the per-user sums of stored bytes across failed
writes and crashes (tests/test_user_bytes_crash.py; run as a script, not collected).

``python tests/user_bytes_child.py writefail URL LIMIT``: opens the store with
``max_user_bytes``, appends to three sessions of user ``u`` at once with RLIMIT_FSIZE at
LIMIT bytes (the file writes fail with EFBIG) until appends fail, lifts the limit,
appends again, and prints one JSON line: the store's sum for ``u`` (as a refused append
reports it) and the sum of the sessions' ``stored_bytes``.

``python tests/user_bytes_child.py crash URL SEED``: appends to the three sessions from
several tasks until the user's bound refuses them, then deletes and creates sessions
and appends again, forever, printing ``ack`` lines; the parent kills it.

``python tests/user_bytes_child.py deletefail DIR LIMIT``: a JSONL store (fsync: with
its WAL) whose WAL segment is filled to near LIMIT (RLIMIT_FSIZE), then no descriptor
left to open (RLIMIT_NOFILE), so the WAL can neither grow nor start a new segment;
appends to session ``v`` in flight and its delete then fail together (the deletion
could not be recorded: ``v`` is back). Lifts the limits, appends to ``v`` again, reopens
the store, and prints a JSON report (tests/test_user_bytes_crash.py).

``python tests/user_bytes_child.py replacefail DIR 0``: a JSONL store (fsync) whose
expired session ``old`` is replaced by a create while the WAL cannot take the old
one's deletion record (RLIMIT_FSIZE, and no descriptor for a new segment: RLIMIT_NOFILE),
nor the replacement be undone durably (no descriptor to sync the directory). Lifts the
limits, lets user ``u``'s other session take whatever room the store shows, reopens the
store, and prints a JSON report.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import resource
import sys

from bamboo_session.persistence import (
    JsonlStorage,
    JsonlStorageConfig,
    SessionFull,
    Storage,
    StorageError,
    UserFull,
    open_storage,
)
from bamboo_session.protocol.models import AgentEvent, Message, Session, SessionState

USER_CAP = 64 * 1024  # crash: reached within a second of appends
WRITEFAIL_CAP = 4 * 1024 * 1024  # writefail: far from it (the files fail first)
SESSIONS = ("s0", "s1", "s2")


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


async def sums(storage: Storage, cap: int, session_id: str = SESSIONS[0]) -> tuple[int, int]:
    """(the store's sum for ``u``, the sum of its sessions' stored_bytes)."""
    truth = sum(meta.stored_bytes for meta in await storage.list_user_sessions("u"))
    try:
        await storage.append_event(session_id, AgentEvent.token("y" * (cap + 1)))
    except UserFull as exc:
        return exc.stored, truth
    return -1, truth


async def writefail(url: str, limit: int) -> None:
    storage = await open_storage(url, max_user_bytes=WRITEFAIL_CAP)
    for session_id in SESSIONS:
        await storage.create_session(Session.new(session_id, user_id="u"))
    _soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    failed = 0

    async def append(session_id: str, n: int) -> None:
        nonlocal failed
        try:
            await storage.append_event(session_id, AgentEvent.token(f"{n}:" + "x" * 300))
        except SessionFull:
            raise
        except StorageError:
            failed += 1

    n = 0
    while not failed and n < 2000:
        tasks = []
        for session_id in SESSIONS * 3:
            n += 1
            tasks.append(asyncio.create_task(append(session_id, n)))
        await asyncio.gather(*tasks)
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
    await asyncio.gather(*(append(session_id, 0) for session_id in SESSIONS))
    counted, truth = await sums(storage, WRITEFAIL_CAP)
    await storage.close()
    say(json.dumps({"failed": failed, "counted": counted, "truth": truth}))


async def crash(url: str, seed: int) -> None:
    rng = random.Random(seed)
    storage = await open_storage(url, max_user_bytes=USER_CAP)
    for session_id in SESSIONS:
        if await storage.get_metadata(session_id) is None:
            await storage.create_session(Session.new(session_id, user_id="u"))
    say("ready")

    async def appender(worker: int) -> None:
        n = 0
        while True:
            n += 1
            session_id = rng.choice(SESSIONS)
            try:
                appended = await storage.append_event(
                    session_id, AgentEvent.token(f"{seed}-{worker}-{n}:" + "x" * 300)
                )
            except UserFull:
                # At the bound: one session goes and comes back empty.
                victim = rng.choice(SESSIONS)
                try:
                    await storage.delete_session(victim)
                    await storage.create_session(Session.new(victim, user_id="u"))
                except StorageError:
                    pass
                continue
            except StorageError:
                continue
            say(f"ack {session_id} {appended.seq}")

    await asyncio.gather(*(appender(worker) for worker in range(4)))


async def deletefail(base: str, limit: int, written: bool = False) -> None:
    """See the module docstring; ``written``: the appends to ``v`` are written (a
    message among them), in a commit of their own, and only the deletion's fails."""
    fsize, nofile = (resource.getrlimit(r) for r in (resource.RLIMIT_FSIZE, resource.RLIMIT_NOFILE))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, fsize[1]))
    # No periodic checkpoint or segment retirement in the run (replacefail's reason: a
    # descriptor of theirs, open while every free one is taken below, would free one
    # for a new segment when it closes), however long a loaded machine makes the run.
    # No commit window whatever the default: the message's commit must start within the
    # turns below, ahead of the deletion (a paced one waits, and the two share a commit).
    config = JsonlStorageConfig(
        base,
        max_user_bytes=WRITEFAIL_CAP,
        checkpoint_interval=3600.0,
        wal_segment_age=3600.0,
        commit_window=0.0,
    )
    store = await JsonlStorage.open(config)
    fillers = [f"f{i}" for i in range(20)]  # each log far from the limit, the WAL near it
    for session_id in [*fillers, "v"]:
        await store.create_session(Session.new(session_id, user_id="u"))
    await store.append_event("v", AgentEvent.token("v0"))
    wal = store._writer._wal  # only to know when the segment is near the limit
    assert wal is not None
    n = 0
    while wal.size + 3000 < limit:
        n += 1
        await store.append_event(fillers[n % len(fillers)], AgentEvent.token("x" * 200))
    top = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (top + 1, nofile[1]))
    held = []
    try:  # every descriptor below the limit taken: no new WAL segment
        while True:
            held.append(os.open("/dev/null", os.O_RDONLY))
    except OSError:
        pass
    if written:
        # One message to v that fills the WAL but for a few bytes, short of the
        # deletion's record: sized after a first one (its record less its log line).
        wal_before, log_before = wal.size, store._records["v"].log_end
        await store.append_message("v", Message.user("p" * 1000))
        overhead = (wal.size - wal_before) - (store._records["v"].log_end - log_before)
        line = store._records["v"].log_end - log_before - 1000
        size = limit - wal.size - 25 - overhead - line
        busy = asyncio.ensure_future(store.append_message("v", Message.user("w" * size)))
        tasks: list[asyncio.Future[object]] = []
        for _ in range(3):  # taken, written, its WAL sync awaited
            await asyncio.sleep(0)
    else:
        # One append keeps the writer busy; the appends to v and v's delete queue
        # behind it, to go in one commit.
        busy = asyncio.ensure_future(store.append_event("f0", AgentEvent.token("b" * 1500)))
        await asyncio.sleep(0)
        tasks = [
            asyncio.ensure_future(store.append_event("v", AgentEvent.token(f"{i}:" + "v" * 1500)))
            for i in range(1, 4)
        ]
        await asyncio.sleep(0)
    try:
        await store.delete_session("v")
        delete_failed = False
    except StorageError:
        delete_failed = True
    results = await asyncio.gather(busy, *tasks, return_exceptions=True)
    if written:
        results = [None, *results]  # the message to v is the one append counted
    for fd in held:
        os.close(fd)
    resource.setrlimit(resource.RLIMIT_NOFILE, nofile)
    resource.setrlimit(resource.RLIMIT_FSIZE, fsize)
    meta = await store.get_metadata("v")
    report: dict[str, object] = {
        "delete_failed": delete_failed,
        "appends_failed": sum(isinstance(r, BaseException) for r in results[1:]),
        "last_seq": None if meta is None else meta.last_seq,
    }
    if meta is not None:
        report["messages"] = len(await store.get_session_history("v"))
        report["counted"], report["truth"] = await sums(store, WRITEFAIL_CAP, "v")
        report["next"] = (await store.append_event("v", AgentEvent.token("after"))).seq
        try:
            report["seqs"] = [event.seq for event in await store.read_events("v")]
        except Exception as exc:  # a damaged log (BrokenLine)
            report["seqs"] = str(exc)
    await store.close()
    store = await JsonlStorage.open(JsonlStorageConfig(base))
    try:
        report["reopened"] = [event.seq for event in await store.read_events("v")]
    except Exception as exc:
        report["reopened"] = str(exc)
    report["damaged"] = len(await store.damaged_files())
    await store.close()
    say(json.dumps(report))


async def replacefail(base: str) -> None:
    """See the module docstring."""
    fsize, nofile = (resource.getrlimit(r) for r in (resource.RLIMIT_FSIZE, resource.RLIMIT_NOFILE))
    # One open log at most: old's is closed before the replacement, so that nothing
    # the failed deletion closes frees a descriptor for the undoing. No periodic
    # checkpoint or segment retirement in the run: a descriptor of theirs, open while
    # every free one is taken below, would free one for the undoing when it closes.
    config = JsonlStorageConfig(
        base,
        max_user_bytes=USER_CAP,
        max_open_logs=1,
        checkpoint_interval=3600.0,
        wal_segment_age=3600.0,
    )
    store = await JsonlStorage.open(config)
    for session_id in ("old", "other"):
        await store.create_session(Session.new(session_id, user_id="u"))
    for _ in range(20):
        await store.append_event("old", AgentEvent.token("o" * 1000))
    await store.update_session_state("old", SessionState.EXPIRED)
    await store.append_event("other", AgentEvent.token("t"))
    # The append is acknowledged before old's log, let go of for it, is synced and
    # closed (on a sync thread); the writer's next batch comes after that close.
    await store._writer.flush()
    wal = store._writer._wal  # only to set the size limit just past its records
    assert wal is not None
    resource.setrlimit(resource.RLIMIT_FSIZE, (wal.size + 20, fsize[1]))
    creating = asyncio.ensure_future(
        store.create_session(Session.new("old", user_id="u"), replace_expired=True)
    )
    # Forgotten once its replacement file is written, before its deletion is queued.
    while await store.get_metadata("old") is not None:  # noqa: ASYNC110 - no event tells
        await asyncio.sleep(0)
    top = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (top + 1, nofile[1]))
    held = []
    try:  # every descriptor below the limit taken
        while True:
            held.append(os.open("/dev/null", os.O_RDONLY))
    except OSError:
        pass
    try:
        await creating
        failed = ""
    except StorageError as exc:
        failed = str(exc)
    for fd in held:
        os.close(fd)
    resource.setrlimit(resource.RLIMIT_NOFILE, nofile)
    resource.setrlimit(resource.RLIMIT_FSIZE, fsize)
    layout = store.layout
    report: dict[str, object] = {
        "failed": failed,
        "blocked": "old" in store._files.blocked,
        "replacing": layout.replacement("old").exists(),
        "old": await store.get_metadata("old") is not None,
    }
    counted, truth = await sums(store, USER_CAP, "other")
    report["counted"], report["truth"] = counted, truth
    with contextlib.suppress(UserFull):  # whatever room the store shows the user
        await store.append_event("other", AgentEvent.token("z" * (USER_CAP - counted - 200)))
    await store.close()
    store = await JsonlStorage.open(JsonlStorageConfig(base, max_user_bytes=USER_CAP))
    sessions = await store.list_user_sessions("u")
    report["reopened"] = {meta.id: meta.stored_bytes for meta in sessions}
    await store.close()
    say(json.dumps(report))


if __name__ == "__main__":
    mode, target, number = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if mode == "crash":
        asyncio.run(crash(target, number))
    elif mode == "replacefail":
        asyncio.run(replacefail(target))
    elif mode.startswith("deletefail"):
        asyncio.run(deletefail(target, number, written=mode == "deletefail-written"))
    else:
        asyncio.run(writefail(target, number))

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
"""

from __future__ import annotations

import asyncio
import json
import random
import resource
import sys

from bamboo_session.persistence import SessionFull, Storage, StorageError, UserFull, open_storage
from bamboo_session.protocol.models import AgentEvent, Session

USER_CAP = 64 * 1024  # crash: reached within a second of appends
WRITEFAIL_CAP = 4 * 1024 * 1024  # writefail: far from it (the files fail first)
SESSIONS = ("s0", "s1", "s2")


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


async def sums(storage: Storage, cap: int) -> tuple[int, int]:
    """(the store's sum for ``u``, the sum of its sessions' stored_bytes)."""
    truth = sum(meta.stored_bytes for meta in await storage.list_user_sessions("u"))
    try:
        await storage.append_event(SESSIONS[0], AgentEvent.token("y" * (cap + 1)))
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


if __name__ == "__main__":
    mode, target, number = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if mode == "crash":
        asyncio.run(crash(target, number))
    else:
        asyncio.run(writefail(target, number))

"""A child process for the SQLite crash and write-failure tests (run as a script, not
collected).

``python tests/sqlite_child.py crash FILE SEED``: appends events and messages to a few
sessions from several concurrent tasks forever, printing one line per acknowledged
append (``ack <session> <seqs> <kind> <tag>``), flushed at once; the parent kills it.
The seed picks the durability mode, both of which survive the death of the process.

``python tests/sqlite_child.py writefail FILE LIMIT``: with RLIMIT_FSIZE at LIMIT bytes
(so SQLite's writes fail with EFBIG, which it reports as a disk I/O error), appends
until appends fail, checks that failed appends moved nothing, lifts the limit, appends
again, and prints a JSON report (tests/write_failures.py, shared with JSONL).
"""

from __future__ import annotations

import asyncio
import random
import sys

from write_failures import end_outages_soon, write_past_limit

from bamboo_session.persistence import open_storage
from bamboo_session.protocol.models import AgentEvent, Message, Session

CRASH_SESSIONS = ("c0", "c1", "c2")


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


async def crash(path: str, seed: int) -> None:
    rng = random.Random(seed)
    durability = rng.choice(["fsync", "os"])
    storage = await open_storage(f"sqlite://{path}?durability={durability}")
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
            seqs = ",".join(str(appended.seq) for appended in stored)
            say(f"ack {session_id} {seqs} {kind} {tag}")

    await asyncio.gather(*(appender(worker) for worker in range(4)))


async def writefail(path: str, limit: int) -> None:
    end_outages_soon()
    storage = await open_storage(f"sqlite://{path}")
    await write_past_limit(storage, limit, str)


if __name__ == "__main__":
    mode, target, number = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if mode == "crash":
        asyncio.run(crash(target, number))
    else:
        asyncio.run(writefail(target, number))
